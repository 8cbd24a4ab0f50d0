//! RFC 6962 / RFC 9162 Merkle trees over a tenant's events: tree heads, the compact
//! range the writer keeps between checkpoints, inclusion and consistency proofs and
//! their verification.
//!
//! Leaf `i` is `SHA-256(0x00 ‖ canonical(event_i))`; an interior node is
//! `SHA-256(0x01 ‖ left ‖ right)`; the empty tree's head is `SHA-256("")`.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The leaf hash of one canonical event.
pub fn leaf_hash(canonical_event: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(canonical_event);
    h.finalize().into()
}

/// The hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The head of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (for `n >= 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH(D[n]) over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let (l, r) = leaves.split_at(split(leaves.len()));
            node_hash(&root(l), &root(r))
        }
    }
}

/// The perfect subtrees that make up a tree of `size` leaves, largest first: enough to
/// extend the tree leaf by leaf and to compute its head without the leaves themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CompactRange {
    size: u64,
    peaks: Vec<Hash>,
}

impl CompactRange {
    /// Rebuilds a compact range from its stored form (the peaks concatenated).
    pub(crate) fn from_bytes(size: u64, bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(32) || bytes.len() / 32 != size.count_ones() as usize {
            return None;
        }
        let peaks = bytes
            .chunks_exact(32)
            .filter_map(|c| Hash::try_from(c).ok())
            .collect();
        Some(Self { size, peaks })
    }

    /// The stored form: the peaks concatenated, largest subtree first.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        self.peaks.concat()
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub(crate) fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        while s & 1 == 1 {
            if let Some(left) = self.peaks.pop() {
                h = node_hash(&left, &h);
            }
            s >>= 1;
        }
        self.peaks.push(h);
        self.size += 1;
    }

    /// The tree head.
    pub(crate) fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// The audit path for leaf `index` in the tree of all `leaves` (RFC 6962 PATH).
pub(crate) fn inclusion_path(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    let mut out = Vec::new();
    path_into(index, leaves, &mut out);
    out
}

fn path_into(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    let (l, r) = leaves.split_at(k);
    if m < k {
        path_into(m, l, out);
        out.push(root(r));
    } else {
        path_into(m - k, r, out);
        out.push(root(l));
    }
}

/// The consistency proof between the first `m` leaves and all `leaves` (RFC 6962 PROOF).
pub(crate) fn consistency_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let mut out = Vec::new();
    if m > 0 && m < leaves.len() {
        subproof(m, leaves, true, &mut out);
    }
    out
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    let (l, r) = leaves.split_at(k);
    if m <= k {
        subproof(m, l, complete, out);
        out.push(root(r));
    } else {
        subproof(m - k, r, false, out);
        out.push(root(l));
    }
}

/// Checks an inclusion proof (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    tree_size: u64,
    leaf: &Hash,
    path: &[Hash],
    root: &Hash,
) -> bool {
    if index >= tree_size {
        return false;
    }
    let (mut fnode, mut snode) = (index, tree_size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// Checks a consistency proof between tree heads of sizes `first <= second`
/// (RFC 9162 section 2.1.4.2; the empty tree is consistent with every tree).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty() && *first_root == empty_root();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let Some((start, rest)) = path.split_first() else {
        return false;
    };
    let (mut fr, mut sr) = (*start, *start);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *first_root && sr == *second_root && snode == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("event {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn compact_range_matches_the_recursive_head() {
        let all = leaves(70);
        let mut range = CompactRange::default();
        assert_eq!(range.root(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            range.push(*leaf);
            assert_eq!(range.root(), root(&all[..=i]), "size {}", i + 1);
            let back = CompactRange::from_bytes(range.size(), &range.to_bytes()).unwrap();
            assert_eq!(back, range);
        }
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies() {
        let all = leaves(33);
        for n in 1..=all.len() {
            let tree = &all[..n];
            let head = root(tree);
            for m in 0..n {
                let path = inclusion_path(m, tree);
                assert!(verify_inclusion(m as u64, n as u64, &tree[m], &path, &head));
                let wrong = leaf_hash(b"other");
                assert!(!verify_inclusion(m as u64, n as u64, &wrong, &path, &head));
            }
            for m in 0..=n {
                let proof = consistency_path(m, tree);
                let old = root(&tree[..m]);
                assert!(
                    verify_consistency(m as u64, n as u64, &old, &head, &proof),
                    "{m}->{n}"
                );
                if m > 0 && m < n {
                    assert!(!verify_consistency(
                        m as u64, n as u64, &head, &head, &proof
                    ));
                }
            }
        }
    }

    #[test]
    fn empty_tree_head_is_sha256_of_nothing() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
