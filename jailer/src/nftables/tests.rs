//! The encoder against `nft` itself: each batch below is built with this module's API and
//! compared, message by message, with what `nft --debug=mnl -f` sent for the same ruleset
//! (nftables 1.0.6, recorded with `ip netns exec NS nft --debug=mnl -f FILE`; the hex is each
//! message after its 16-byte header, i.e. `nfgenmsg` and attributes). The headers' flags and
//! sequence numbers are the batch's own (every message asks for an acknowledgement). The one
//! difference allowed: `nft` adds to an anonymous set's user data the expression its key came
//! from (read only by `nft list`, which shows the same without it: see
//! `jailer/src/network/tests.rs`); everything before that attribute is compared.

use super::batch::{HOOK_INGRESS, HOOK_OUTPUT};
use super::*;

/// `table inet t { chain o { type filter hook output priority 0; policy drop; ct state
/// established,related accept; ip daddr 10.16.0.0/12 tcp dport { 80, 443 } accept } }`
const NFT_INET: &[(u16, &str)] = &[
    (0x0a00, "0100000006000100740000000800020000000000"),
    (
        0x0a03,
        concat!(
            "010000000600010074000000060003006f0000000b00070066696c74657200000800050000000000",
            "1400048008000100000000030800020000000000",
        ),
    ),
    (
        0x0a06,
        concat!(
            "010000000600010074000000060002006f000000c400048020000180070001006374000014000280",
            "08000200000000000800010000000001440001800c00010062697477697365003400028008000100",
            "00000001080002000000000108000300000000040c00048008000100060000000c00058008000100",
            "000000002c00018008000100636d700020000280080001000000000108000200000000010c000380",
            "0800010000000000300001800e000100696d6d6564696174650000001c0002800800010000000000",
            "100002800c0002800800010000000001",
        ),
    ),
    (
        0x0a09,
        concat!(
            "0100000006000100740000000c0002005f5f7365742564000800030000000003080004000000000d",
            "080005000000000208000a00000000010c000980080001000000000220000d000004020000000314",
            "000407000000010c000408000000010402000000",
        ),
    ),
    (
        0x0a0c,
        concat!(
            "0100000006000100740000000c0002005f5f73657425640008000400000000012400038010000180",
            "0c0001800600010000500000100002800c0001800600010001bb0000",
        ),
    ),
    (
        0x0a06,
        concat!(
            "010000000600010074000000060002006f000000dc01048024000180090001006d65746100000000",
            "14000280080002000000000f08000100000000012c00018008000100636d70002000028008000100",
            "0000000108000200000000000c0003800500010002000000340001800c0001007061796c6f616400",
            "24000280080001000000000108000200000000010800030000000010080004000000000444000180",
            "0c000100626974776973650034000280080001000000000108000200000000010800030000000004",
            "0c00048008000100fff000000c00058008000100000000002c00018008000100636d700020000280",
            "080001000000000108000200000000000c000380080001000a10000024000180090001006d657461",
            "0000000014000280080002000000001008000100000000012c00018008000100636d700020000280",
            "080001000000000108000200000000000c0003800500010006000000340001800c0001007061796c",
            "6f616400240002800800010000000001080002000000000208000300000000020800040000000002",
            "300001800b0001006c6f6f6b757000002000028008000200000000010c0001005f5f736574256400",
            "0800040000000001300001800e000100696d6d6564696174650000001c0002800800010000000000",
            "100002800c0002800800010000000001",
        ),
    ),
];

/// `table netdev t { counter c {}; set s { type ipv6_addr; size 2; flags dynamic; }; chain x
/// {}; chain g { type filter hook ingress device "kt0" priority -500; policy drop; limit rate
/// over 20/second burst 40 packets counter name "c" drop; ip6 saddr fe80::/10 add @s { ip6
/// saddr }; ip6 saddr != @s counter name "c" drop; ether type arp jump x } }`
const NFT_NETDEV: &[(u16, &str)] = &[
    (0x0a00, "0500000006000100740000000800020000000000"),
    (0x0a03, "0500000006000100740000000600030078000000"),
    (
        0x0a03,
        concat!(
            "05000000060001007400000006000300670000000b00070066696c74657200000800050000000000",
            "1c000480080001000000000008000200fffffe0c080003006b743000",
        ),
    ),
    (
        0x0a12,
        concat!(
            "050000000600010074000000060002006300000008000300000000011c0004800c00010000000000",
            "000000000c0002000000000000000000",
        ),
    ),
    (
        0x0a09,
        concat!(
            "05000000060001007400000006000200730000000800030000000020080004000000000808000500",
            "0000001008000a00000000010c00098008000100000000020a000d000004020000000000",
        ),
    ),
    (
        0x0a06,
        concat!(
            "05000000060001007400000006000200670000009c000480440001800a0001006c696d6974000000",
            "340002800c00010000000000000000140c0002000000000000000001080003000000002808000400",
            "000000000800050000000001240001800b0001006f626a7265660000140002800800010000000001",
            "0500020063000000300001800e000100696d6d6564696174650000001c0002800800010000000000",
            "100002800c0002800800010000000000",
        ),
    ),
    (
        0x0a06,
        concat!(
            "05000000060001007400000006000200670000008401048024000180090001006d65746100000000",
            "14000280080002000000000108000100000000012c00018008000100636d70002000028008000100",
            "0000000108000200000000000c0003800600010086dd0000340001800c0001007061796c6f616400",
            "2400028008000100000000010800020000000001080003000000000808000400000000105c000180",
            "0c00010062697477697365004c000280080001000000000108000200000000010800030000000010",
            "1800048014000100ffc0000000000000000000000000000018000580140001000000000000000000",
            "00000000000000003800018008000100636d70002c00028008000100000000010800020000000000",
            "1800038014000100fe800000000000000000000000000000340001800c0001007061796c6f616400",
            "24000280080001000000000108000200000000010800030000000008080004000000001034000180",
            "0b00010064796e736574000024000280080004000000000108000300000000000600010073000000",
            "0800020000000001",
        ),
    ),
    (
        0x0a06,
        concat!(
            "05000000060001007400000006000200670000001001048024000180090001006d65746100000000",
            "14000280080002000000000108000100000000012c00018008000100636d70002000028008000100",
            "0000000108000200000000000c0003800600010086dd0000340001800c0001007061796c6f616400",
            "24000280080001000000000108000200000000010800030000000008080004000000001034000180",
            "0b0001006c6f6f6b7570000024000280080002000000000106000100730000000800040000000001",
            "0800050000000001240001800b0001006f626a726566000014000280080001000000000105000200",
            "63000000300001800e000100696d6d6564696174650000001c000280080001000000000010000280",
            "0c0002800800010000000000",
        ),
    ),
    (
        0x0a06,
        concat!(
            "0500000006000100740000000600020067000000ec00048024000180090001006d65746100000000",
            "14000280080002000000000808000100000000012c00018008000100636d70002000028008000100",
            "0000000108000200000000000c0003800600010001000000340001800c0001007061796c6f616400",
            "2400028008000100000000010800020000000000080003000000000c08000400000000022c000180",
            "08000100636d700020000280080001000000000108000200000000000c0003800600010008060000",
            "380001800e000100696d6d6564696174650000002400028008000100000000001800028014000280",
            "08000100fffffffd0600020078000000",
        ),
    ),
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The messages of a batch between BEGIN and END: (type, bytes after the header).
fn messages(bytes: &[u8]) -> Vec<(u16, bool, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(bytes[at + 4..at + 6].try_into().unwrap());
        let flags = u16::from_ne_bytes(bytes[at + 6..at + 8].try_into().unwrap());
        if kind >> 8 == 10 {
            // REQUEST, with CREATE (and APPEND for rules) on additions; ACK checked below.
            assert_eq!(flags & 0x1, 0x1, "message {kind:#x}: flags {flags:#x}");
            out.push((kind, flags & 0x4 != 0, bytes[at + 16..at + len].to_vec()));
        }
        at += (len + 3) & !3;
    }
    out
}

/// Where the attribute `kind` starts in a message body (after the 4-byte `nfgenmsg`).
fn attr_offset(body: &[u8], kind: u16) -> Option<usize> {
    let mut at = 4;
    while at + 4 <= body.len() {
        let len = u16::from_ne_bytes([body[at], body[at + 1]]) as usize;
        if u16::from_ne_bytes([body[at + 2], body[at + 3]]) & 0x3fff == kind {
            return Some(at);
        }
        at += (len + 3) & !3;
    }
    None
}

fn assert_as_nft(batch: Batch, nft: &[(u16, &str)]) {
    let ours = messages(&batch.finish().bytes);
    assert_eq!(ours.len(), nft.len(), "message count");
    // Only the last message asks for an acknowledgement.
    let acked: Vec<bool> = ours.iter().map(|m| m.1).collect();
    let mut want = vec![false; ours.len()];
    want[ours.len() - 1] = true;
    assert_eq!(acked, want, "NLM_F_ACK");
    for (i, ((kind, _, body), (nft_kind, nft_hex))) in ours.iter().zip(nft).enumerate() {
        let nft_body = unhex(nft_hex);
        assert_eq!(kind, nft_kind, "message {i}: type");
        let anonymous_set = *kind == 0x0a09 && body.windows(7).any(|w| w == b"__set%d");
        if anonymous_set {
            // Up to NFTA_SET_USERDATA, then the key's byte order alone.
            let at = attr_offset(&nft_body, 13).expect("nft's set has user data");
            assert_eq!(hex(&body[..at]), hex(&nft_body[..at]), "message {i} (set)");
            assert_eq!(
                hex(&body[at..]),
                "0a000d000004020000000000",
                "message {i} (set)"
            );
        } else {
            assert_eq!(hex(body), hex(&nft_body), "message {i} ({kind:#x})");
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn an_inet_table_is_encoded_as_nft_encodes_it() {
    let mut batch = Batch::new(1);
    batch.add_table(Family::Inet, "t");
    let hook = Hook {
        num: HOOK_OUTPUT,
        priority: 0,
        device: None,
    };
    batch.add_chain(Family::Inet, "t", "o", Some(&hook));
    let mut ct = Rule::new(Family::Inet);
    ct.ct_state_any(0x6).verdict(Verdict::Accept);
    batch.add_rule(Family::Inet, "t", "o", ct);
    let mut allow = Rule::new(Family::Inet);
    allow
        .prefix(CmpOp::Eq, L3::Ip4, 16, &[10, 16, 0, 0], 12)
        .transport(L3::Ip4, 6, 2, 2)
        .one_of(
            CmpOp::Eq,
            KeyType::InetService,
            vec![80u16.to_be_bytes().to_vec(), 443u16.to_be_bytes().to_vec()],
        )
        .verdict(Verdict::Accept);
    batch.add_rule(Family::Inet, "t", "o", allow);
    assert_as_nft(batch, NFT_INET);
}

#[test]
fn a_netdev_table_with_sets_counters_limits_and_jumps_is_encoded_as_nft_encodes_it() {
    let nd = Family::Netdev;
    let mut batch = Batch::new(1);
    batch.add_table(nd, "t");
    batch.add_chain(nd, "t", "x", None);
    let hook = Hook {
        num: HOOK_INGRESS,
        priority: -500,
        device: Some("kt0".into()),
    };
    batch.add_chain(nd, "t", "g", Some(&hook));
    batch.add_counter(nd, "t", "c");
    batch.add_set(nd, "t", "s", KeyType::Ipv6Addr, 2);
    let mut limit = Rule::new(nd);
    limit.limit_over(20, 40).counter("c").verdict(Verdict::Drop);
    batch.add_rule(nd, "t", "g", limit);
    let mut fe80 = [0u8; 16];
    fe80[..2].copy_from_slice(&[0xfe, 0x80]);
    let mut learn = Rule::new(nd);
    learn
        .prefix(CmpOp::Eq, L3::Ip6, 8, &fe80, 10)
        .header(L3::Ip6, 8, 16)
        .add_to("s");
    batch.add_rule(nd, "t", "g", learn);
    let mut unknown = Rule::new(nd);
    unknown
        .header(L3::Ip6, 8, 16)
        .lookup("s", true)
        .counter("c")
        .verdict(Verdict::Drop);
    batch.add_rule(nd, "t", "g", unknown);
    let mut arp = Rule::new(nd);
    arp.ether(12, 2)
        .cmp(CmpOp::Eq, vec![0x08, 0x06])
        .verdict(Verdict::Jump("x".into()));
    batch.add_rule(nd, "t", "g", arp);
    assert_as_nft(batch, NFT_NETDEV);
}

#[test]
fn each_message_is_described_by_its_sequence_number() {
    let mut batch = Batch::new(100);
    batch.add_table(Family::Inet, "t");
    batch.add_chain(Family::Inet, "t", "o", None);
    let mut r = Rule::new(Family::Inet);
    r.one_of(
        CmpOp::Eq,
        KeyType::InetService,
        vec![vec![0, 1], vec![0, 2]],
    )
    .verdict(Verdict::Accept);
    batch.add_rule(Family::Inet, "t", "o", r.clone());
    batch.add_rule(Family::Inet, "t", "o", r);
    let done = batch.finish();
    assert_eq!(done.last_seq(), Some(107));
    assert_eq!(Batch::new(1).finish().last_seq(), None);
    assert_eq!(done.object(100), Some("table inet t"));
    assert_eq!(done.object(101), Some("chain inet t o"));
    assert_eq!(done.object(102), Some("anonymous set 1 of inet t"));
    assert_eq!(
        done.object(103),
        Some("elements of anonymous set 1 of inet t")
    );
    assert_eq!(done.object(104), Some("rule 1 of chain inet t o"));
    assert_eq!(done.object(107), Some("rule 2 of chain inet t o"));
    assert_eq!(done.object(99), None);
    assert_eq!(done.object(108), None);
}
