//! The guest filter at each tap: an nftables `netdev` table `kiln-<id>` with one chain per
//! tap on the tap's own ingress hook, which sees every frame the guest writes before the
//! kernel routes or bridges it. So the policy holds whether the orchestrator routes the tap
//! or puts it in a bridge, whatever `net.bridge.bridge-nf-call-*` says. Per tap, a frame is
//! dropped unless:
//!
//! 1. its source MAC is the guest's: `mac=` of `--tap`, else the first unicast source MAC
//!    the tap sees (a set of one, filled by the first frame); never a group address;
//! 2. it is IPv4, IPv6 or ARP (no VLAN tags, no other protocol);
//! 3. ARP: Ethernet/IPv4 only, the sender MAC the source MAC, the sender address the
//!    guest's (`ip=`, else the first one seen; 0.0.0.0 for a probe) — and at most
//!    [`NEIGH_RATE`] a second, with bursts of [`NEIGH_BURST`];
//! 4. IPv6 neighbour discovery and multicast listener reports (router and neighbour
//!    solicitations, neighbour advertisements, MLD reports): hop limit 255 (ND), from `::`
//!    or one of the guest's addresses; an advertisement only for a configured or a
//!    link-local address when `ip=` gives IPv6 ones; rate-limited as ARP; never a router
//!    advertisement or a redirect;
//! 5. any other IP packet: from one of the guest's addresses and to a destination of the
//!    egress allow-list.
//!
//! The guest's addresses: IPv4, the `ip=` one(s), else the first one seen; IPv6, its first
//! two link-local addresses and the `ip=` one(s), else the first [`LEARNED_V6`] others seen.
//!
//! Named counters (`mac-<tap>`, `type-<tap>`, `arp-<tap>`, `nd-<tap>`, `addr-<tap>`,
//! `egress-<tap>`) count the drops by reason (`nft list counters table netdev kiln-<id>`).
//! The neighbour tables of the jail's namespace are the kernel's, shared with the host: the
//! pinned addresses and the rate limits are what keep a guest from filling them.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::args::{EgressAllow, Tap};

use super::firewall::allow_rule;

/// ARP and ND packets a second a guest may send, and the burst above it.
pub const NEIGH_RATE: u32 = 20;
pub const NEIGH_BURST: u32 = 40;
/// IPv6 addresses learned per tap (link-local, a global one, temporary ones).
pub const LEARNED_V6: u32 = 4;

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The netdev table for `taps` (a fresh one: any previous one of that name is replaced).
pub fn ruleset(table: &str, taps: &[Tap], allow: &[EgressAllow]) -> String {
    let mut out =
        format!("table netdev {table}\ndelete table netdev {table}\ntable netdev {table} {{\n");
    for tap in taps {
        out.push_str(&tap_rules(tap, allow));
    }
    out.push_str("}\n");
    out
}

/// A chain: its name and its lines (rules, or a base chain's `type ...` line).
struct Chain {
    name: String,
    lines: Vec<String>,
}

impl Chain {
    fn new(name: String) -> Chain {
        Chain {
            name,
            lines: Vec::new(),
        }
    }

    fn rule(&mut self, rule: String) {
        self.lines.push(rule);
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "  chain {} {{", self.name);
        for l in &self.lines {
            let _ = writeln!(out, "    {l}");
        }
        out.push_str("  }\n");
    }
}

fn tap_rules(tap: &Tap, allow: &[EgressAllow]) -> String {
    let t = &tap.name;
    let drop = |reason: &str| format!("counter name \"{reason}-{t}\" drop");
    let rate = format!("limit rate over {NEIGH_RATE}/second burst {NEIGH_BURST} packets");
    let v4: Vec<String> = tap
        .addrs
        .iter()
        .filter(|a| a.is_ipv4())
        .map(IpAddr::to_string)
        .collect();
    let v6: Vec<String> = tap
        .addrs
        .iter()
        .filter(|a| a.is_ipv6())
        .map(IpAddr::to_string)
        .collect();
    let mut out = String::new();
    for reason in ["mac", "type", "arp", "nd", "addr", "egress"] {
        let _ = writeln!(out, "  counter {reason}-{t} {{}}");
    }
    let set = |out: &mut String, name: &str, kind: &str, size: u32| {
        let _ = writeln!(
            out,
            "  set {name}-{t} {{ type {kind}; size {size}; flags dynamic; }}"
        );
    };

    // The source MAC: configured, or learned from the first unicast frame.
    let mut guest = Chain::new(format!("guest-{t}"));
    guest.rule(format!(
        "type filter hook ingress device \"{t}\" priority -500; policy drop;"
    ));
    guest.rule(format!(
        "ether saddr & 01:00:00:00:00:00 == 01:00:00:00:00:00 {}",
        drop("mac")
    ));
    let mac = match &tap.mac {
        Some(mac) => mac_text(mac),
        None => {
            set(&mut out, "mac", "ether_addr", 1);
            guest.rule(format!("add @mac-{t} {{ ether saddr }}"));
            format!("@mac-{t}")
        }
    };
    guest.rule(format!("ether saddr != {mac} {}", drop("mac")));
    // Only these protocols; a VLAN tag reads as 0x8100 and is dropped with the rest.
    guest.rule(format!("ether type arp jump arp-{t}"));
    guest.rule(format!("ether type ip jump ip4-{t}"));
    guest.rule(format!("ether type ip6 jump ip6-{t}"));
    guest.rule(drop("type"));

    // IPv4 and ARP: the guest's address, configured or the first one seen.
    let v4_match = if v4.is_empty() {
        set(&mut out, "v4", "ipv4_addr", 1);
        format!("@v4-{t}")
    } else {
        format!("{{ {} }}", v4.join(", "))
    };
    let mut arp = Chain::new(format!("arp-{t}"));
    for (field, value) in [
        ("htype", "1"),
        ("ptype", "ip"),
        ("hlen", "6"),
        ("plen", "4"),
    ] {
        arp.rule(format!("arp {field} != {value} {}", drop("arp")));
    }
    arp.rule(format!("arp saddr ether != {mac} {}", drop("arp")));
    if v4.is_empty() {
        arp.rule(format!(
            "arp saddr ip != 0.0.0.0 add @v4-{t} {{ arp saddr ip }}"
        ));
    }
    // 0.0.0.0: an address probe (RFC 5227).
    arp.rule(format!(
        "arp saddr ip != 0.0.0.0 arp saddr ip != {v4_match} {}",
        drop("arp")
    ));
    arp.rule(format!("{rate} {}", drop("arp")));
    arp.rule("accept".into());

    let mut ip4 = Chain::new(format!("ip4-{t}"));
    ip4.rule(format!("ip saddr 0.0.0.0 {}", drop("addr")));
    if v4.is_empty() {
        ip4.rule(format!("add @v4-{t} {{ ip saddr }}"));
    }
    ip4.rule(format!("ip saddr != {v4_match} {}", drop("addr")));
    let mut egress6 = Chain::new(format!("egress6-{t}"));
    for a in allow {
        let chain = if a.addr.is_ipv4() {
            &mut ip4
        } else {
            &mut egress6
        };
        chain.rule(format!("{} accept", allow_rule(a)));
    }
    ip4.rule(drop("egress"));
    egress6.rule(drop("egress"));

    // IPv6: the guest's link-local addresses (the first two seen) and its own, configured
    // or the first ones seen.
    set(&mut out, "ll", "ipv6_addr", 2);
    let own6 = if v6.is_empty() {
        set(&mut out, "v6", "ipv6_addr", LEARNED_V6);
        format!("@v6-{t}")
    } else {
        format!("{{ {} }}", v6.join(", "))
    };
    let learn6 = |chain: &mut Chain| {
        chain.rule(format!("ip6 saddr fe80::/10 add @ll-{t} {{ ip6 saddr }}"));
        if v6.is_empty() {
            chain.rule(format!(
                "ip6 saddr != :: ip6 saddr != fe80::/10 add @v6-{t} {{ ip6 saddr }}"
            ));
        }
    };
    let mut ip6 = Chain::new(format!("ip6-{t}"));
    ip6.rule(format!(
        "icmpv6 type {{ nd-router-advert, nd-redirect }} {}",
        drop("nd")
    ));
    ip6.rule(format!(
        "icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} ip6 hoplimit != 255 {}",
        drop("nd")
    ));
    if !v6.is_empty() {
        // An advertisement claims its target address: a configured one or a link-local one
        // (the first 10 bits fe80::/10).
        let targets: Vec<String> = tap
            .addrs
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(a) => Some(format!("{:#034x}", u128::from(*a))),
                IpAddr::V4(_) => None,
            })
            .collect();
        ip6.rule(format!(
            "icmpv6 type nd-neighbor-advert @th,64,128 != {{ {} }} @th,64,10 != 0x3fa {}",
            targets.join(", "),
            drop("nd")
        ));
    }
    ip6.rule(format!(
        "icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld2-listener-report }} jump nd-{t}"
    ));
    learn6(&mut ip6);
    ip6.rule(format!("ip6 saddr @ll-{t} goto egress6-{t}"));
    ip6.rule(format!("ip6 saddr {own6} goto egress6-{t}"));
    ip6.rule(drop("addr"));

    let mut nd = Chain::new(format!("nd-{t}"));
    learn6(&mut nd);
    // `::`: duplicate address detection.
    nd.rule(format!("ip6 saddr :: goto nd-rate-{t}"));
    nd.rule(format!("ip6 saddr @ll-{t} goto nd-rate-{t}"));
    nd.rule(format!("ip6 saddr {own6} goto nd-rate-{t}"));
    nd.rule(drop("addr"));
    let mut nd_rate = Chain::new(format!("nd-rate-{t}"));
    nd_rate.rule(format!("{rate} {}", drop("nd")));
    nd_rate.rule("accept".into());

    for chain in [&guest, &arp, &ip4, &ip6, &nd, &nd_rate, &egress6] {
        chain.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{parse_egress_flag, parse_tap};

    #[test]
    fn configured_mac_and_addresses_are_pinned() {
        let tap = parse_tap("kt0,mac=02:00:0a:00:00:02,ip=10.0.0.2,ip=fd00::2").unwrap();
        let allow = vec![parse_egress_flag("tcp,10.0.0.0/8,443").unwrap()];
        let r = ruleset("kiln-vm", &[tap], &allow);
        assert!(r.starts_with("table netdev kiln-vm\ndelete table netdev kiln-vm\n"));
        for line in [
            "type filter hook ingress device \"kt0\" priority -500; policy drop;",
            "ether saddr != 02:00:0a:00:00:02 counter name \"mac-kt0\" drop",
            "arp saddr ether != 02:00:0a:00:00:02 counter name \"arp-kt0\" drop",
            "arp saddr ip != 0.0.0.0 arp saddr ip != { 10.0.0.2 } counter name \"arp-kt0\" drop",
            "ip saddr != { 10.0.0.2 } counter name \"addr-kt0\" drop",
            "ip daddr 10.0.0.0/8 tcp dport { 443 } accept",
            "ip6 saddr { fd00::2 } goto egress6-kt0",
            "icmpv6 type nd-neighbor-advert @th,64,128 != { 0xfd000000000000000000000000000002 } @th,64,10 != 0x3fa counter name \"nd-kt0\" drop",
            "limit rate over 20/second burst 40 packets counter name \"arp-kt0\" drop",
        ] {
            assert!(r.contains(line), "missing {line:?} in\n{r}");
        }
        // Only the link-local addresses are learned when everything is given.
        assert_eq!(r.matches("flags dynamic").count(), 1, "{r}");
        assert!(r.contains("set ll-kt0 { type ipv6_addr; size 2; flags dynamic; }"));
    }

    #[test]
    fn what_is_not_given_is_learned_once() {
        let r = ruleset("kiln-vm", &[parse_tap("kt1").unwrap()], &[]);
        for line in [
            "set mac-kt1 { type ether_addr; size 1; flags dynamic; }",
            "set v4-kt1 { type ipv4_addr; size 1; flags dynamic; }",
            "set v6-kt1 { type ipv6_addr; size 4; flags dynamic; }",
            "add @mac-kt1 { ether saddr }",
            "ether saddr != @mac-kt1 counter name \"mac-kt1\" drop",
            "ip saddr != @v4-kt1 counter name \"addr-kt1\" drop",
            "ip6 saddr != :: ip6 saddr != fe80::/10 add @v6-kt1 { ip6 saddr }",
            "ip6 saddr @v6-kt1 goto egress6-kt1",
        ] {
            assert!(r.contains(line), "missing {line:?} in\n{r}");
        }
        // An empty allow-list lets no IP packet through, only ARP and ND.
        assert!(!r.contains("daddr"), "{r}");
    }
}
