//! virtio-vsock packet headers (virtio 1.2, 5.10.6): `struct virtio_vsock_hdr`, 44 bytes,
//! little endian, packed:
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | `src_cid` u64 | |
//! | 8 | `dst_cid` u64 | |
//! | 16 | `src_port` u32 | |
//! | 20 | `dst_port` u32 | |
//! | 24 | `len` u32 | payload bytes after the header |
//! | 28 | `type` u16 | 1 = STREAM (the only type offered) |
//! | 30 | `op` u16 | REQUEST 1, RESPONSE 2, RST 3, SHUTDOWN 4, RW 5, CREDIT_UPDATE 6, CREDIT_REQUEST 7 |
//! | 32 | `flags` u32 | SHUTDOWN: bit 0 receive, bit 1 send |
//! | 36 | `buf_alloc` u32 | the sender's receive buffer for this connection |
//! | 40 | `fwd_cnt` u32 | bytes the sender has consumed from it |
//!
//! [`check_tx`] is the whole validation of a packet the guest transmits, a pure function of
//! the header's bytes, how many payload bytes the descriptor chain holds after it, and the
//! guest's CID (a fuzz target). What it decides:
//!
//! - fewer than 44 bytes, `src_cid` other than the guest's CID, `dst_cid` other than the host
//!   (2): dropped and counted, nothing is answered (there is no one to answer);
//! - an RST is accepted whatever else it says (an RST is never answered with one);
//! - a type other than STREAM, an unknown op, `len` over [`MAX_PAYLOAD`] or over what the chain
//!   holds: answered with an RST to the packet's ports (which also ends that connection).

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload of one packet, either way (Firecracker's limit, 64 KiB).
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// SHUTDOWN flags: the sender will receive nothing more / send nothing more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// `virtio_vsock_op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    pub fn from_raw(op: u16) -> Option<Op> {
        Some(match op {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A decoded header (any values; [`check_tx`] says whether they make sense).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl Header {
    /// Decodes the first 44 bytes of `b`; `None` when there are fewer.
    pub fn from_bytes(b: &[u8]) -> Option<Header> {
        Some(Header {
            src_cid: le_u64(b, 0)?,
            dst_cid: le_u64(b, 8)?,
            src_port: le_u32(b, 16)?,
            dst_port: le_u32(b, 20)?,
            len: le_u32(b, 24)?,
            type_: le_u16(b, 28)?,
            op: le_u16(b, 30)?,
            flags: le_u32(b, 32)?,
            buf_alloc: le_u32(b, 36)?,
            fwd_cnt: le_u32(b, 40)?,
        })
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        let fields: [(usize, &[u8]); 10] = [
            (0, &self.src_cid.to_le_bytes()),
            (8, &self.dst_cid.to_le_bytes()),
            (16, &self.src_port.to_le_bytes()),
            (20, &self.dst_port.to_le_bytes()),
            (24, &self.len.to_le_bytes()),
            (28, &self.type_.to_le_bytes()),
            (30, &self.op.to_le_bytes()),
            (32, &self.flags.to_le_bytes()),
            (36, &self.buf_alloc.to_le_bytes()),
            (40, &self.fwd_cnt.to_le_bytes()),
        ];
        for (at, bytes) in fields {
            if let Some(dst) = b.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }
        b
    }
}

/// What is wrong with a packet from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("the chain holds {got} bytes, fewer than the {HDR_LEN}-byte header")]
    ShortHeader { got: u64 },
    #[error("src_cid {got} is not the guest's CID {want}")]
    WrongSrcCid { got: u64, want: u64 },
    #[error("dst_cid {got} is not the host's CID {HOST_CID}")]
    WrongDstCid { got: u64 },
    #[error("type {0} is not STREAM ({TYPE_STREAM})")]
    NotStream(u16),
    #[error("op {0} is not a vsock operation")]
    UnknownOp(u16),
    #[error("len {len} is over the {MAX_PAYLOAD}-byte payload limit")]
    TooLong { len: u32 },
    #[error("len {len} is more than the {available} bytes the chain holds after the header")]
    Truncated { len: u32, available: u64 },
}

/// A guest packet that may be acted on: `hdr.len` payload bytes follow the header in the
/// chain (at most [`MAX_PAYLOAD`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxPacket {
    pub hdr: Header,
    pub op: Op,
}

/// The decision on one guest packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept(TxPacket),
    /// Dropped without an answer (counted).
    Drop(PacketError),
    /// Answered with an RST from `hdr.dst_port` to `hdr.src_port` (counted).
    Reset {
        hdr: Header,
        error: PacketError,
    },
}

/// Validates a packet the guest transmitted: `header` is what the chain's readable bytes
/// start with (fewer than 44 if it holds fewer), `payload_available` how many readable bytes
/// follow the header, `guest_cid` the device's configured CID.
pub fn check_tx(header: &[u8], payload_available: u64, guest_cid: u64) -> Verdict {
    let Some(hdr) = Header::from_bytes(header) else {
        return Verdict::Drop(PacketError::ShortHeader {
            got: header.len() as u64,
        });
    };
    if hdr.src_cid != guest_cid {
        return Verdict::Drop(PacketError::WrongSrcCid {
            got: hdr.src_cid,
            want: guest_cid,
        });
    }
    if hdr.dst_cid != HOST_CID {
        return Verdict::Drop(PacketError::WrongDstCid { got: hdr.dst_cid });
    }
    let reset = |error| Verdict::Reset { hdr, error };
    let op = Op::from_raw(hdr.op);
    if op == Some(Op::Rst) {
        // Whatever else it says, it ends the connection; never answered.
        return Verdict::Accept(TxPacket { hdr, op: Op::Rst });
    }
    if hdr.type_ != TYPE_STREAM {
        return reset(PacketError::NotStream(hdr.type_));
    }
    let Some(op) = op else {
        return reset(PacketError::UnknownOp(hdr.op));
    };
    if hdr.len > MAX_PAYLOAD {
        return reset(PacketError::TooLong { len: hdr.len });
    }
    if u64::from(hdr.len) > payload_available {
        return reset(PacketError::Truncated {
            len: hdr.len,
            available: payload_available,
        });
    }
    Verdict::Accept(TxPacket { hdr, op })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: u64 = 3;

    fn hdr(op: u16, len: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1025,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn header_round_trips_little_endian() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xaabb_ccdd,
            dst_port: 1,
            len: 5,
            type_: 1,
            op: 5,
            flags: 3,
            buf_alloc: 0x1_0000,
            fwd_cnt: 0xffff_ffff,
        };
        let b = h.to_bytes();
        assert_eq!(&b[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[16..20], &[0xdd, 0xcc, 0xbb, 0xaa]);
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(Header::from_bytes(&b), Some(h));
        assert_eq!(Header::from_bytes(&b[..43]), None);
        // Extra bytes after the header are not part of it.
        let mut longer = b.to_vec();
        longer.extend_from_slice(b"payload");
        assert_eq!(Header::from_bytes(&longer), Some(h));
    }

    #[test]
    fn validation_table() {
        let bytes = |h: Header| h.to_bytes();
        let cases: Vec<(Vec<u8>, u64, Verdict)> = vec![
            // Good packets.
            (
                bytes(hdr(1, 0)).to_vec(),
                0,
                Verdict::Accept(TxPacket {
                    hdr: hdr(1, 0),
                    op: Op::Request,
                }),
            ),
            (
                bytes(hdr(5, 10)).to_vec(),
                10,
                Verdict::Accept(TxPacket {
                    hdr: hdr(5, 10),
                    op: Op::Rw,
                }),
            ),
            (
                bytes(hdr(5, MAX_PAYLOAD)).to_vec(),
                u64::from(MAX_PAYLOAD) + 100,
                Verdict::Accept(TxPacket {
                    hdr: hdr(5, MAX_PAYLOAD),
                    op: Op::Rw,
                }),
            ),
            // Too short to read: dropped.
            (
                vec![0u8; 10],
                0,
                Verdict::Drop(PacketError::ShortHeader { got: 10 }),
            ),
            (
                vec![],
                0,
                Verdict::Drop(PacketError::ShortHeader { got: 0 }),
            ),
            // Wrong CIDs: dropped, even an RST.
            (
                bytes(Header {
                    src_cid: 4,
                    ..hdr(1, 0)
                })
                .to_vec(),
                0,
                Verdict::Drop(PacketError::WrongSrcCid { got: 4, want: CID }),
            ),
            (
                bytes(Header {
                    dst_cid: 3,
                    ..hdr(3, 0)
                })
                .to_vec(),
                0,
                Verdict::Drop(PacketError::WrongDstCid { got: 3 }),
            ),
            (
                bytes(Header {
                    dst_cid: u64::MAX,
                    ..hdr(5, 0)
                })
                .to_vec(),
                0,
                Verdict::Drop(PacketError::WrongDstCid { got: u64::MAX }),
            ),
            // Answered with RST.
            (
                bytes(Header {
                    type_: 2,
                    ..hdr(1, 0)
                })
                .to_vec(),
                0,
                Verdict::Reset {
                    hdr: Header {
                        type_: 2,
                        ..hdr(1, 0)
                    },
                    error: PacketError::NotStream(2),
                },
            ),
            (
                bytes(hdr(0, 0)).to_vec(),
                0,
                Verdict::Reset {
                    hdr: hdr(0, 0),
                    error: PacketError::UnknownOp(0),
                },
            ),
            (
                bytes(hdr(99, 0)).to_vec(),
                0,
                Verdict::Reset {
                    hdr: hdr(99, 0),
                    error: PacketError::UnknownOp(99),
                },
            ),
            (
                bytes(hdr(5, MAX_PAYLOAD + 1)).to_vec(),
                u64::MAX,
                Verdict::Reset {
                    hdr: hdr(5, MAX_PAYLOAD + 1),
                    error: PacketError::TooLong {
                        len: MAX_PAYLOAD + 1,
                    },
                },
            ),
            (
                bytes(hdr(5, u32::MAX)).to_vec(),
                0,
                Verdict::Reset {
                    hdr: hdr(5, u32::MAX),
                    error: PacketError::TooLong { len: u32::MAX },
                },
            ),
            (
                bytes(hdr(5, 4096)).to_vec(),
                16,
                Verdict::Reset {
                    hdr: hdr(5, 4096),
                    error: PacketError::Truncated {
                        len: 4096,
                        available: 16,
                    },
                },
            ),
            // A control packet that claims a payload it does not carry.
            (
                bytes(hdr(6, 1)).to_vec(),
                0,
                Verdict::Reset {
                    hdr: hdr(6, 1),
                    error: PacketError::Truncated {
                        len: 1,
                        available: 0,
                    },
                },
            ),
            // An RST is accepted whatever its type, length or flags say.
            (
                bytes(Header {
                    type_: 9,
                    len: u32::MAX,
                    ..hdr(3, 0)
                })
                .to_vec(),
                0,
                Verdict::Accept(TxPacket {
                    hdr: Header {
                        type_: 9,
                        len: u32::MAX,
                        ..hdr(3, 0)
                    },
                    op: Op::Rst,
                }),
            ),
        ];
        for (i, (bytes, avail, want)) in cases.into_iter().enumerate() {
            assert_eq!(check_tx(&bytes, avail, CID), want, "case {i}");
        }
    }

    #[test]
    fn every_short_prefix_is_dropped_and_nothing_panics() {
        let full = hdr(5, 3).to_bytes();
        for n in 0..HDR_LEN {
            assert!(matches!(
                check_tx(&full[..n], 100, CID),
                Verdict::Drop(PacketError::ShortHeader { .. })
            ));
        }
        // A cheap exhaustive sweep over one byte at every offset.
        for at in 0..HDR_LEN {
            for v in [0u8, 1, 2, 3, 0x7f, 0x80, 0xff] {
                let mut b = full;
                b[at] = v;
                let _ = check_tx(&b, 3, CID);
                let _ = check_tx(&b, 0, CID);
                let _ = check_tx(&b, u64::MAX, CID);
            }
        }
    }

    #[test]
    fn ops_decode() {
        for (raw, op) in [
            (1, Op::Request),
            (2, Op::Response),
            (3, Op::Rst),
            (4, Op::Shutdown),
            (5, Op::Rw),
            (6, Op::CreditUpdate),
            (7, Op::CreditRequest),
        ] {
            assert_eq!(Op::from_raw(raw), Some(op));
            assert_eq!(op as u16, raw);
        }
        assert_eq!(Op::from_raw(0), None);
        assert_eq!(Op::from_raw(8), None);
    }
}
