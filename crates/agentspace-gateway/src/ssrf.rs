//! The server-side request forgery guard: which resolved addresses the gateway refuses
//! to connect to unless the operator named the service explicitly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why `ip` must not be connected to on an agent's behalf, or `None` when it is a public
/// address. IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64, 6to4) are judged
/// as the IPv4 address they carry.
pub fn refused_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata lives at 169.254.169.254)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || a >= 240 {
        Some("reserved")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared address space (carrier-grade NAT)")
    } else if a == 192 && b == 0 && c == 0 {
        Some("IETF protocol assignments")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    let [s0, s1, s2, s3, s4, s5, s6, s7] = seg;
    let embedded = |hi: u16, lo: u16| {
        let [h0, h1] = hi.to_be_bytes();
        let [l0, l1] = lo.to_be_bytes();
        Ipv4Addr::new(h0, h1, l0, l1)
    };
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if let Some(v4) = ip.to_ipv4_mapped() {
        refused_v4(v4)
    } else if s0 == 0 && s1 == 0 && s2 == 0 && s3 == 0 && s4 == 0 && s5 == 0 {
        // IPv4-compatible (deprecated) ::a.b.c.d
        refused_v4(embedded(s6, s7))
    } else if s0 == 0x64 && s1 == 0xff9b && s2 == 0 && s3 == 0 && s4 == 0 && s5 == 0 {
        refused_v4(embedded(s6, s7))
    } else if s0 == 0x2002 {
        refused_v4(embedded(s1, s2))
    } else if s0 & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if s0 & 0xffc0 == 0xfe80 || s0 & 0xffc0 == 0xfec0 {
        Some("link-local")
    } else if s0 & 0xff00 == 0xff00 {
        Some("multicast")
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
}
