//! The server-side request forgery guard: which resolved addresses the gateway refuses
//! to connect to unless the operator named the service explicitly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why `ip` must not be connected to on an agent's behalf, or `None` when it is a public
/// address. IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64, 6to4) are judged
/// as the IPv4 address they carry.
pub fn refused_address(ip: IpAddr) -> Option<&'static str> {
    refused(ip, Reach::Public)
}

/// How far an allowed request may reach, by what the rules that allowed it say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Public addresses only (every rule without `internal: true`).
    Public,
    /// Also loopback, private, unique-local and shared (carrier-grade NAT) addresses: an
    /// `internal: true` rule names the host by name.
    Internal,
    /// Also link-local addresses, cloud metadata included: an `internal: true` rule names
    /// this very IP address.
    Literal,
}

/// Why `ip` must not be connected to for a request that may reach `reach`, or `None`.
/// Unspecified, multicast, broadcast, reserved, benchmarking and IETF protocol addresses
/// are refused whatever the rules say.
pub(crate) fn refused(ip: IpAddr, reach: Reach) -> Option<&'static str> {
    let (class, why) = classify(ip)?;
    let allowed = match class {
        Class::Internal => reach != Reach::Public,
        Class::LinkLocal => reach == Reach::Literal,
        Class::Never => false,
    };
    (!allowed).then_some(why)
}

/// What kind of non-public address it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Loopback, private, unique local, shared address space: internal services.
    Internal,
    /// Link-local, where cloud metadata services live.
    LinkLocal,
    /// Never a destination for a TCP connection on an agent's behalf.
    Never,
}

fn classify(ip: IpAddr) -> Option<(Class, &'static str)> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// AWS's IPv6 instance metadata address, inside the unique-local range.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

fn classify_v4(ip: Ipv4Addr) -> Option<(Class, &'static str)> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some((Class::Internal, "loopback"))
    } else if ip.is_unspecified() || a == 0 {
        Some((Class::Never, "unspecified"))
    } else if ip.is_private() {
        Some((Class::Internal, "private"))
    } else if ip.is_link_local() {
        Some((
            Class::LinkLocal,
            "link-local (cloud metadata lives at 169.254.169.254)",
        ))
    } else if ip.is_multicast() {
        Some((Class::Never, "multicast"))
    } else if ip.is_broadcast() || a >= 240 {
        Some((Class::Never, "reserved"))
    } else if a == 100 && (64..128).contains(&b) {
        Some((Class::Internal, "shared address space (carrier-grade NAT)"))
    } else if a == 192 && b == 0 && c == 0 {
        Some((Class::Never, "IETF protocol assignments"))
    } else if a == 198 && (b == 18 || b == 19) {
        Some((Class::Never, "benchmarking"))
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<(Class, &'static str)> {
    let seg = ip.segments();
    let [s0, s1, s2, s3, s4, s5, s6, s7] = seg;
    let embedded = |hi: u16, lo: u16| {
        let [h0, h1] = hi.to_be_bytes();
        let [l0, l1] = lo.to_be_bytes();
        Ipv4Addr::new(h0, h1, l0, l1)
    };
    if ip.is_loopback() {
        Some((Class::Internal, "loopback"))
    } else if ip.is_unspecified() {
        Some((Class::Never, "unspecified"))
    } else if let Some(v4) = ip.to_ipv4_mapped() {
        classify_v4(v4)
    } else if s0 == 0 && s1 == 0 && s2 == 0 && s3 == 0 && s4 == 0 && s5 == 0 {
        // IPv4-compatible (deprecated) ::a.b.c.d
        classify_v4(embedded(s6, s7))
    } else if s0 == 0x64 && s1 == 0xff9b && s2 == 0 && s3 == 0 && s4 == 0 && s5 == 0 {
        classify_v4(embedded(s6, s7))
    } else if s0 == 0x2002 {
        classify_v4(embedded(s1, s2))
    } else if ip == AWS_METADATA_V6 {
        Some((
            Class::LinkLocal,
            "cloud metadata (AWS's IPv6 instance metadata service)",
        ))
    } else if s0 & 0xfe00 == 0xfc00 {
        Some((Class::Internal, "private (unique local)"))
    } else if s0 & 0xffc0 == 0xfe80 || s0 & 0xffc0 == 0xfec0 {
        Some((Class::LinkLocal, "link-local"))
    } else if s0 & 0xff00 == 0xff00 {
        Some((Class::Never, "multicast"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_and_public_ones_are_not() {
        for bad in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(refused_address(ip).is_some(), "{bad} must be refused");
        }
        for good in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = good.parse().unwrap();
            assert_eq!(refused_address(ip), None, "{good} is public");
        }
    }

    #[test]
    fn internal_rules_open_internal_ranges_but_not_metadata_unless_named_by_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.9",
            "100.64.0.1",
            "::1",
            "fd12::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(refused(ip(internal), Reach::Public).is_some(), "{internal}");
            assert_eq!(refused(ip(internal), Reach::Internal), None, "{internal}");
            assert_eq!(refused(ip(internal), Reach::Literal), None, "{internal}");
        }
        for metadata in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "fd00:ec2::254",
            "fe80::1",
        ] {
            assert!(
                refused(ip(metadata), Reach::Internal).is_some(),
                "{metadata}"
            );
            assert_eq!(refused(ip(metadata), Reach::Literal), None, "{metadata}");
        }
        for never in [
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "ff02::1",
        ] {
            assert!(refused(ip(never), Reach::Literal).is_some(), "{never}");
        }
    }
}
