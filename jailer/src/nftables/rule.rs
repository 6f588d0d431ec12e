//! Building a rule's expressions the way `nft` builds them from its text, so that
//! `nft list ruleset` shows the jail's rules exactly as written in the module comments:
//! each match loads a field, then compares it; a field of a header implies a check of the
//! header's protocol, added once per rule (`meta nfproto` in an `inet` table, `meta
//! protocol` or `meta iiftype` in a `netdev` one, `meta l4proto` before a transport field).

use super::expr::{Base, CmpOp, Expr, MetaKey, Verdict};
use super::{Family, KeyType};

/// A network-layer protocol a rule matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    Ip4,
    Ip6,
    Arp,
}

impl L3 {
    fn nfproto(self) -> u8 {
        match self {
            // NFPROTO_IPV4, NFPROTO_IPV6.
            L3::Ip4 | L3::Arp => 2,
            L3::Ip6 => 10,
        }
    }

    fn ethertype(self) -> u16 {
        match self {
            L3::Ip4 => 0x0800,
            L3::Ip6 => 0x86dd,
            L3::Arp => 0x0806,
        }
    }
}

/// A constant anonymous set a rule looks up (made in the same batch, before the rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnonSet {
    pub key: KeyType,
    pub elements: Vec<Vec<u8>>,
    /// The rule's expression that looks it up (its set id is filled in by the batch).
    pub lookup: usize,
}

/// One rule under construction.
#[derive(Debug, Clone)]
pub struct Rule {
    family: Family,
    pub(super) exprs: Vec<Expr>,
    pub(super) sets: Vec<AnonSet>,
    link: bool,
    network: Option<L3>,
    l4: Option<u8>,
}

impl Rule {
    pub fn new(family: Family) -> Rule {
        Rule {
            family,
            exprs: Vec::new(),
            sets: Vec::new(),
            link: false,
            network: None,
            l4: None,
        }
    }

    pub fn exprs(&self) -> &[Expr] {
        &self.exprs
    }

    fn push(&mut self, e: Expr) -> &mut Rule {
        self.exprs.push(e);
        self
    }

    fn eq(&mut self, data: Vec<u8>) -> &mut Rule {
        self.push(Expr::Cmp {
            op: CmpOp::Eq,
            data,
        })
    }

    /// The dependency of a link-layer field: an Ethernet device (`netdev` only).
    fn link(&mut self) {
        if self.family == Family::Netdev && !self.link {
            self.link = true;
            self.push(Expr::Meta(MetaKey::IifType));
            self.eq((libc::ARPHRD_ETHER).to_ne_bytes().to_vec());
        }
    }

    /// The dependency of a network-layer field.
    fn network(&mut self, l3: L3) {
        if self.network == Some(l3) {
            return;
        }
        self.network = Some(l3);
        match self.family {
            Family::Inet => {
                self.push(Expr::Meta(MetaKey::NfProto));
                self.eq(vec![l3.nfproto()]);
            }
            Family::Netdev => {
                self.push(Expr::Meta(MetaKey::Protocol));
                self.eq(l3.ethertype().to_be_bytes().to_vec());
            }
        }
    }

    /// `meta l4proto P`.
    pub fn l4proto(&mut self, proto: u8) -> &mut Rule {
        self.l4 = Some(proto);
        self.push(Expr::Meta(MetaKey::L4Proto));
        self.eq(vec![proto])
    }

    /// Loads an Ethernet header field.
    pub fn ether(&mut self, offset: u32, len: u32) -> &mut Rule {
        self.link();
        self.push(Expr::Payload {
            base: Base::Link,
            offset,
            len,
        })
    }

    /// Loads a field of the network header `l3`.
    pub fn header(&mut self, l3: L3, offset: u32, len: u32) -> &mut Rule {
        self.network(l3);
        self.push(Expr::Payload {
            base: Base::Network,
            offset,
            len,
        })
    }

    /// Loads a field of the transport header of protocol `proto` over `l3`.
    pub fn transport(&mut self, l3: L3, proto: u8, offset: u32, len: u32) -> &mut Rule {
        self.network(l3);
        if self.l4 != Some(proto) {
            self.l4proto(proto);
        }
        self.raw_transport(offset, len)
    }

    /// Loads transport-header bytes with no protocol check (`@th,BITS,LEN`).
    pub fn raw_transport(&mut self, offset: u32, len: u32) -> &mut Rule {
        self.push(Expr::Payload {
            base: Base::Transport,
            offset,
            len,
        })
    }

    /// Compares the loaded field.
    pub fn cmp(&mut self, op: CmpOp, data: Vec<u8>) -> &mut Rule {
        self.push(Expr::Cmp { op, data })
    }

    /// `reg & mask`.
    pub fn mask(&mut self, mask: Vec<u8>) -> &mut Rule {
        let xor = vec![0; mask.len()];
        self.push(Expr::Bitwise { mask, xor })
    }

    /// `meta KEY == value` (an interface index).
    pub fn meta_eq(&mut self, key: MetaKey, value: Vec<u8>) -> &mut Rule {
        self.push(Expr::Meta(key));
        self.eq(value)
    }

    /// `ct state` has one of `bits`.
    pub fn ct_state_any(&mut self, bits: u32) -> &mut Rule {
        self.push(Expr::CtState);
        self.mask(bits.to_ne_bytes().to_vec());
        self.cmp(CmpOp::Neq, vec![0; 4])
    }

    /// An address field of `l3` in (`Eq`) or out of (`Neq`) `addr`/`prefix`, loaded and
    /// compared as `nft` does: the prefix's bytes when it ends on a byte, else the whole
    /// address masked. `addr` has no bits set beyond the prefix.
    pub fn prefix(&mut self, op: CmpOp, l3: L3, offset: u32, addr: &[u8], prefix: u8) -> &mut Rule {
        let len = addr.len();
        let bits = usize::from(prefix).min(len * 8);
        if bits == len * 8 || (bits > 0 && bits % 8 == 0) {
            let bytes = bits / 8;
            self.header(l3, offset, u32::try_from(bytes).unwrap_or(0));
            return self.cmp(op, addr[..bytes].to_vec());
        }
        self.header(l3, offset, u32::try_from(len).unwrap_or(0));
        let mask: Vec<u8> = (0..len)
            .map(|i| {
                // The top `on` bits of the byte (none when the shift is 8).
                let on = u32::try_from(bits.saturating_sub(i * 8).min(8)).unwrap_or(8);
                !0xff_u8.checked_shr(on).unwrap_or(0)
            })
            .collect();
        let masked = addr.iter().zip(&mask).map(|(a, m)| a & m).collect();
        self.mask(mask);
        self.cmp(op, masked)
    }

    /// The loaded field is (`Eq`) or is not (`Neq`) one of `elements`: a compare for one,
    /// an anonymous set for more.
    pub fn one_of(&mut self, op: CmpOp, key: KeyType, mut elements: Vec<Vec<u8>>) -> &mut Rule {
        if elements.len() == 1 {
            let data = elements.remove(0);
            return self.cmp(op, data);
        }
        self.sets.push(AnonSet {
            key,
            elements,
            lookup: self.exprs.len(),
        });
        self.push(Expr::Lookup {
            set: super::ANON_SET_NAME.to_owned(),
            id: None,
            inverted: op == CmpOp::Neq,
        })
    }

    /// The loaded field is (not, when `inverted`) in the named set.
    pub fn lookup(&mut self, set: &str, inverted: bool) -> &mut Rule {
        self.push(Expr::Lookup {
            set: set.to_owned(),
            id: None,
            inverted,
        })
    }

    /// Adds the loaded field to the named dynamic set.
    pub fn add_to(&mut self, set: &str) -> &mut Rule {
        self.push(Expr::DynsetAdd {
            set: set.to_owned(),
            id: None,
        })
    }

    /// Counts in the named counter.
    pub fn counter(&mut self, name: &str) -> &mut Rule {
        self.push(Expr::Counter(name.to_owned()))
    }

    /// `limit rate over RATE/second burst BURST packets`.
    pub fn limit_over(&mut self, rate: u64, burst: u32) -> &mut Rule {
        self.push(Expr::LimitOver { rate, burst })
    }

    pub fn verdict(&mut self, v: Verdict) -> &mut Rule {
        self.push(Expr::Verdict(v))
    }
}
