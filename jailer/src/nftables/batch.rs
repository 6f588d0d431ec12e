//! A transaction: `NFNL_MSG_BATCH_BEGIN`, the nf_tables messages (tables, chains, sets and
//! their elements, counters, rules), `NFNL_MSG_BATCH_END`. The kernel applies all of it or
//! nothing. The kernel answers every message it refuses, and the last message asks for an
//! acknowledgement (`NLM_F_ACK`): answered, the whole batch was read and applied. (One
//! acknowledgement per message would make thousands of answers for a jail with many taps,
//! more than a socket buffer holds.) The batch keeps a description of each message by
//! sequence number, so that a refusal names the object refused.

use std::collections::HashMap;

use super::expr::{self, Expr};
use super::rule::Rule;
use super::wire::{Mark, Writer, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};
use super::{Family, KeyType, ANON_SET_NAME};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_NEWOBJ: u16 = 18;

/// `NFT_SET_ANONYMOUS | NFT_SET_CONSTANT`, and `NFT_SET_EVAL` (updated from the packet
/// path).
const SET_ANON_CONSTANT: u32 = 0x1 | 0x2;
const SET_DYNAMIC: u32 = 0x20;

/// A base chain's hook (`NF_INET_*` / `NF_NETDEV_INGRESS`), priority and (netdev) device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub num: u32,
    pub priority: i32,
    pub device: Option<String>,
}

pub const HOOK_INPUT: u32 = 1;
pub const HOOK_FORWARD: u32 = 2;
pub const HOOK_OUTPUT: u32 = 3;
pub const HOOK_INGRESS: u32 = 0;

/// A TLV of libnftnl's user data (type, length, host-order value).
fn udata(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(value);
}

/// A set's user data, only read by `nft list`: the key's byte order (big endian,
/// NFTNL_UDATA_SET_KEYBYTEORDER), and for raw bytes what they are (`typeof @th,BITS,LEN`,
/// NFTNL_UDATA_SET_KEY_TYPEOF: a payload expression, base transport, offset and length in
/// bits), which `nft` shows the elements by (hexadecimal, not decimal).
fn set_udata(key: KeyType) -> Vec<u8> {
    let mut out = Vec::new();
    udata(&mut out, 0, &2u32.to_ne_bytes());
    if let KeyType::RawTransport { offset, len } = key {
        let mut payload = Vec::new();
        // Protocol description (none), field (none), base (transport), offset, length.
        for (kind, value) in [(0, 0), (1, 0), (2, 3), (3, offset * 8), (4, len * 8)] {
            udata(&mut payload, kind, &u32::to_ne_bytes(value));
        }
        let mut typeof_ = Vec::new();
        udata(&mut typeof_, 0, &7u32.to_ne_bytes()); // the payload expression
        udata(&mut typeof_, 1, &payload);
        udata(&mut out, 3, &typeof_);
    }
    out
}

/// The batch under construction.
#[derive(Debug)]
pub struct Batch {
    w: Writer,
    first_seq: u32,
    objects: Vec<String>,
    next_set_id: u32,
    /// Rules added so far per chain (to number them in errors).
    rules: HashMap<String, usize>,
    /// The ids of the named sets made in this batch (rules refer to them by name and id).
    named_sets: HashMap<String, u32>,
    /// The last message so far (the one that asks for an acknowledgement).
    last: Option<Mark>,
}

/// A finished batch: its bytes and what each message makes.
#[derive(Debug)]
pub struct Finished {
    pub bytes: Vec<u8>,
    first_seq: u32,
    objects: Vec<String>,
}

impl Finished {
    /// The sequence number of the last message, the one acknowledged (`None`: the batch is
    /// empty).
    pub fn last_seq(&self) -> Option<u32> {
        let n = u32::try_from(self.objects.len()).ok()?.checked_sub(1)?;
        Some(self.first_seq.wrapping_add(n))
    }

    /// The object the message `seq` made (`None`: not one of this batch's).
    pub fn object(&self, seq: u32) -> Option<&str> {
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.objects.get(i).map(String::as_str)
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Inet => "inet",
        Family::Netdev => "netdev",
    }
}

impl Batch {
    /// A batch whose messages are numbered from `first_seq`.
    pub fn new(first_seq: u32) -> Batch {
        let mut w = Writer::new();
        let begin = w.begin(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq.wrapping_sub(1),
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        w.end(begin);
        Batch {
            w,
            first_seq,
            objects: Vec::new(),
            next_set_id: 1,
            rules: HashMap::new(),
            named_sets: HashMap::new(),
            last: None,
        }
    }

    fn message(&mut self, kind: u16, flags: u16, family: Family, what: String) -> Mark {
        let seq = self
            .first_seq
            .wrapping_add(u32::try_from(self.objects.len()).unwrap_or(u32::MAX));
        self.objects.push(what);
        let mark = self.w.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | flags,
            seq,
            family.nfproto(),
            0,
        );
        self.last = Some(mark);
        mark
    }

    /// Creates the table (no error if it exists).
    pub fn add_table(&mut self, family: Family, name: &str) {
        let what = format!("table {} {name}", family_name(family));
        let m = self.message(NFT_MSG_NEWTABLE, NLM_F_CREATE, family, what);
        self.w.str(1, name); // NFTA_TABLE_NAME
        self.w.u32(2, 0); // NFTA_TABLE_FLAGS
        self.w.end(m);
    }

    /// Deletes the table with everything in it.
    pub fn delete_table(&mut self, family: Family, name: &str) {
        let what = format!("deleting table {} {name}", family_name(family));
        let m = self.message(NFT_MSG_DELTABLE, 0, family, what);
        self.w.str(1, name); // NFTA_TABLE_NAME
        self.w.end(m);
    }

    /// A chain; a base chain (with `hook`) has the policy drop.
    pub fn add_chain(&mut self, family: Family, table: &str, name: &str, hook: Option<&Hook>) {
        let what = format!("chain {} {table} {name}", family_name(family));
        let m = self.message(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family, what);
        self.w.str(1, table); // NFTA_CHAIN_TABLE
        self.w.str(3, name); // NFTA_CHAIN_NAME
        if let Some(hook) = hook {
            self.w.str(7, "filter"); // NFTA_CHAIN_TYPE
            self.w.u32(5, 0); // NFTA_CHAIN_POLICY: NF_DROP
            let h = self.w.nest(4); // NFTA_CHAIN_HOOK
            self.w.u32(1, hook.num); // NFTA_HOOK_HOOKNUM
            self.w
                .u32(2, u32::from_ne_bytes(hook.priority.to_ne_bytes())); // NFTA_HOOK_PRIORITY
            if let Some(dev) = &hook.device {
                self.w.str(3, dev); // NFTA_HOOK_DEV
            }
            self.w.end_nest(h);
        }
        self.w.end(m);
    }

    fn set(
        &mut self,
        family: Family,
        table: &str,
        name: &str,
        key: KeyType,
        flags: u32,
        size: u32,
    ) -> u32 {
        let id = self.next_set_id;
        self.next_set_id += 1;
        let what = match flags {
            SET_DYNAMIC => format!("set {} {table} {name}", family_name(family)),
            _ => format!("anonymous set {id} of {} {table}", family_name(family)),
        };
        let m = self.message(NFT_MSG_NEWSET, NLM_F_CREATE, family, what);
        self.w.str(1, table); // NFTA_SET_TABLE
        self.w.str(2, name); // NFTA_SET_NAME
        self.w.u32(3, flags); // NFTA_SET_FLAGS
        self.w.u32(4, key.datatype()); // NFTA_SET_KEY_TYPE
        self.w.u32(5, key.len()); // NFTA_SET_KEY_LEN
        self.w.u32(10, id); // NFTA_SET_ID
        let desc = self.w.nest(9); // NFTA_SET_DESC
        self.w.u32(1, size); // NFTA_SET_DESC_SIZE
        self.w.end_nest(desc);
        self.w.bytes(13, &set_udata(key)); // NFTA_SET_USERDATA

        self.w.end(m);
        id
    }

    /// A dynamic set of at most `size` keys (filled from the packet path).
    pub fn add_set(&mut self, family: Family, table: &str, name: &str, key: KeyType, size: u32) {
        let id = self.set(family, table, name, key, SET_DYNAMIC, size);
        let key = format!("{} {table} {name}", family_name(family));
        self.named_sets.insert(key, id);
    }

    /// A named packet counter.
    pub fn add_counter(&mut self, family: Family, table: &str, name: &str) {
        let what = format!("counter {} {table} {name}", family_name(family));
        let m = self.message(NFT_MSG_NEWOBJ, NLM_F_CREATE, family, what);
        self.w.str(1, table); // NFTA_OBJ_TABLE
        self.w.str(2, name); // NFTA_OBJ_NAME
        self.w.u32(3, 1); // NFTA_OBJ_TYPE: NFT_OBJECT_COUNTER
        let data = self.w.nest(4); // NFTA_OBJ_DATA
        self.w.u64(1, 0); // NFTA_COUNTER_BYTES
        self.w.u64(2, 0); // NFTA_COUNTER_PACKETS
        self.w.end_nest(data);
        self.w.end(m);
    }

    /// Appends `rule` to the chain, after the anonymous sets it looks up.
    pub fn add_rule(&mut self, family: Family, table: &str, chain: &str, mut rule: Rule) {
        for set in std::mem::take(&mut rule.sets) {
            let size = u32::try_from(set.elements.len()).unwrap_or(u32::MAX);
            let id = self.set(
                family,
                table,
                ANON_SET_NAME,
                set.key,
                SET_ANON_CONSTANT,
                size,
            );
            let what = format!(
                "elements of anonymous set {id} of {} {table}",
                family_name(family)
            );
            let m = self.message(NFT_MSG_NEWSETELEM, NLM_F_CREATE, family, what);
            self.w.str(1, table); // NFTA_SET_ELEM_LIST_TABLE
            self.w.str(2, ANON_SET_NAME); // NFTA_SET_ELEM_LIST_SET
            self.w.u32(4, id); // NFTA_SET_ELEM_LIST_SET_ID
            let list = self.w.nest(3); // NFTA_SET_ELEM_LIST_ELEMENTS
            for (i, e) in set.elements.iter().enumerate() {
                // Numbered from 1, as libnftnl numbers them (the kernel reads any type).
                let elem = self.w.nest(u16::try_from(i + 1).unwrap_or(u16::MAX));
                expr::value(&mut self.w, 1, e); // NFTA_SET_ELEM_KEY
                self.w.end_nest(elem);
            }
            self.w.end_nest(list);
            self.w.end(m);
            if let Some(Expr::Lookup { id: slot, .. }) = rule.exprs.get_mut(set.lookup) {
                *slot = Some(id);
            }
        }
        for e in &mut rule.exprs {
            if let Expr::Lookup { set, id, .. } | Expr::DynsetAdd { set, id } = e {
                if id.is_none() {
                    let key = format!("{} {table} {set}", family_name(family));
                    *id = self.named_sets.get(&key).copied();
                }
            }
        }
        let what = format!("chain {} {table} {chain}", family_name(family));
        let n = self.rules.entry(what.clone()).or_default();
        *n += 1;
        let what = format!("rule {n} of {what}");
        let m = self.message(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family, what);
        self.w.str(1, table); // NFTA_RULE_TABLE
        self.w.str(2, chain); // NFTA_RULE_CHAIN
        let list = self.w.nest(4); // NFTA_RULE_EXPRESSIONS
        for e in &rule.exprs {
            e.encode(&mut self.w);
        }
        self.w.end_nest(list);
        self.w.end(m);
    }

    pub fn finish(mut self) -> Finished {
        if let Some(last) = self.last {
            self.w.add_flags(last, NLM_F_ACK);
        }
        let seq = self
            .first_seq
            .wrapping_add(u32::try_from(self.objects.len()).unwrap_or(u32::MAX));
        let end = self.w.begin(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        self.w.end(end);
        Finished {
            bytes: self.w.into_bytes(),
            first_seq: self.first_seq,
            objects: self.objects,
        }
    }
}
