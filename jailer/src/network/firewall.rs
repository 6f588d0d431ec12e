//! The egress firewall: an nftables table `inet kiln-<id>` in the jail's network namespace
//! that drops everything but the tenant's allow-list and its established/related replies,
//! on the output, forward (guest traffic from the taps) and input hooks; and the loading of
//! it with the taps' guest filters (`tap_filter.rs`, table `netdev kiln-<id>`) in one nf_tables
//! transaction, sent over netlink by the jailer itself (`jailer::nftables`; no `nft`
//! process). As `nft list ruleset` shows it (each allow-list entry is one rule, in the
//! forward and the output chains):
//!
//! ```text
//! table inet kiln-<id> {
//!   chain input {
//!     type filter hook input priority 0; policy drop;
//!     iif "lo" accept
//!     ct state established,related accept
//!     icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
//!   }
//!   chain forward {
//!     type filter hook forward priority 0; policy drop;
//!     ct state established,related accept
//!     ip daddr 10.0.0.0/8 tcp dport { 80, 443 } accept          # tcp,10.0.0.0/8,80,443
//!     ip6 daddr fd00::/8 meta l4proto udp accept                 # udp,fd00::/8
//!     ip daddr 192.168.0.0/16 meta l4proto icmp accept           # icmp,192.168.0.0/16
//!     ip daddr 10.1.2.3 accept                                   # any,10.1.2.3/32
//!   }
//!   chain output {
//!     type filter hook output priority 0; policy drop;
//!     oif "lo" accept
//!     ct state established,related accept
//!     icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
//!     (the allow-list rules)
//!   }
//! }
//! ```
//!
//! In a namespace the jailer made, with an empty allow-list (the default profile), the three
//! `ct state` rules are left out: nothing but loopback and neighbour discovery is accepted,
//! so no connection can be established and they could never match (loopback has its own
//! rules, neighbour discovery is not tracked). Without them the namespace has no connection
//! tracking at all: no conntrack state for the guest to fill, and no conntrack set-up in the
//! jail's start (on a host with no other firewall, also four netfilter hooks' static keys
//! fewer to switch on: each is a patch of the kernel's code that interrupts every CPU). A
//! joined namespace keeps them: the orchestrator's connections there may predate the table.
//!
//! In a namespace the jailer just made, the tables are simply added. In a joined one, each
//! is replaced in the transaction: created if missing, deleted, created afresh. Only then
//! does the socket's release wait for nf_tables' deferred clean-up (of the deleted table):
//! a transaction that only adds leaves nothing to clean up.

use std::net::IpAddr;

use jailer::nftables::batch::{HOOK_FORWARD, HOOK_INPUT, HOOK_OUTPUT};
use jailer::nftables::{Batch, CmpOp, Family, Hook, KeyType, MetaKey, Rule, Socket, Verdict, L3};

use super::{tap_filter, NetworkError};
use crate::args::{EgressAllow, Proto, Tap};

/// The loopback interface's index: `lo` is the first interface of every namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// `ct state` bits (IP_CT_ESTABLISHED, IP_CT_RELATED as nf_conntrack's state mask).
const CT_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
/// IP protocol numbers.
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
/// ICMPv6 types.
pub const ND_ROUTER_SOLICIT: u8 = 133;
pub const ND_ROUTER_ADVERT: u8 = 134;
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
pub const ND_REDIRECT: u8 = 137;
pub const MLD_LISTENER_REPORT: u8 = 131;
pub const MLD2_LISTENER_REPORT: u8 = 143;

/// Sequence number of the first message of a batch (any will do: one batch per socket).
const FIRST_SEQ: u32 = 1;

/// Name of the jail's nftables table.
pub fn table_name(id: &str) -> String {
    format!("kiln-{id}")
}

/// An address's family, bytes and offset of the destination in its header.
pub fn addr_parts(addr: &IpAddr) -> (L3, Vec<u8>) {
    match addr {
        IpAddr::V4(a) => (L3::Ip4, a.octets().to_vec()),
        IpAddr::V6(a) => (L3::Ip6, a.octets().to_vec()),
    }
}

/// Offset of the source and the destination address in an IPv4 / IPv6 header.
pub fn saddr_offset(l3: L3) -> u32 {
    if l3 == L3::Ip6 {
        8
    } else {
        12
    }
}

fn daddr_offset(l3: L3) -> u32 {
    if l3 == L3::Ip6 {
        24
    } else {
        16
    }
}

/// The match of one allow-list entry (also used by the tap filters): `ip daddr CIDR`
/// then the protocol (`meta l4proto P`, or `tcp/udp dport { PORTS }`).
pub fn allow_rule(family: Family, a: &EgressAllow) -> Rule {
    let mut rule = Rule::new(family);
    let (l3, addr) = addr_parts(&a.addr);
    rule.prefix(CmpOp::Eq, l3, daddr_offset(l3), &addr, a.prefix);
    let proto = match a.proto {
        Proto::Tcp => Some(TCP),
        Proto::Udp => Some(UDP),
        Proto::Icmp if l3 == L3::Ip6 => Some(ICMPV6),
        Proto::Icmp => Some(ICMP),
        Proto::Any => None,
    };
    match proto {
        Some(p @ (TCP | UDP)) if !a.ports.is_empty() => {
            let ports = a.ports.iter().map(|p| p.to_be_bytes().to_vec()).collect();
            // dport: bytes 2-3 of both headers.
            rule.transport(l3, p, 2, 2)
                .one_of(CmpOp::Eq, KeyType::InetService, ports);
        }
        Some(p) => {
            rule.l4proto(p);
        }
        None => {}
    }
    rule.verdict(Verdict::Accept);
    rule
}

/// `icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept` (inet).
fn neighbour_discovery() -> Rule {
    let mut rule = Rule::new(Family::Inet);
    rule.transport(L3::Ip6, ICMPV6, 0, 1)
        .one_of(
            CmpOp::Eq,
            KeyType::Icmpv6Type,
            vec![vec![ND_NEIGHBOR_SOLICIT], vec![ND_NEIGHBOR_ADVERT]],
        )
        .verdict(Verdict::Accept);
    rule
}

fn established() -> Rule {
    let mut rule = Rule::new(Family::Inet);
    rule.ct_state_any(CT_ESTABLISHED_RELATED)
        .verdict(Verdict::Accept);
    rule
}

fn loopback(key: MetaKey) -> Rule {
    let mut rule = Rule::new(Family::Inet);
    rule.meta_eq(key, LOOPBACK_IFINDEX.to_ne_bytes().to_vec())
        .verdict(Verdict::Accept);
    rule
}

/// Adds `family <table>` to `batch`; when `replace`, any of that name is deleted first.
pub fn add_table(batch: &mut Batch, family: Family, table: &str, replace: bool) {
    if replace {
        batch.add_table(family, table);
        batch.delete_table(family, table);
    }
    batch.add_table(family, table);
}

/// Adds the table `inet <table>` (replacing any of that name when `replace`) to `batch`.
pub fn ruleset(batch: &mut Batch, table: &str, allow: &[EgressAllow], replace: bool) {
    let inet = Family::Inet;
    add_table(batch, inet, table, replace);
    let chains = [
        ("input", HOOK_INPUT),
        ("forward", HOOK_FORWARD),
        ("output", HOOK_OUTPUT),
    ];
    for (name, num) in chains {
        let hook = Hook {
            num,
            priority: 0,
            device: None,
        };
        batch.add_chain(inet, table, name, Some(&hook));
    }
    // A joined namespace is the orchestrator's: connections it tracked before the load keep
    // their replies whatever the allow-list.
    let tracked = !allow.is_empty() || replace;
    batch.add_rule(inet, table, "input", loopback(MetaKey::Iif));
    if tracked {
        batch.add_rule(inet, table, "input", established());
    }
    batch.add_rule(inet, table, "input", neighbour_discovery());
    if tracked {
        batch.add_rule(inet, table, "forward", established());
    }
    for a in allow {
        batch.add_rule(inet, table, "forward", allow_rule(inet, a));
    }
    batch.add_rule(inet, table, "output", loopback(MetaKey::Oif));
    if tracked {
        batch.add_rule(inet, table, "output", established());
    }
    batch.add_rule(inet, table, "output", neighbour_discovery());
    for a in allow {
        batch.add_rule(inet, table, "output", allow_rule(inet, a));
    }
}

/// Sends `batch` on a new socket, which is returned open: closing it waits for nf_tables'
/// deferred clean-up, which the caller keeps off its critical path.
fn apply(batch: Batch) -> Result<Socket, NetworkError> {
    let socket = Socket::open()?;
    socket.apply(&batch.finish())?;
    Ok(socket)
}

/// What [`load`] loads.
pub struct Tables<'a> {
    pub name: &'a str,
    /// The egress firewall (`inet`).
    pub firewall: bool,
    /// The taps whose guest filters to load (`netdev`, when there are any).
    pub taps: &'a [Tap],
    pub allow: &'a [EgressAllow],
    /// Replace tables of the same names (a namespace the jailer did not just create).
    pub replace: bool,
}

/// Loads the tables in one transaction in the calling thread's namespace. Returns the
/// netlink socket, still open (`None`: nothing to load).
pub fn load(tables: &Tables) -> Result<Option<Socket>, NetworkError> {
    let Tables {
        name: table,
        firewall,
        taps,
        allow,
        replace,
    } = *tables;
    if !firewall && taps.is_empty() {
        return Ok(None);
    }
    let mut batch = Batch::new(FIRST_SEQ);
    if firewall {
        ruleset(&mut batch, table, allow, replace);
    }
    if !taps.is_empty() {
        tap_filter::ruleset(&mut batch, table, taps, allow, replace);
    }
    apply(batch).map(Some)
}

/// Deletes the tables of these families (created first, so that deleting a table that is
/// not there is no error).
pub fn delete(table: &str, families: &[Family]) -> Result<(), NetworkError> {
    let mut batch = Batch::new(FIRST_SEQ);
    for family in families {
        batch.add_table(*family, table);
        batch.delete_table(*family, table);
    }
    apply(batch).map(drop)
}
