//! nftables over netlink, from the jailer itself: the jail's firewall is one nf_tables
//! transaction sent on a `NETLINK_NETFILTER` socket, with no `nft` process (whose start-up
//! and socket release were most of the cost of a jail). A small encoder of our own rather
//! than a crate, none of which earns its place: `rustables` 0.8 (pure Rust) is GPL-3.0,
//! generates its bindings with bindgen at build time and brings seven more crates;
//! `nftnl`/`mnl` bind the C libraries libnftnl and libmnl; `nftables` drives the `nft`
//! binary through its JSON API (the process this replaces). Each would still need the rules
//! spelled out expression by expression, which is most of the work; the encoder itself is a
//! few hundred lines with no `unsafe` beyond the socket's calls.
//!
//! * [`wire`]: netlink messages and attributes;
//! * [`expr`]: the expressions of a rule; [`rule`]: a rule built as `nft` builds it from its
//!   text (the same expressions, so `nft list ruleset` reads the jail's rules back as text);
//! * [`batch`]: the transaction (tables, chains, sets, counters, rules), each message
//!   described, so that a refusal names its object, the last one acknowledged;
//! * [`reply`]: decoding the kernel's acknowledgements (input from the kernel: fuzzed);
//! * [`socket`]: sending a batch and reading the kernel's answers.

pub mod batch;
pub mod expr;
pub mod reply;
pub mod rule;
pub mod socket;
pub mod wire;

pub use batch::{Batch, Hook};
pub use expr::{CmpOp, MetaKey, Verdict};
pub use rule::{Rule, L3};
pub use socket::{NftError, Socket};

/// The name `nft` gives anonymous sets (the kernel numbers them in place of `%d`).
pub const ANON_SET_NAME: &str = "__set%d";

/// A table's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet,
    Netdev,
}

impl Family {
    /// `NFPROTO_INET`, `NFPROTO_NETDEV`.
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Netdev => 5,
        }
    }
}

/// The key of a set: its `nft` data type (which `nft list` shows it as) and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    EtherAddr,
    /// A port.
    InetService,
    Icmpv6Type,
    /// Raw bytes of the transport header (`@th,BITS,LEN`): `len` bytes at `offset`.
    RawTransport {
        offset: u32,
        len: u32,
    },
}

impl KeyType {
    /// nftables' datatype number (`enum datatypes` in nftables' datatype.h).
    pub fn datatype(self) -> u32 {
        match self {
            KeyType::RawTransport { .. } => 4,
            KeyType::Ipv4Addr => 7,
            KeyType::Ipv6Addr => 8,
            KeyType::EtherAddr => 9,
            KeyType::InetService => 13,
            KeyType::Icmpv6Type => 29,
        }
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> u32 {
        match self {
            KeyType::RawTransport { len, .. } => len,
            KeyType::Ipv4Addr => 4,
            KeyType::Ipv6Addr => 16,
            KeyType::EtherAddr => 6,
            KeyType::InetService => 2,
            KeyType::Icmpv6Type => 1,
        }
    }
}

#[cfg(test)]
mod tests;
