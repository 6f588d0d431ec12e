//! nf_tables expressions (linux/netfilter/nf_tables.h): the instructions of a rule, each
//! encoded as `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... } }`. Only what the
//! jail's rulesets use: load (meta, ct, payload), compare, mask, set lookup and update,
//! named counter, rate limit, verdict. Every load writes register 1 (the 16-byte register
//! `nft` uses), every compare and lookup reads it.

use super::wire::Writer;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// `NFT_REG_VERDICT` and `NFT_REG_1`.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;

/// What `meta` loads (`enum nft_meta_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// The link-layer protocol (EtherType, network order).
    Protocol = 1,
    Iif = 4,
    Oif = 5,
    /// The input interface's hardware type (ARPHRD_*).
    IifType = 8,
    /// The netfilter family of an `inet` packet (NFPROTO_IPV4/IPV6).
    NfProto = 15,
    /// The transport protocol (after IPv6 extension headers).
    L4Proto = 16,
}

/// Where a payload offset counts from (`enum nft_payload_bases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Link = 0,
    Network = 1,
    Transport = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// The end of a rule (`NF_DROP`, `NF_ACCEPT`, `NFT_JUMP`, `NFT_GOTO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Accept,
    Jump(String),
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
        }
    }
}

/// One expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta(MetaKey),
    /// `ct state` (the conntrack state bits, host order).
    CtState,
    Payload {
        base: Base,
        offset: u32,
        len: u32,
    },
    Cmp {
        op: CmpOp,
        data: Vec<u8>,
    },
    /// `reg = (reg & mask) ^ xor`.
    Bitwise {
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Is the register in the set (`inverted`: not in it)? `id` names a set made in the
    /// same batch (anonymous sets are known by it only).
    Lookup {
        set: String,
        id: Option<u32>,
        inverted: bool,
    },
    /// Adds the register to a dynamic set (`id`: made in the same batch).
    DynsetAdd {
        set: String,
        id: Option<u32>,
    },
    /// Counts the packet in a named counter object.
    Counter(String),
    /// Matches while the rate is over `rate` packets a second (bursts of `burst`).
    LimitOver {
        rate: u64,
        burst: u32,
    },
    Verdict(Verdict),
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Meta(_) => "meta",
            Expr::CtState => "ct",
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::DynsetAdd { .. } => "dynset",
            Expr::Counter(_) => "objref",
            Expr::LimitOver { .. } => "limit",
            Expr::Verdict(_) => "immediate",
        }
    }

    /// Appends the expression as one element of a rule's expression list.
    pub fn encode(&self, w: &mut Writer) {
        let elem = w.nest(NFTA_LIST_ELEM);
        w.str(NFTA_EXPR_NAME, self.name());
        let data = w.nest(NFTA_EXPR_DATA);
        self.encode_data(w);
        w.end_nest(data);
        w.end_nest(elem);
    }

    fn encode_data(&self, w: &mut Writer) {
        match self {
            Expr::Meta(key) => {
                w.u32(2, *key as u32); // NFTA_META_KEY
                w.u32(1, REG_1); // NFTA_META_DREG
            }
            Expr::CtState => {
                w.u32(2, 0); // NFTA_CT_KEY: NFT_CT_STATE
                w.u32(1, REG_1); // NFTA_CT_DREG
            }
            Expr::Payload { base, offset, len } => {
                w.u32(1, REG_1); // NFTA_PAYLOAD_DREG
                w.u32(2, *base as u32); // NFTA_PAYLOAD_BASE
                w.u32(3, *offset); // NFTA_PAYLOAD_OFFSET
                w.u32(4, *len); // NFTA_PAYLOAD_LEN
            }
            Expr::Cmp { op, data } => {
                w.u32(1, REG_1); // NFTA_CMP_SREG
                w.u32(2, *op as u32); // NFTA_CMP_OP
                value(w, 3, data); // NFTA_CMP_DATA
            }
            Expr::Bitwise { mask, xor } => {
                w.u32(1, REG_1); // NFTA_BITWISE_SREG
                w.u32(2, REG_1); // NFTA_BITWISE_DREG
                w.u32(3, u32::try_from(mask.len()).unwrap_or(u32::MAX)); // NFTA_BITWISE_LEN
                value(w, 4, mask); // NFTA_BITWISE_MASK
                value(w, 5, xor); // NFTA_BITWISE_XOR
            }
            Expr::Lookup { set, id, inverted } => {
                w.u32(2, REG_1); // NFTA_LOOKUP_SREG
                w.str(1, set); // NFTA_LOOKUP_SET
                if let Some(id) = id {
                    w.u32(4, *id); // NFTA_LOOKUP_SET_ID
                }
                if *inverted {
                    w.u32(5, 1); // NFTA_LOOKUP_FLAGS: NFT_LOOKUP_F_INV
                }
            }
            Expr::DynsetAdd { set, id } => {
                w.u32(4, REG_1); // NFTA_DYNSET_SREG_KEY
                w.u32(3, 0); // NFTA_DYNSET_OP: NFT_DYNSET_OP_ADD
                w.str(1, set); // NFTA_DYNSET_SET_NAME
                if let Some(id) = id {
                    w.u32(2, *id); // NFTA_DYNSET_SET_ID
                }
            }
            Expr::Counter(name) => {
                w.u32(1, 1); // NFTA_OBJREF_IMM_TYPE: NFT_OBJECT_COUNTER
                             // NFTA_OBJREF_IMM_NAME, without the NUL (as libnftnl sends it; the kernel takes
                             // a string attribute either way).
                w.bytes(2, name.as_bytes());
            }
            Expr::LimitOver { rate, burst } => {
                w.u64(1, *rate); // NFTA_LIMIT_RATE
                w.u64(2, 1); // NFTA_LIMIT_UNIT: a second
                w.u32(3, *burst); // NFTA_LIMIT_BURST
                w.u32(4, 0); // NFTA_LIMIT_TYPE: NFT_LIMIT_PKTS
                w.u32(5, 1); // NFTA_LIMIT_FLAGS: NFT_LIMIT_F_INV ("over")
            }
            Expr::Verdict(v) => {
                w.u32(1, REG_VERDICT); // NFTA_IMMEDIATE_DREG
                let data = w.nest(2); // NFTA_IMMEDIATE_DATA
                let verdict = w.nest(NFTA_DATA_VERDICT);
                w.u32(
                    NFTA_VERDICT_CODE,
                    u32::from_ne_bytes(v.code().to_ne_bytes()),
                );
                if let Verdict::Jump(chain) | Verdict::Goto(chain) = v {
                    w.str(NFTA_VERDICT_CHAIN, chain);
                }
                w.end_nest(verdict);
                w.end_nest(data);
            }
        }
    }
}

/// `kind { NFTA_DATA_VALUE data }`.
pub fn value(w: &mut Writer, kind: u16, data: &[u8]) {
    let nest = w.nest(kind);
    w.bytes(NFTA_DATA_VALUE, data);
    w.end_nest(nest);
}
