//! National identity numbers in free text, each recognised by its format and its check
//! digits so that false positives stay rare.
//!
//! Where the check is strong (a mod-97 key, a check letter over the whole number, two
//! check digits and a structured date), the plain form counts. Where it is weak (a
//! single Luhn, 11-proof or Verhoeff digit: one random number in ten or eleven passes),
//! the number counts only in its usual written shape (`123 456 789`, `2345 6789 0124`)
//! or next to its name in the same text (`BSN`, `Aadhaar`, `SIN`, `CPF`): a nine- to
//! twelve-digit order number is not personal data.

/// Whether `text` holds a national id of one of the recognised kinds.
pub(crate) fn has_national_id(text: &str) -> bool {
    if has_us_ssn(text) || has_uk_nino(text) || has_es_dni_nie(text) || has_it_codice_fiscale(text)
    {
        return true;
    }
    let lower = text.to_ascii_lowercase();
    let named = |words: &[&str]| words.iter().any(|w| has_word(&lower, w));
    digit_runs(text).iter().any(|run| {
        let d = run.digits.as_slice();
        match d.len() {
            15 => fr_nir(d),
            9 => {
                (nl_bsn(d) && named(&["bsn", "burgerservicenummer", "sofinummer"]))
                    || (ca_sin(d)
                        && (run.grouped(&[3, 3, 3]) || named(&["sin", "social insurance"])))
            }
            10 => se_personnummer(d) && run.separator_before_last(4),
            12 => {
                se_personnummer12(d)
                    || (in_aadhaar(d) && (run.grouped(&[4, 4, 4]) || named(&["aadhaar", "uidai"])))
            }
            11 => br_cpf(d) && (run.shape == "ddd.ddd.ddd-dd" || named(&["cpf"])),
            _ => false,
        }
    })
}

/// A run of digits with single separators (space, `-`, `.`, `/`, `+`) between them,
/// bounded by anything but letters and digits.
struct DigitRun {
    digits: Vec<u8>,
    /// The run with every digit written `d` (`ddd-ddd-ddd`).
    shape: String,
}

impl DigitRun {
    /// Whether the run is written in groups of `sizes` digits, one separator between
    /// each (the same separator throughout).
    fn grouped(&self, sizes: &[usize]) -> bool {
        let groups: Vec<&str> = self.shape.split(|c| c != 'd').collect();
        let seps: Vec<char> = self.shape.chars().filter(|c| *c != 'd').collect();
        groups.len() == sizes.len()
            && groups.iter().zip(sizes).all(|(g, n)| g.len() == *n)
            && seps.windows(2).all(|w| w.first() == w.get(1))
    }

    /// Whether the only separator stands `n` digits before the end and is `-` or `+`
    /// (a Swedish personnummer: `YYMMDD-NNNC`, `+` once the holder is 100).
    fn separator_before_last(&self, n: usize) -> bool {
        let seps: Vec<(usize, char)> = self
            .shape
            .char_indices()
            .filter(|(_, c)| *c != 'd')
            .collect();
        matches!(seps.as_slice(), [(at, '-' | '+')] if self.shape.len() - at - 1 == n)
    }
}

fn digit_runs(text: &str) -> Vec<DigitRun> {
    let chars: Vec<char> = text.chars().collect();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars.get(i).is_some_and(char::is_ascii_digit)
            && (i == 0 || chars.get(i - 1).is_some_and(|c| !c.is_alphanumeric()));
        if !starts {
            i += 1;
            continue;
        }
        let mut run = DigitRun {
            digits: Vec::new(),
            shape: String::new(),
        };
        let mut j = i;
        while let Some(c) = chars.get(j) {
            if let Some(d) = c.to_digit(10) {
                run.digits.push(u8::try_from(d).unwrap_or(0));
                run.shape.push('d');
            } else if " -./+".contains(*c) && chars.get(j + 1).is_some_and(char::is_ascii_digit) {
                run.shape.push(*c);
            } else {
                break;
            }
            j += 1;
            if run.digits.len() > 20 {
                break;
            }
        }
        let bounded = chars.get(j).is_none_or(|c| !c.is_alphanumeric());
        if bounded && run.digits.len() <= 20 {
            runs.push(run);
        }
        i = j.max(i + 1);
    }
    runs
}

/// Whether `word` occurs in `lower` (lowercase) with no letter or digit either side.
fn has_word(lower: &str, word: &str) -> bool {
    lower.match_indices(word).any(|(at, _)| {
        let before = lower.get(..at).and_then(|b| b.chars().next_back());
        let after = lower.get(at + word.len()..).and_then(|a| a.chars().next());
        before.is_none_or(|c| !c.is_alphanumeric()) && after.is_none_or(|c| !c.is_alphanumeric())
    })
}

fn number(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(*d))
    })
}

/// A French social security number (NIR): sex (1 or 2), year, month (01-12),
/// department, commune, order number, and a key `97 - (first 13 digits mod 97)`.
fn fr_nir(d: &[u8]) -> bool {
    let (Some(head), Some(key)) = (d.get(..13), d.get(13..15)) else {
        return false;
    };
    let month = number(d.get(3..5).unwrap_or_default());
    matches!(d.first(), Some(1 | 2))
        && (1..=12).contains(&month)
        && 97 - number(head) % 97 == number(key)
}

/// A Dutch citizen service number (BSN): nine digits passing the 11-proof
/// (`9a + 8b + ... + 2h - i` divisible by 11).
fn nl_bsn(d: &[u8]) -> bool {
    let weights: [i64; 9] = [9, 8, 7, 6, 5, 4, 3, 2, -1];
    let sum: i64 = d.iter().zip(weights).map(|(d, w)| i64::from(*d) * w).sum();
    sum > 0 && sum % 11 == 0
}

/// A Canadian social insurance number: nine digits passing Luhn, not starting with 0
/// or 8 (never issued to people).
fn ca_sin(d: &[u8]) -> bool {
    !matches!(d.first(), Some(0 | 8)) && super::content::luhn(d)
}

/// A Swedish personnummer of ten digits (`YYMMDDNNNC`): a date (a day 61-91 for a
/// coordination number) and a Luhn check digit.
fn se_personnummer(d: &[u8]) -> bool {
    let month = number(d.get(2..4).unwrap_or_default());
    let day = number(d.get(4..6).unwrap_or_default());
    (1..=12).contains(&month)
        && ((1..=31).contains(&day) || (61..=91).contains(&day))
        && super::content::luhn(d)
}

/// The twelve-digit form (`YYYYMMDDNNNC`, century 18, 19 or 20).
fn se_personnummer12(d: &[u8]) -> bool {
    matches!(number(d.get(..2).unwrap_or_default()), 18..=20)
        && d.get(2..).is_some_and(se_personnummer)
}

/// A Brazilian CPF: nine digits and two mod-11 check digits; not one digit repeated
/// (those pass the check but are not issued).
fn br_cpf(d: &[u8]) -> bool {
    if d.len() != 11 || d.iter().all(|x| Some(x) == d.first()) {
        return false;
    }
    let check = |n: usize| {
        let sum: usize = d
            .iter()
            .take(n)
            .enumerate()
            .map(|(i, x)| usize::from(*x) * (n + 1 - i))
            .sum();
        u8::try_from(sum * 10 % 11 % 10).unwrap_or(10)
    };
    d.get(9) == Some(&check(9)) && d.get(10) == Some(&check(10))
}

/// An Indian Aadhaar number: twelve digits, the first 2-9, the last a Verhoeff check
/// digit.
fn in_aadhaar(d: &[u8]) -> bool {
    const MUL: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const PERM: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    if !matches!(d.first(), Some(2..=9)) {
        return false;
    }
    let mut c = 0u8;
    for (i, x) in d.iter().rev().enumerate() {
        let p = PERM
            .get(i % 8)
            .and_then(|row| row.get(usize::from(*x)))
            .copied()
            .unwrap_or(0);
        c = MUL
            .get(usize::from(c))
            .and_then(|row| row.get(usize::from(p)))
            .copied()
            .unwrap_or(1);
    }
    c == 0
}

/// A Spanish DNI (`12345678Z`) or NIE (`X1234567L`; X, Y, Z stand for 0, 1, 2): the
/// letter is the number mod 23 in `TRWAGMYFPDXBNJZSQVHLCKE`; a space or `-` may stand
/// before it.
fn has_es_dni_nie(text: &str) -> bool {
    const LETTERS: &[u8] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    let b = text.as_bytes();
    (0..b.len()).any(|at| {
        if at > 0 && b.get(at - 1).is_some_and(u8::is_ascii_alphanumeric) {
            return false;
        }
        let (prefix, digits_at) = match b.get(at) {
            Some(b'X') => (Some(0u64), at + 1),
            Some(b'Y') => (Some(1), at + 1),
            Some(b'Z') => (Some(2), at + 1),
            Some(c) if c.is_ascii_digit() => (None, at),
            _ => return false,
        };
        let count = if prefix.is_some() { 7 } else { 8 };
        let Some(digits) = b.get(digits_at..digits_at + count) else {
            return false;
        };
        if !digits.iter().all(u8::is_ascii_digit) {
            return false;
        }
        let mut letter_at = digits_at + count;
        if matches!(b.get(letter_at), Some(b' ' | b'-')) {
            letter_at += 1;
        }
        let n = digits
            .iter()
            .fold(prefix.unwrap_or(0), |n, d| n * 10 + u64::from(d - b'0'));
        let expected = usize::try_from(n % 23).ok().and_then(|i| LETTERS.get(i));
        b.get(letter_at).is_some_and(|l| Some(l) == expected)
            && b.get(letter_at + 1)
                .is_none_or(|c| !c.is_ascii_alphanumeric())
    })
}

/// An Italian codice fiscale: six letters (surname, name), year, a month letter, day
/// (01-31, 41-71 for women), a place code (a letter and three digits), and a check
/// letter computed over the first fifteen characters. Digits may be replaced by
/// `LMNPQRSTUV` (omocodia).
fn has_it_codice_fiscale(text: &str) -> bool {
    let b = text.as_bytes();
    b.windows(16).enumerate().any(|(at, w)| {
        let bounded = at
            .checked_sub(1)
            .and_then(|i| b.get(i))
            .is_none_or(|c| !c.is_ascii_alphanumeric())
            && b.get(at + 16).is_none_or(|c| !c.is_ascii_alphanumeric());
        bounded && codice_fiscale(w)
    })
}

fn codice_fiscale(w: &[u8]) -> bool {
    const OMOCODIA: &[u8] = b"LMNPQRSTUV";
    const MONTHS: &[u8] = b"ABCDEHLMPRST";
    const ODD: [u32; 26] = [
        1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24,
        23,
    ];
    // A digit, or the letter standing for it.
    let digit = |c: u8| -> Option<u8> {
        if c.is_ascii_digit() {
            Some(c - b'0')
        } else {
            OMOCODIA
                .iter()
                .position(|o| *o == c)
                .and_then(|p| u8::try_from(p).ok())
        }
    };
    let letter = |i: usize| w.get(i).is_some_and(u8::is_ascii_uppercase);
    let digits = |r: std::ops::Range<usize>| {
        r.map(|i| w.get(i).and_then(|c| digit(*c)))
            .collect::<Option<Vec<u8>>>()
    };
    let (Some(_year), Some(day), Some(_place)) = (digits(6..8), digits(9..11), digits(12..15))
    else {
        return false;
    };
    let day = number(&day);
    let shape = (0..6).all(letter)
        && w.get(8).is_some_and(|m| MONTHS.contains(m))
        && ((1..=31).contains(&day) || (41..=71).contains(&day))
        && letter(11)
        && letter(15);
    if !shape {
        return false;
    }
    let mut sum = 0u32;
    for (i, c) in w.iter().take(15).enumerate() {
        let value = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A')
        };
        sum += if i % 2 == 0 {
            // Odd positions (1st, 3rd, ...): digits take the values of A, B, C, ...
            ODD.get(usize::try_from(value).unwrap_or(0))
                .copied()
                .unwrap_or(0)
        } else {
            value
        };
    }
    let check = b'A' + u8::try_from(sum % 26).unwrap_or(0);
    w.get(15) == Some(&check)
}

/// A US social security number written `AAA-GG-SSSS`, with the ranges the SSA never
/// issues left out (area 000, 666 and 9xx; group 00; serial 0000). Undashed nine-digit
/// runs are too common to call personal data.
fn has_us_ssn(text: &str) -> bool {
    let b = text.as_bytes();
    b.windows(11).enumerate().any(|(at, w)| {
        let digits = |r: std::ops::Range<usize>| {
            w.get(r.clone())
                .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
        };
        let bounded = at
            .checked_sub(1)
            .and_then(|i| b.get(i))
            .is_none_or(|c| !c.is_ascii_alphanumeric())
            && b.get(at + 11).is_none_or(|c| !c.is_ascii_alphanumeric());
        if !(bounded
            && digits(0..3)
            && digits(4..6)
            && digits(7..11)
            && w.get(3) == Some(&b'-')
            && w.get(6) == Some(&b'-'))
        {
            return false;
        }
        let area = w.get(0..3).unwrap_or_default();
        area != b"000"
            && area != b"666"
            && area.first() != Some(&b'9')
            && w.get(4..6) != Some(b"00".as_slice())
            && w.get(7..11) != Some(b"0000".as_slice())
    })
}

/// A UK National Insurance number (`QQ123456C`, spaces allowed between pairs): two
/// letters (not D, F, I, Q, U, V; the second not O; not the prefixes HMRC never issues),
/// six digits, a suffix A to D.
fn has_uk_nino(text: &str) -> bool {
    let compact: Vec<char> = text.chars().filter(|c| *c != ' ').collect();
    compact.windows(9).enumerate().any(|(at, w)| {
        let bounded = at
            .checked_sub(1)
            .and_then(|i| compact.get(i))
            .is_none_or(|c| !c.is_ascii_alphanumeric())
            && compact
                .get(at + 9)
                .is_none_or(|c| !c.is_ascii_alphanumeric());
        let (Some(a), Some(b), Some(suffix)) = (w.first(), w.get(1), w.get(8)) else {
            return false;
        };
        let prefix: String = [*a, *b].iter().collect();
        bounded
            && a.is_ascii_uppercase()
            && b.is_ascii_uppercase()
            && !"DFIQUV".contains(*a)
            && !"DFIQUVO".contains(*b)
            && !["BG", "GB", "NK", "KN", "TN", "NT", "ZZ"].contains(&prefix.as_str())
            && w.get(2..8)
                .is_some_and(|d| d.iter().all(char::is_ascii_digit))
            && ('A'..='D').contains(suffix)
    })
}

#[cfg(test)]
mod tests {
    use super::has_national_id;

    /// Valid numbers of each kind, as people write them.
    const VALID: &[&str] = &[
        // US, UK
        "ssn 123-45-6789",
        "AB123456D",
        // France: NIR with its key
        "NIR 1 84 12 76 451 089 46",
        "184127645108946",
        "2 69 05 49 588 157 80",
        // Spain: DNI and NIE
        "DNI 12345678Z",
        "12345678-Z",
        "NIE X1234567L",
        "Y7654321G",
        // Italy: codice fiscale
        "CF RSSMRA85T10A562S",
        // Netherlands: BSN, named
        "BSN: 111222333",
        "burgerservicenummer 123456782",
        // Sweden: personnummer
        "811218-9876",
        "19811218-9876",
        "198112189876",
        // Brazil: CPF, formatted or named
        "529.982.247-25",
        "CPF 52998224725",
        // India: Aadhaar, grouped or named
        "2345 6789 0124",
        "aadhaar 234567890124",
        // Canada: SIN, grouped or named
        "130 692 544",
        "130-692-544",
        "SIN 130692544",
    ];

    /// Near misses: one digit or letter off, a check that fails, a date that is not
    /// one, a weak check without its shape or name, an unbounded run.
    const NEAR_MISSES: &[&str] = &[
        "184127645108947",       // NIR key off by one
        "1 84 13 76 451 089 46", // NIR month 13
        "384127645108946",       // NIR sex digit 3
        "12345678A",             // DNI letter wrong
        "123456789Z",            // nine digits: not a DNI
        "X1234567T",             // NIE letter wrong
        "RSSMRA85T10A562T",      // codice fiscale check letter wrong
        "RSSMRA85Z10A562S",      // month letter Z
        "RSSMRA85T99A562S",      // day 99
        "111222333",             // a valid BSN, but not named: any 9-digit number
        "BSN 111222334",         // named, 11-proof fails
        "811218-9875",           // personnummer Luhn fails
        "811318-9876",           // month 13
        "8112189876",            // ten digits without the dash: too common
        "529.982.247-26",        // CPF check digit wrong
        "52998224725",           // a valid CPF, but unformatted and not named
        "111.111.111-11",        // repeated digits
        "2345 6789 0125",        // Aadhaar Verhoeff fails
        "234567890124",          // valid Aadhaar, ungrouped, not named
        "1345 6789 0124",        // Aadhaar starting with 1
        "130 692 545",           // SIN Luhn fails
        "130692544",             // valid SIN, ungrouped, not named
        "830 692 548",           // SIN starting with 8
        "order 12345678Zx",      // not bounded
        "ref 1841276451089460",  // sixteen digits
    ];

    #[test]
    fn national_ids_are_recognised_by_format_and_check_digits() {
        for id in VALID {
            assert!(has_national_id(id), "not recognised: {id}");
        }
        for miss in NEAR_MISSES {
            assert!(!has_national_id(miss), "false positive: {miss}");
        }
    }

    #[test]
    fn codice_fiscale_with_omocodia_and_for_women() {
        // Digits written as letters (L = 0, N = 2) when two people would share a code;
        // women's days are 41-71. Check letters computed by an independent script.
        for cf in ["RSSMRA85T1LA562V", "RSSMRA85T10A56NH", "BNCLRA70M52F205B"] {
            assert!(has_national_id(cf), "{cf}");
        }
        assert!(!has_national_id("RSSMRA85T1LA562S"));
    }
}
