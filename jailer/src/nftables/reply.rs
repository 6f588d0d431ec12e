//! Decoding the kernel's replies to a batch: a run of netlink messages, of which the jailer
//! reads the acknowledgements (`NLMSG_ERROR`: error 0 for success, a negative errno for a
//! failure) and skips the rest. This is input from the kernel, so it is parsed defensively:
//! every length is checked against the buffer, and a malformed buffer is a typed error,
//! never a panic (fuzzed: `fuzz/fuzz_targets/nft_reply.rs`).

/// `NLMSG_ERROR`: an acknowledgement, or an error.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a multi-part reply.
const NLMSG_DONE: u16 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("netlink reply at byte {offset}: header cut short ({left} bytes left)")]
    ShortHeader { offset: usize, left: usize },
    #[error("netlink reply at byte {offset}: message length {len} outside 16..={left}")]
    BadLength {
        offset: usize,
        len: usize,
        left: usize,
    },
    #[error(
        "netlink reply at byte {offset} (sequence {seq}): acknowledgement without its error code"
    )]
    ShortAck { offset: usize, seq: u32 },
}

/// One acknowledgement: the sequence number of the message it answers, and 0 or a negative
/// errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u32,
    pub error: i32,
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

/// The acknowledgements in `buf` (what one `recv` returned), in order.
pub fn parse(buf: &[u8]) -> Result<Vec<Ack>, ReplyError> {
    let mut acks = Vec::new();
    let mut offset = 0;
    while offset < buf.len() {
        let left = buf.len() - offset;
        let header = (|| {
            Some((
                u32_at(buf, offset)?,
                u16_at(buf, offset + 4)?,
                u32_at(buf, offset + 8)?,
            ))
        })();
        let Some((len, kind, seq)) = header.filter(|_| left >= 16) else {
            return Err(ReplyError::ShortHeader { offset, left });
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if !(16..=left).contains(&len) {
            return Err(ReplyError::BadLength { offset, len, left });
        }
        match kind {
            NLMSG_ERROR => {
                let error = u32_at(&buf[..offset + len], offset + 16)
                    .ok_or(ReplyError::ShortAck { offset, seq })?;
                acks.push(Ack {
                    seq,
                    error: i32::from_ne_bytes(error.to_ne_bytes()),
                });
            }
            NLMSG_DONE => {}
            // Anything else (a notification) is not an answer to the batch.
            _ => {}
        }
        // Messages are 4-byte aligned; the last one may end without padding.
        offset = offset.saturating_add((len + 3) & !3).min(buf.len());
    }
    Ok(acks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&u32::try_from(16 + payload.len()).unwrap().to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn ack(seq: u32, error: i32) -> Vec<u8> {
        let mut p = error.to_ne_bytes().to_vec();
        // The request's header, as the kernel echoes it.
        p.extend_from_slice(&[0; 16]);
        msg(NLMSG_ERROR, seq, &p)
    }

    #[test]
    fn acks_and_errors_in_order_other_messages_skipped() {
        let mut buf = ack(1, 0);
        buf.extend(msg(0x0a10, 9, &[1, 2, 3, 4]));
        buf.extend(ack(2, -libc::ENOENT));
        assert_eq!(
            parse(&buf).unwrap(),
            vec![
                Ack { seq: 1, error: 0 },
                Ack {
                    seq: 2,
                    error: -libc::ENOENT
                }
            ]
        );
        assert_eq!(parse(&[]).unwrap(), vec![]);
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert_eq!(
            parse(&[1, 2, 3]),
            Err(ReplyError::ShortHeader { offset: 0, left: 3 })
        );
        let mut long = ack(1, 0);
        long[0] = 200;
        assert!(matches!(parse(&long), Err(ReplyError::BadLength { .. })));
        let short = msg(NLMSG_ERROR, 5, &[0, 0]);
        assert_eq!(
            parse(&short),
            Err(ReplyError::ShortAck { offset: 0, seq: 5 })
        );
    }
}
