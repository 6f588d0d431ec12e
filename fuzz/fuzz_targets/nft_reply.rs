//! The kernel's answers to the jailer's nftables batch (`jailer::nftables::reply::parse`):
//! a run of netlink messages, of which the acknowledgements are read. Input from the kernel,
//! parsed before the jail exists.
//!
//! Input: the bytes of one `recv`.
//!
//! Besides "Ok or a typed error, never a panic": no more acknowledgements than 20-byte
//! messages fit in the input; parsing is deterministic; and a well-formed buffer (accepted,
//! a multiple of 4 bytes long) followed by one more acknowledgement reads as its own
//! acknowledgements followed by that one.
#![no_main]

use jailer::nftables::reply::{parse, Ack};
use libfuzzer_sys::fuzz_target;

fn ack(seq: u32, error: i32) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&36u32.to_ne_bytes());
    m.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&error.to_ne_bytes());
    m.extend_from_slice(&[0; 16]);
    m
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let parsed = parse(data);
    kiln_fuzz::debug(|| format!("{parsed:?}"));
    assert_eq!(parsed, parse(data), "not deterministic");
    let Ok(acks) = parsed else {
        return;
    };
    assert!(
        acks.len() <= data.len() / 20,
        "{} acks from {} bytes",
        acks.len(),
        data.len()
    );
    if data.len().is_multiple_of(4) {
        let mut more = data.to_vec();
        more.extend(ack(7, -1));
        let mut want = acks;
        want.push(Ack { seq: 7, error: -1 });
        assert_eq!(
            parse(&more),
            Ok(want),
            "an acknowledgement appended was misread"
        );
    }
});
