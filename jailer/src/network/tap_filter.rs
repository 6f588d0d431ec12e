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
//!    solicitations, neighbour advertisements, MLD reports): hop limit 255 (ND) from the
//!    guest's link-local or own addresses or `::`, an advertisement only for a configured
//!    address when `ip=` gives IPv6 ones, rate-limited as ARP; never a router advertisement
//!    or a redirect;
//! 5. any other IP packet: from the guest's address (`ip=`, else the first one seen; up to
//!    [`LEARNED_V6`] IPv6 ones) and to a destination of the egress allow-list.
//!
//! Named counters (`mac-<tap>`, `type-<tap>`, `arp-<tap>`, `nd-<tap>`, `addr-<tap>`,
//! `egress-<tap>`) count the drops by reason (`nft list counters table netdev kiln-<id>`).
//! The neighbour tables of the jail's namespace are the kernel's, shared with the host: the
//! pinned addresses and the rate limits are what keep a guest from filling them.

use std::fmt::Write;
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
        // `write!` to a String cannot fail.
        let _ = write!(out, "{}", tap_rules(tap, allow));
    }
    out.push_str("}\n");
    out
}

fn tap_rules(tap: &Tap, allow: &[EgressAllow]) -> String {
    let t = &tap.name;
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
    let mut sets = String::new();
    let mut counters = String::new();
    for reason in ["mac", "type", "arp", "nd", "addr", "egress"] {
        let _ = writeln!(counters, "  counter {reason}-{t} {{}}");
    }
    // The source MAC: configured, or learned from the first unicast frame.
    let (mac_learn, mac_match) = match &tap.mac {
        Some(mac) => (String::new(), mac_text(mac)),
        None => {
            let _ = writeln!(
                sets,
                "  set mac-{t} {{ type ether_addr; size 1; flags dynamic; }}"
            );
            (
                format!("    add @mac-{t} {{ ether saddr }}\n"),
                format!("@mac-{t}"),
            )
        }
    };
    // The guest's addresses: configured, or learned from its first packets.
    let (v4_learn, v4_match) = if v4.is_empty() {
        let _ = writeln!(
            sets,
            "  set v4-{t} {{ type ipv4_addr; size 1; flags dynamic; }}"
        );
        (
            format!("    add @v4-{t} {{ ip saddr }}\n"),
            format!("@v4-{t}"),
        )
    } else {
        (String::new(), format!("{{ {} }}", v4.join(", ")))
    };
    let (arp_learn, arp_match) = if v4.is_empty() {
        (
            format!("    arp saddr ip != 0.0.0.0 add @v4-{t} {{ arp saddr ip }}\n"),
            format!("@v4-{t}"),
        )
    } else {
        (String::new(), format!("{{ {} }}", v4.join(", ")))
    };
    let (v6_learn, v6_match) = if v6.is_empty() {
        let _ = writeln!(
            sets,
            "  set v6-{t} {{ type ipv6_addr; size {LEARNED_V6}; flags dynamic; }}"
        );
        (
            format!("    ip6 saddr != :: add @v6-{t} {{ ip6 saddr }}\n"),
            format!("@v6-{t}"),
        )
    } else {
        (String::new(), format!("{{ {} }}", v6.join(", ")))
    };
    // A neighbour advertisement claims an address: only the configured ones (a learned set
    // cannot be compared with the raw target field).
    let na_target = if v6.is_empty() {
        String::new()
    } else {
        let targets: Vec<String> = tap
            .addrs
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(a) => Some(format!("{:#034x}", u128::from(*a))),
                IpAddr::V4(_) => None,
            })
            .collect();
        format!(
            "    icmpv6 type nd-neighbor-advert @th,64,128 != {{ {} }} counter name \"nd-{t}\" drop\n",
            targets.join(", ")
        )
    };
    let rate = format!("limit rate over {NEIGH_RATE}/second burst {NEIGH_BURST} packets");
    let mut egress4 = String::new();
    let mut egress6 = String::new();
    for a in allow {
        let rule = allow_rule(a);
        let target = if a.addr.is_ipv4() {
            &mut egress4
        } else {
            &mut egress6
        };
        let _ = writeln!(target, "    {rule} accept");
    }
    format!(
        "{counters}{sets}\
         \x20 chain guest-{t} {{\n\
         \x20   type filter hook ingress device \"{t}\" priority -500; policy drop;\n\
         \x20   ether saddr & 01:00:00:00:00:00 == 01:00:00:00:00:00 counter name \"mac-{t}\" drop\n\
         {mac_learn}\
         \x20   ether saddr != {mac_match} counter name \"mac-{t}\" drop\n\
         \x20   ether type arp jump arp-{t}\n\
         \x20   ether type ip jump ip4-{t}\n\
         \x20   ether type ip6 jump ip6-{t}\n\
         \x20   counter name \"type-{t}\" drop\n\
         \x20 }}\n\
         \x20 chain arp-{t} {{\n\
         \x20   arp htype != 1 counter name \"arp-{t}\" drop\n\
         \x20   arp ptype != ip counter name \"arp-{t}\" drop\n\
         \x20   arp hlen != 6 counter name \"arp-{t}\" drop\n\
         \x20   arp plen != 4 counter name \"arp-{t}\" drop\n\
         \x20   arp saddr ether != {mac_match} counter name \"arp-{t}\" drop\n\
         {arp_learn}\
         \x20   arp saddr ip != 0.0.0.0 arp saddr ip != {arp_match} counter name \"arp-{t}\" drop\n\
         \x20   {rate} counter name \"arp-{t}\" drop\n\
         \x20   accept\n\
         \x20 }}\n\
         \x20 chain ip4-{t} {{\n\
         \x20   ip saddr 0.0.0.0 counter name \"addr-{t}\" drop\n\
         {v4_learn}\
         \x20   ip saddr != {v4_match} counter name \"addr-{t}\" drop\n\
         {egress4}\
         \x20   counter name \"egress-{t}\" drop\n\
         \x20 }}\n\
         \x20 chain ip6-{t} {{\n\
         \x20   icmpv6 type {{ nd-router-advert, nd-redirect }} counter name \"nd-{t}\" drop\n\
         \x20   icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} ip6 hoplimit != 255 counter name \"nd-{t}\" drop\n\
         {na_target}\
         \x20   icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld2-listener-report }} jump nd-{t}\n\
         {v6_learn}\
         \x20   ip6 saddr != {v6_match} counter name \"addr-{t}\" drop\n\
         {egress6}\
         \x20   counter name \"egress-{t}\" drop\n\
         \x20 }}\n\
         \x20 chain nd-{t} {{\n\
         {v6_learn}\
         \x20   ip6 saddr != :: ip6 saddr != fe80::/10 ip6 saddr != {v6_match} counter name \"addr-{t}\" drop\n\
         \x20   {rate} counter name \"nd-{t}\" drop\n\
         \x20   accept\n\
         \x20 }}\n"
    )
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
            "ip6 saddr != { fd00::2 } counter name \"addr-kt0\" drop",
            "icmpv6 type nd-neighbor-advert @th,64,128 != { 0xfd000000000000000000000000000002 } counter name \"nd-kt0\" drop",
            "limit rate over 20/second burst 40 packets counter name \"arp-kt0\" drop",
        ] {
            assert!(r.contains(line), "missing {line:?} in\n{r}");
        }
        // Nothing learned when everything is given.
        assert!(!r.contains("flags dynamic"), "{r}");
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
        ] {
            assert!(r.contains(line), "missing {line:?} in\n{r}");
        }
        // An empty allow-list lets no IP packet through, only ARP and ND.
        assert!(!r.contains("daddr"), "{r}");
    }
}
