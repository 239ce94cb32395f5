//! Which resolved addresses the proxy may connect to (pure).
//!
//! An allowed name is resolved on the host, and the proxy connects only to
//! addresses that are publicly routable. Everything else is refused, because
//! a name under the guest's influence (or a compromised DNS answer) pointing
//! there would reach the host or its network instead of the internet:
//!
//! | kind            | IPv4                                              | IPv6                                   |
//! |-----------------|---------------------------------------------------|----------------------------------------|
//! | unspecified     | `0.0.0.0/8` ("this network")                      | `::`                                   |
//! | loopback        | `127.0.0.0/8`                                     | `::1`                                  |
//! | private         | `10/8`, `172.16/12`, `192.168/16`, `100.64/10` (CGNAT) | `fc00::/7` (ULA), `fec0::/10` (old site-local) |
//! | link-local      | `169.254/16` (incl. the `169.254.169.254` metadata service) | `fe80::/10`                  |
//! | multicast       | `224/4`                                           | `ff00::/8`                             |
//! | broadcast       | `255.255.255.255`                                 | -                                      |
//! | documentation   | `192.0.2/24`, `198.51.100/24`, `203.0.113/24`      | `2001:db8::/32`, `3fff::/20`           |
//! | benchmarking    | `198.18/15`                                       | (inside `2001::/23`)                   |
//! | reserved        | `240/4`, `192.0.0/24`, `192.88.99/24` (6to4 relay) | everything outside `2000::/3`, `2001::/23` (Teredo, ORCHID, ...), `64:ff9b:1::/48`, `100::/64`, `::/96` (IPv4-compatible) |
//!
//! Addresses that carry an IPv4 address are judged by it: IPv4-mapped
//! `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` (a NAT64 gateway would connect
//! to `a.b.c.d`) and 6to4 `2002:AABB:CCDD::/48`.
//!
//! Everything but public addresses is refused by default. Two settings
//! ([`AddressPolicy`]) lift one refusal each:
//! - `allow_private_for_tests` (tests that run an upstream on the host's
//!   loopback): loopback and private addresses only. Link-local (the cloud
//!   metadata service), unspecified, multicast, broadcast, benchmarking and
//!   reserved addresses stay refused even then.
//! - `allow_documentation_ranges` (an operator's choice, for hosts whose
//!   DNS answers public names with TEST-NET addresses, as some sandboxed
//!   development gateways do): documentation addresses. No real name
//!   resolves to them, so in production an answer in them is a forged or
//!   misconfigured one, and may reach whatever the host's network routes
//!   there.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of address an IP is, as far as egress is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKind {
    /// Publicly routable: the proxy may connect.
    Public,
    /// `0.0.0.0/8`, `::`: means "this host" to the kernel.
    Unspecified,
    /// `127.0.0.0/8`, `::1`: the host itself.
    Loopback,
    /// RFC 1918, CGNAT (`100.64/10`), IPv6 ULA and site-local: the host's networks.
    Private,
    /// `169.254/16`, `fe80::/10`: the link, including cloud metadata services.
    LinkLocal,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Ranges reserved for documentation (TEST-NET-1/2/3, `2001:db8::/32`, `3fff::/20`).
    Documentation,
    /// `198.18/15`, reserved for benchmarking networks.
    Benchmarking,
    /// Reserved or special-purpose ranges not meant as internet destinations.
    Reserved,
}

impl AddressKind {
    /// Short lowercase name used in logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressKind::Public => "public",
            AddressKind::Unspecified => "unspecified",
            AddressKind::Loopback => "loopback",
            AddressKind::Private => "private",
            AddressKind::LinkLocal => "link-local",
            AddressKind::Multicast => "multicast",
            AddressKind::Broadcast => "broadcast",
            AddressKind::Documentation => "documentation",
            AddressKind::Benchmarking => "benchmarking",
            AddressKind::Reserved => "reserved",
        }
    }
}

/// An address the proxy refused to connect to, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedAddress {
    /// The resolved address.
    pub ip: IpAddr,
    /// Its kind (never [`AddressKind::Public`]).
    pub kind: AddressKind,
}

impl fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.ip, self.kind.as_str())
    }
}

/// Classifies `ip`; see the module docs for the table.
pub fn classify(ip: IpAddr) -> AddressKind {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// The refusals lifted for one proxy (none by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// TEST ONLY: loopback and private addresses are allowed (an upstream
    /// on the test host). Must stay off in production.
    pub allow_private_for_tests: bool,
    /// Documentation addresses (`192.0.2/24`, `198.51.100/24`,
    /// `203.0.113/24`, `2001:db8::/32`, `3fff::/20`) are allowed: for a
    /// host whose DNS answers public names with them.
    pub allow_documentation_ranges: bool,
}

/// Decides whether the proxy may connect to `ip`: public addresses only,
/// and those `policy` lifts the refusal of.
pub fn check_address(ip: IpAddr, policy: AddressPolicy) -> Result<(), RefusedAddress> {
    match classify(ip) {
        AddressKind::Public => Ok(()),
        AddressKind::Documentation if policy.allow_documentation_ranges => Ok(()),
        AddressKind::Loopback | AddressKind::Private if policy.allow_private_for_tests => Ok(()),
        kind => Err(RefusedAddress { ip, kind }),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressKind {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip == Ipv4Addr::BROADCAST => AddressKind::Broadcast,
        (0, _, _) => AddressKind::Unspecified,
        (10, _, _) => AddressKind::Private,
        (100, 64..=127, _) => AddressKind::Private,
        (127, _, _) => AddressKind::Loopback,
        (169, 254, _) => AddressKind::LinkLocal,
        (172, 16..=31, _) => AddressKind::Private,
        (192, 0, 0) => AddressKind::Reserved,
        (192, 0, 2) => AddressKind::Documentation,
        (192, 88, 99) => AddressKind::Reserved,
        (192, 168, _) => AddressKind::Private,
        (198, 18..=19, _) => AddressKind::Benchmarking,
        (198, 51, 100) => AddressKind::Documentation,
        (203, 0, 113) => AddressKind::Documentation,
        (224..=239, _, _) => AddressKind::Multicast,
        (240..=255, _, _) => AddressKind::Reserved,
        _ => AddressKind::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressKind {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return AddressKind::Unspecified;
    }
    if ip.is_loopback() {
        return AddressKind::Loopback;
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let embedded_v4 = |hi: u16, lo: u16| {
        let [h1, h2] = hi.to_be_bytes();
        let [l1, l2] = lo.to_be_bytes();
        Ipv4Addr::new(h1, h2, l1, l2)
    };
    match seg {
        // IPv4-compatible (deprecated), other than :: and ::1 handled above.
        [0, 0, 0, 0, 0, 0, _, _] => AddressKind::Reserved,
        // NAT64 well-known prefix: the gateway connects to the embedded IPv4.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => classify_v4(embedded_v4(hi, lo)),
        // 6to4: the relay forwards to the embedded IPv4.
        [0x2002, hi, lo, ..] => classify_v4(embedded_v4(hi, lo)),
        [0x2001, 0x0db8, ..] => AddressKind::Documentation,
        // 2001::/23: IETF protocol assignments (Teredo, benchmarking, ORCHID, ...).
        [0x2001, 0x0000..=0x01ff, ..] => AddressKind::Reserved,
        [0x3fff, 0x0000..=0x0fff, ..] => AddressKind::Documentation,
        [first, ..] if first & 0xe000 == 0x2000 => AddressKind::Public,
        [first, ..] if first & 0xfe00 == 0xfc00 => AddressKind::Private,
        [first, ..] if first & 0xffc0 == 0xfe80 => AddressKind::LinkLocal,
        [first, ..] if first & 0xffc0 == 0xfec0 => AddressKind::Private,
        [first, ..] if first & 0xff00 == 0xff00 => AddressKind::Multicast,
        // 64:ff9b:1::/48 (local NAT64), 100::/64 (discard) and all unallocated space.
        _ => AddressKind::Reserved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind(text: &str) -> AddressKind {
        classify(text.parse().expect("test address parses"))
    }

    #[test]
    fn ipv4_ranges_are_classified_at_their_bounds() {
        let table = [
            ("0.0.0.0", AddressKind::Unspecified),
            ("0.255.255.255", AddressKind::Unspecified),
            ("1.0.0.0", AddressKind::Public),
            ("8.8.8.8", AddressKind::Public),
            ("9.255.255.255", AddressKind::Public),
            ("10.0.0.0", AddressKind::Private),
            ("10.0.0.1", AddressKind::Private),
            ("10.255.255.255", AddressKind::Private),
            ("11.0.0.0", AddressKind::Public),
            ("100.63.255.255", AddressKind::Public),
            ("100.64.0.0", AddressKind::Private),
            ("100.127.255.255", AddressKind::Private),
            ("100.128.0.0", AddressKind::Public),
            ("126.255.255.255", AddressKind::Public),
            ("127.0.0.0", AddressKind::Loopback),
            ("127.0.0.1", AddressKind::Loopback),
            ("127.255.255.255", AddressKind::Loopback),
            ("128.0.0.0", AddressKind::Public),
            ("169.253.255.255", AddressKind::Public),
            ("169.254.0.0", AddressKind::LinkLocal),
            ("169.254.169.254", AddressKind::LinkLocal),
            ("169.254.255.255", AddressKind::LinkLocal),
            ("169.255.0.0", AddressKind::Public),
            ("172.15.255.255", AddressKind::Public),
            ("172.16.0.0", AddressKind::Private),
            ("172.31.255.255", AddressKind::Private),
            ("172.32.0.0", AddressKind::Public),
            ("191.255.255.255", AddressKind::Public),
            ("192.0.0.0", AddressKind::Reserved),
            ("192.0.0.255", AddressKind::Reserved),
            ("192.0.1.0", AddressKind::Public),
            ("192.0.2.0", AddressKind::Documentation),
            ("192.0.2.255", AddressKind::Documentation),
            ("192.0.3.0", AddressKind::Public),
            ("192.88.98.255", AddressKind::Public),
            ("192.88.99.1", AddressKind::Reserved),
            ("192.88.100.0", AddressKind::Public),
            ("192.167.255.255", AddressKind::Public),
            ("192.168.0.0", AddressKind::Private),
            ("192.168.127.254", AddressKind::Private),
            ("192.168.255.255", AddressKind::Private),
            ("192.169.0.0", AddressKind::Public),
            ("198.17.255.255", AddressKind::Public),
            ("198.18.0.0", AddressKind::Benchmarking),
            ("198.19.255.255", AddressKind::Benchmarking),
            ("198.20.0.0", AddressKind::Public),
            ("198.51.99.255", AddressKind::Public),
            ("198.51.100.7", AddressKind::Documentation),
            ("198.51.101.0", AddressKind::Public),
            ("203.0.112.255", AddressKind::Public),
            ("203.0.113.9", AddressKind::Documentation),
            ("203.0.114.0", AddressKind::Public),
            ("223.255.255.255", AddressKind::Public),
            ("224.0.0.0", AddressKind::Multicast),
            ("239.255.255.255", AddressKind::Multicast),
            ("240.0.0.0", AddressKind::Reserved),
            ("255.255.255.254", AddressKind::Reserved),
            ("255.255.255.255", AddressKind::Broadcast),
        ];
        for (addr, expected) in table {
            assert_eq!(kind(addr), expected, "{addr}");
        }
    }

    #[test]
    fn ipv6_ranges_are_classified_at_their_bounds() {
        let table = [
            ("::", AddressKind::Unspecified),
            ("::1", AddressKind::Loopback),
            ("::2", AddressKind::Reserved),
            ("::10.0.0.1", AddressKind::Reserved),
            ("::ffff:8.8.8.8", AddressKind::Public),
            ("::ffff:10.0.0.1", AddressKind::Private),
            ("::ffff:127.0.0.1", AddressKind::Loopback),
            ("::ffff:169.254.169.254", AddressKind::LinkLocal),
            ("::ffff:0.0.0.0", AddressKind::Unspecified),
            ("64:ff9b::8.8.8.8", AddressKind::Public),
            ("64:ff9b::10.1.2.3", AddressKind::Private),
            ("64:ff9b::169.254.169.254", AddressKind::LinkLocal),
            ("64:ff9b:1::1", AddressKind::Reserved),
            ("100::1", AddressKind::Reserved),
            ("1fff:ffff::1", AddressKind::Reserved),
            ("2000::1", AddressKind::Public),
            ("2001::1", AddressKind::Reserved),
            ("2001:1ff:ffff::1", AddressKind::Reserved),
            ("2001:200::1", AddressKind::Public),
            ("2001:4860:4860::8888", AddressKind::Public),
            ("2001:db7:ffff::1", AddressKind::Public),
            ("2001:db8::1", AddressKind::Documentation),
            ("2001:db8:ffff::1", AddressKind::Documentation),
            ("2001:db9::1", AddressKind::Public),
            ("2002:0808:0808::1", AddressKind::Public),
            ("2002:0a00:0001::1", AddressKind::Private),
            ("2002:7f00:0001::1", AddressKind::Loopback),
            ("2002:a9fe:a9fe::1", AddressKind::LinkLocal),
            ("2606:4700::1111", AddressKind::Public),
            ("3ffe:ffff::1", AddressKind::Public),
            ("3fff::1", AddressKind::Documentation),
            ("3fff:fff:ffff::1", AddressKind::Documentation),
            ("3fff:1000::1", AddressKind::Public),
            ("4000::1", AddressKind::Reserved),
            ("fbff::1", AddressKind::Reserved),
            ("fc00::1", AddressKind::Private),
            ("fd12:3456::1", AddressKind::Private),
            ("fdff:ffff::1", AddressKind::Private),
            ("fe00::1", AddressKind::Reserved),
            ("fe80::1", AddressKind::LinkLocal),
            ("febf:ffff::1", AddressKind::LinkLocal),
            ("fec0::1", AddressKind::Private),
            ("feff:ffff::1", AddressKind::Private),
            ("ff00::1", AddressKind::Multicast),
            ("ff02::1", AddressKind::Multicast),
        ];
        for (addr, expected) in table {
            assert_eq!(kind(addr), expected, "{addr}");
        }
    }

    #[test]
    fn the_test_flag_lifts_only_loopback_and_private() {
        let cases = [
            ("8.8.8.8", true, true),
            ("2001:4860::8888", true, true),
            ("192.0.2.1", false, false),
            ("198.51.100.7", false, false),
            ("203.0.113.80", false, false),
            ("2001:db8::1", false, false),
            ("3fff::1", false, false),
            ("::ffff:203.0.113.80", false, false),
            ("64:ff9b::c633:6407", false, false),
            ("127.0.0.1", false, true),
            ("10.0.0.1", false, true),
            ("100.64.0.1", false, true),
            ("fd00::1", false, true),
            ("::1", false, true),
            ("169.254.169.254", false, false),
            ("fe80::1", false, false),
            ("0.0.0.0", false, false),
            ("::", false, false),
            ("224.0.0.1", false, false),
            ("255.255.255.255", false, false),
            ("198.18.0.1", false, false),
            ("240.0.0.1", false, false),
        ];
        let tests_mode = AddressPolicy {
            allow_private_for_tests: true,
            ..AddressPolicy::default()
        };
        for (addr, production, tests) in cases {
            let ip: IpAddr = addr.parse().expect("test address parses");
            assert_eq!(
                check_address(ip, AddressPolicy::default()).is_ok(),
                production,
                "{addr} production"
            );
            assert_eq!(
                check_address(ip, tests_mode).is_ok(),
                tests,
                "{addr} test mode"
            );
        }
    }

    #[test]
    fn documentation_ranges_are_allowed_only_when_the_operator_says_so() {
        let doc = AddressPolicy {
            allow_documentation_ranges: true,
            ..AddressPolicy::default()
        };
        for addr in ["192.0.2.1", "198.51.100.7", "203.0.113.80", "2001:db8::1"] {
            let ip: IpAddr = addr.parse().expect("test address parses");
            let refusal = check_address(ip, AddressPolicy::default()).expect_err(addr);
            assert_eq!(refusal.kind, AddressKind::Documentation, "{addr}");
            assert!(check_address(ip, doc).is_ok(), "{addr}");
        }
        for still_refused in ["10.0.0.1", "127.0.0.1", "169.254.169.254", "198.18.0.1"] {
            let ip: IpAddr = still_refused.parse().expect("test address parses");
            assert!(check_address(ip, doc).is_err(), "{still_refused}");
        }
    }

    #[test]
    fn a_refusal_names_the_address_and_its_kind() {
        let ip: IpAddr = "169.254.169.254".parse().expect("test address parses");
        let everything = AddressPolicy {
            allow_private_for_tests: true,
            allow_documentation_ranges: true,
        };
        let refusal = check_address(ip, everything).expect_err("metadata address refused");
        assert_eq!(refusal.to_string(), "169.254.169.254 (link-local)");
    }

    /// A second, table-driven statement of the IPv4 rules, to check the
    /// hand-written `match` against.
    fn reference_v4(ip: Ipv4Addr) -> AddressKind {
        let table: [(u32, u32, AddressKind); 16] = [
            (0xffff_ffff, 32, AddressKind::Broadcast),
            (0x0000_0000, 8, AddressKind::Unspecified),
            (0x0a00_0000, 8, AddressKind::Private),
            (0x6440_0000, 10, AddressKind::Private),
            (0x7f00_0000, 8, AddressKind::Loopback),
            (0xa9fe_0000, 16, AddressKind::LinkLocal),
            (0xac10_0000, 12, AddressKind::Private),
            (0xc000_0000, 24, AddressKind::Reserved),
            (0xc000_0200, 24, AddressKind::Documentation),
            (0xc058_6300, 24, AddressKind::Reserved),
            (0xc0a8_0000, 16, AddressKind::Private),
            (0xc612_0000, 15, AddressKind::Benchmarking),
            (0xc633_6400, 24, AddressKind::Documentation),
            (0xcb00_7100, 24, AddressKind::Documentation),
            (0xe000_0000, 4, AddressKind::Multicast),
            (0xf000_0000, 4, AddressKind::Reserved),
        ];
        let bits = u32::from(ip);
        table
            .iter()
            .find(|(net, len, _)| bits >> (32 - len) == net >> (32 - len))
            .map_or(AddressKind::Public, |(_, _, kind)| *kind)
    }

    proptest! {
        #[test]
        fn ipv4_classification_matches_the_cidr_table(bits in any::<u32>()) {
            let ip = Ipv4Addr::from(bits);
            prop_assert_eq!(classify_v4(ip), reference_v4(ip));
        }

        #[test]
        fn ipv4_in_the_private_blocks_is_private(host in any::<u32>()) {
            for (net, len) in [(0x0a00_0000u32, 8u32), (0xac10_0000, 12), (0xc0a8_0000, 16), (0x6440_0000, 10)] {
                let ip = Ipv4Addr::from(net | (host >> len));
                prop_assert_eq!(classify_v4(ip), AddressKind::Private);
            }
        }

        #[test]
        fn mapped_nat64_and_6to4_addresses_are_judged_by_their_ipv4(bits in any::<u32>(), tail in any::<u64>()) {
            let v4 = Ipv4Addr::from(bits);
            let expected = classify_v4(v4);
            let [a, b, c, d] = v4.octets();
            let hi = u16::from_be_bytes([a, b]);
            let lo = u16::from_be_bytes([c, d]);
            let mapped = v4.to_ipv6_mapped();
            let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo);
            let t = tail.to_be_bytes();
            let six_to_four = Ipv6Addr::new(
                0x2002, hi, lo,
                u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]]),
                u16::from_be_bytes([t[4], t[5]]), u16::from_be_bytes([t[6], t[7]]), 0,
            );
            prop_assert_eq!(classify(IpAddr::V6(mapped)), expected);
            prop_assert_eq!(classify(IpAddr::V6(nat64)), expected);
            prop_assert_eq!(classify(IpAddr::V6(six_to_four)), expected);
        }

        #[test]
        fn ipv6_outside_global_unicast_is_never_public(bits in any::<u128>()) {
            let ip = Ipv6Addr::from(bits);
            let in_2000_3 = bits >> 125 == 0b001;
            let kind = classify_v6(ip);
            let carries_v4 = ip.to_ipv4_mapped().is_some() || bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000;
            if !in_2000_3 && !carries_v4 {
                prop_assert_ne!(kind, AddressKind::Public);
            }
        }
    }
}
