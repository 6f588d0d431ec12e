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
//!
//! The rules, as `nft list ruleset` shows them (per tap `<t>`; `MAC`, `V4`, `V6` are the
//! configured values, or the learned sets `@mac-<t>`, `@v4-<t>`, `@v6-<t>`; the lines
//! marked "learned" only exist for what is learned):
//!
//! ```text
//! chain guest-<t> {
//!   type filter hook ingress device "<t>" priority -500; policy drop;
//!   ether saddr & 01:00:00:00:00:00 == 01:00:00:00:00:00 counter name "mac-<t>" drop
//!   add @mac-<t> { ether saddr }                                              # learned
//!   ether saddr != MAC counter name "mac-<t>" drop
//!   ether type arp jump arp-<t>
//!   ether type ip jump ip4-<t>
//!   ether type ip6 jump ip6-<t>
//!   counter name "type-<t>" drop
//! }
//! chain arp-<t> {
//!   arp htype != 1 counter name "arp-<t>" drop          (and ptype ip, hlen 6, plen 4)
//!   arp saddr ether != MAC counter name "arp-<t>" drop
//!   arp saddr ip != 0.0.0.0 add @v4-<t> { arp saddr ip }                      # learned
//!   arp saddr ip != 0.0.0.0 arp saddr ip != V4 counter name "arp-<t>" drop
//!   limit rate over 20/second burst 40 packets counter name "arp-<t>" drop
//!   accept
//! }
//! chain ip4-<t> {
//!   ip saddr 0.0.0.0 counter name "addr-<t>" drop
//!   add @v4-<t> { ip saddr }                                                  # learned
//!   ip saddr != V4 counter name "addr-<t>" drop
//!   (the IPv4 allow-list rules, as in the inet table's forward chain)
//!   counter name "egress-<t>" drop
//! }
//! chain ip6-<t> {
//!   icmpv6 type { nd-router-advert, nd-redirect } counter name "nd-<t>" drop
//!   icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit != 255 counter name "nd-<t>" drop
//!   icmpv6 type nd-neighbor-advert @th,64,128 != { V6 } @th,64,10 != 0x3fa counter name "nd-<t>" drop   # V6 configured
//!   icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld2-listener-report } jump nd-<t>
//!   ip6 saddr fe80::/10 add @ll-<t> { ip6 saddr }
//!   ip6 saddr != :: ip6 saddr != fe80::/10 add @v6-<t> { ip6 saddr }          # learned
//!   ip6 saddr @ll-<t> goto egress6-<t>
//!   ip6 saddr V6 goto egress6-<t>
//!   counter name "addr-<t>" drop
//! }
//! chain nd-<t> {
//!   (the two learning rules of ip6-<t>)
//!   ip6 saddr :: goto nd-rate-<t>
//!   ip6 saddr @ll-<t> goto nd-rate-<t>
//!   ip6 saddr V6 goto nd-rate-<t>
//!   counter name "addr-<t>" drop
//! }
//! chain nd-rate-<t> {
//!   limit rate over 20/second burst 40 packets counter name "nd-<t>" drop
//!   accept
//! }
//! chain egress6-<t> {
//!   (the IPv6 allow-list rules)
//!   counter name "egress-<t>" drop
//! }
//! ```

use std::net::IpAddr;

use jailer::nftables::batch::HOOK_INGRESS;
use jailer::nftables::{Batch, CmpOp, Family, Hook, KeyType, Rule, Verdict, L3};

use super::firewall::{
    add_table, allow_rule, saddr_offset, ICMPV6, MLD2_LISTENER_REPORT, MLD_LISTENER_REPORT,
    ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT, ND_REDIRECT, ND_ROUTER_ADVERT, ND_ROUTER_SOLICIT,
};
use crate::args::{EgressAllow, Tap};

/// ARP and ND packets a second a guest may send, and the burst above it.
pub const NEIGH_RATE: u32 = 20;
pub const NEIGH_BURST: u32 = 40;
/// IPv6 addresses learned per tap (link-local, a global one, temporary ones).
pub const LEARNED_V6: u32 = 4;

const NETDEV: Family = Family::Netdev;
/// The guest chain's priority: before anything else at the tap's ingress.
const INGRESS_PRIORITY: i32 = -500;
/// Byte offsets in the Ethernet header and the ARP packet.
const ETHER_SADDR: u32 = 6;
const ETHER_TYPE: u32 = 12;
const ARP_SHA: u32 = 8;
const ARP_SPA: u32 = 14;
/// The IPv6 hop limit, and an ND target address (after the ICMPv6 header) in its message.
const IP6_HOPLIMIT: u32 = 7;
const ND_TARGET: u32 = 8;

/// Adds the netdev table for `taps` (replacing any of that name when `replace`) to
/// `batch`.
pub fn ruleset(batch: &mut Batch, table: &str, taps: &[Tap], allow: &[EgressAllow], replace: bool) {
    add_table(batch, NETDEV, table, replace);
    for tap in taps {
        tap_rules(batch, table, tap, allow);
    }
}

/// A value the guest's packets must carry: configured ones, or a learned set.
enum Pinned {
    Given(Vec<Vec<u8>>),
    Learned(String),
}

impl Pinned {
    /// The loaded field is (`Eq`) or is not (`Neq`) the pinned value.
    fn check(&self, rule: &mut Rule, op: CmpOp, key: KeyType) {
        match self {
            Pinned::Given(values) => {
                rule.one_of(op, key, values.clone());
            }
            Pinned::Learned(set) => {
                rule.lookup(set, op == CmpOp::Neq);
            }
        }
    }
}

/// One chain's rules, added after all the chains, sets and counters exist.
struct Chains<'a> {
    t: &'a str,
    rules: Vec<(String, Rule)>,
}

impl Chains<'_> {
    fn rule(&mut self, chain: &str, build: impl FnOnce(&mut Rule)) {
        let mut rule = Rule::new(NETDEV);
        build(&mut rule);
        self.rules.push((format!("{chain}-{}", self.t), rule));
    }
}

fn tap_rules(batch: &mut Batch, table: &str, tap: &Tap, allow: &[EgressAllow]) {
    let t = tap.name.as_str();
    let name = |what: &str| format!("{what}-{t}");
    let drop = |r: &mut Rule, reason: &str| {
        r.counter(&format!("{reason}-{t}")).verdict(Verdict::Drop);
    };
    let v4: Vec<Vec<u8>> = tap
        .addrs
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(a.octets().to_vec()),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6: Vec<Vec<u8>> = tap
        .addrs
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(a) => Some(a.octets().to_vec()),
            IpAddr::V4(_) => None,
        })
        .collect();

    // Chains, counters, sets: everything the rules name.
    let ingress = Hook {
        num: HOOK_INGRESS,
        priority: INGRESS_PRIORITY,
        device: Some(t.to_owned()),
    };
    batch.add_chain(NETDEV, table, &name("guest"), Some(&ingress));
    for chain in ["arp", "ip4", "ip6", "nd", "nd-rate", "egress6"] {
        batch.add_chain(NETDEV, table, &name(chain), None);
    }
    for reason in ["mac", "type", "arp", "nd", "addr", "egress"] {
        batch.add_counter(NETDEV, table, &name(reason));
    }
    let mut learn = |set: &str, key: KeyType, size: u32| {
        batch.add_set(NETDEV, table, &name(set), key, size);
        Pinned::Learned(name(set))
    };
    let mac = match &tap.mac {
        Some(mac) => Pinned::Given(vec![mac.to_vec()]),
        None => learn("mac", KeyType::EtherAddr, 1),
    };
    let own4 = match v4.is_empty() {
        true => learn("v4", KeyType::Ipv4Addr, 1),
        false => Pinned::Given(v4.clone()),
    };
    learn("ll", KeyType::Ipv6Addr, 2);
    let own6 = match v6.is_empty() {
        true => learn("v6", KeyType::Ipv6Addr, LEARNED_V6),
        false => Pinned::Given(v6.clone()),
    };
    let mut c = Chains {
        t,
        rules: Vec::new(),
    };

    // The source MAC: configured, or learned from the first unicast frame.
    c.rule("guest", |r| {
        let group = vec![1, 0, 0, 0, 0, 0];
        r.ether(ETHER_SADDR, 6)
            .mask(group.clone())
            .cmp(CmpOp::Eq, group);
        drop(r, "mac");
    });
    if tap.mac.is_none() {
        c.rule("guest", |r| {
            r.ether(ETHER_SADDR, 6).add_to(&name("mac"));
        });
    }
    c.rule("guest", |r| {
        r.ether(ETHER_SADDR, 6);
        mac.check(r, CmpOp::Neq, KeyType::EtherAddr);
        drop(r, "mac");
    });
    // Only these protocols; a VLAN tag reads as 0x8100 and is dropped with the rest.
    for (ethertype, chain) in [(0x0806_u16, "arp"), (0x0800, "ip4"), (0x86dd, "ip6")] {
        c.rule("guest", |r| {
            r.ether(ETHER_TYPE, 2)
                .cmp(CmpOp::Eq, ethertype.to_be_bytes().to_vec())
                .verdict(Verdict::Jump(name(chain)));
        });
    }
    c.rule("guest", |r| drop(r, "type"));

    // ARP: Ethernet/IPv4, from the guest's MAC and address (configured or the first seen).
    let arp_fields: [(u32, u32, Vec<u8>); 4] = [
        (0, 2, vec![0, 1]), // htype: Ethernet
        (2, 2, vec![8, 0]), // ptype: IPv4
        (4, 1, vec![6]),    // hlen
        (5, 1, vec![4]),    // plen
    ];
    for (offset, len, value) in arp_fields {
        c.rule("arp", |r| {
            r.header(L3::Arp, offset, len).cmp(CmpOp::Neq, value);
            drop(r, "arp");
        });
    }
    c.rule("arp", |r| {
        r.header(L3::Arp, ARP_SHA, 6);
        mac.check(r, CmpOp::Neq, KeyType::EtherAddr);
        drop(r, "arp");
    });
    // 0.0.0.0: an address probe (RFC 5227).
    let not_probe = |r: &mut Rule| {
        r.header(L3::Arp, ARP_SPA, 4)
            .cmp(CmpOp::Neq, vec![0; 4])
            .header(L3::Arp, ARP_SPA, 4);
    };
    if v4.is_empty() {
        c.rule("arp", |r| {
            not_probe(r);
            r.add_to(&name("v4"));
        });
    }
    c.rule("arp", |r| {
        not_probe(r);
        own4.check(r, CmpOp::Neq, KeyType::Ipv4Addr);
        drop(r, "arp");
    });
    c.rule("arp", |r| {
        r.limit_over(u64::from(NEIGH_RATE), NEIGH_BURST);
        drop(r, "arp");
    });
    c.rule("arp", |r| {
        r.verdict(Verdict::Accept);
    });

    // IPv4: from the guest's address, to the allow-list.
    let saddr4 = saddr_offset(L3::Ip4);
    c.rule("ip4", |r| {
        r.header(L3::Ip4, saddr4, 4).cmp(CmpOp::Eq, vec![0; 4]);
        drop(r, "addr");
    });
    if v4.is_empty() {
        c.rule("ip4", |r| {
            r.header(L3::Ip4, saddr4, 4).add_to(&name("v4"));
        });
    }
    c.rule("ip4", |r| {
        r.header(L3::Ip4, saddr4, 4);
        own4.check(r, CmpOp::Neq, KeyType::Ipv4Addr);
        drop(r, "addr");
    });
    for a in allow {
        let chain = if a.addr.is_ipv4() { "ip4" } else { "egress6" };
        c.rules.push((name(chain), allow_rule(NETDEV, a)));
    }
    c.rule("ip4", |r| drop(r, "egress"));
    c.rule("egress6", |r| drop(r, "egress"));

    // IPv6: the guest's link-local addresses (the first two seen) and its own, configured
    // or the first ones seen.
    let saddr6 = saddr_offset(L3::Ip6);
    let icmpv6_type = |r: &mut Rule, types: &[u8]| {
        r.transport(L3::Ip6, ICMPV6, 0, 1);
        let types = types.iter().map(|t| vec![*t]).collect();
        r.one_of(CmpOp::Eq, KeyType::Icmpv6Type, types);
    };
    let link_local = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let learn6 = |c: &mut Chains, chain: &str| {
        c.rule(chain, |r| {
            r.prefix(CmpOp::Eq, L3::Ip6, saddr6, &link_local, 10)
                .header(L3::Ip6, saddr6, 16)
                .add_to(&name("ll"));
        });
        if v6.is_empty() {
            c.rule(chain, |r| {
                r.header(L3::Ip6, saddr6, 16)
                    .cmp(CmpOp::Neq, vec![0; 16])
                    .prefix(CmpOp::Neq, L3::Ip6, saddr6, &link_local, 10)
                    .header(L3::Ip6, saddr6, 16)
                    .add_to(&name("v6"));
            });
        }
    };
    c.rule("ip6", |r| {
        icmpv6_type(r, &[ND_ROUTER_ADVERT, ND_REDIRECT]);
        drop(r, "nd");
    });
    c.rule("ip6", |r| {
        icmpv6_type(
            r,
            &[ND_ROUTER_SOLICIT, ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT],
        );
        r.header(L3::Ip6, IP6_HOPLIMIT, 1)
            .cmp(CmpOp::Neq, vec![255]);
        drop(r, "nd");
    });
    if !v6.is_empty() {
        // An advertisement claims its target address: a configured one or a link-local one
        // (the first 10 bits fe80::/10).
        c.rule("ip6", |r| {
            icmpv6_type(r, &[ND_NEIGHBOR_ADVERT]);
            r.raw_transport(ND_TARGET, 16)
                .one_of(
                    CmpOp::Neq,
                    KeyType::RawTransport {
                        offset: ND_TARGET,
                        len: 16,
                    },
                    v6.clone(),
                )
                .raw_transport(ND_TARGET, 2)
                .mask(vec![0xff, 0xc0])
                .cmp(CmpOp::Neq, vec![0xfe, 0x80]);
            drop(r, "nd");
        });
    }
    c.rule("ip6", |r| {
        icmpv6_type(
            r,
            &[
                ND_ROUTER_SOLICIT,
                ND_NEIGHBOR_SOLICIT,
                ND_NEIGHBOR_ADVERT,
                MLD_LISTENER_REPORT,
                MLD2_LISTENER_REPORT,
            ],
        );
        r.verdict(Verdict::Jump(name("nd")));
    });
    learn6(&mut c, "ip6");
    let from_guest6 = |c: &mut Chains, chain: &str, target: &str| {
        c.rule(chain, |r| {
            r.header(L3::Ip6, saddr6, 16)
                .lookup(&name("ll"), false)
                .verdict(Verdict::Goto(name(target)));
        });
        c.rule(chain, |r| {
            r.header(L3::Ip6, saddr6, 16);
            own6.check(r, CmpOp::Eq, KeyType::Ipv6Addr);
            r.verdict(Verdict::Goto(name(target)));
        });
    };
    from_guest6(&mut c, "ip6", "egress6");
    c.rule("ip6", |r| drop(r, "addr"));

    learn6(&mut c, "nd");
    // `::`: duplicate address detection.
    c.rule("nd", |r| {
        r.header(L3::Ip6, saddr6, 16)
            .cmp(CmpOp::Eq, vec![0; 16])
            .verdict(Verdict::Goto(name("nd-rate")));
    });
    from_guest6(&mut c, "nd", "nd-rate");
    c.rule("nd", |r| drop(r, "addr"));
    c.rule("nd-rate", |r| {
        r.limit_over(u64::from(NEIGH_RATE), NEIGH_BURST);
        drop(r, "nd");
    });
    c.rule("nd-rate", |r| {
        r.verdict(Verdict::Accept);
    });

    // In chain order, each chain's rules in the order written.
    for chain in ["guest", "arp", "ip4", "ip6", "nd", "nd-rate", "egress6"] {
        let chain = name(chain);
        for (_, rule) in c.rules.iter().filter(|(n, _)| *n == chain) {
            batch.add_rule(NETDEV, table, &chain, rule.clone());
        }
    }
}
