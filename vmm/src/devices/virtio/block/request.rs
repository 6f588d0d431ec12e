//! virtio-blk requests: from a validated descriptor chain to a [`Request`], and the checks of
//! its sector range.
//!
//! A request is, in the device-readable stream, a 16-byte header (`type: u32`, reserved
//! `u32`, `sector: u64`, little endian) followed by the data of a write; and in the
//! device-writable stream, the data of a read (or the 20-byte ID) followed by one status
//! byte. Streams may be cut into descriptors any way the driver likes.

use crate::devices::virtio::queue::{read_stream, total_len, Chain};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::GuestMemoryMmap;

pub const SECTOR_SIZE: u64 = 512;
const HEADER_BYTES: usize = 16;
pub const HEADER_LEN: u64 = HEADER_BYTES as u64;
/// Length of a GET_ID answer.
pub const ID_LEN: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    /// Data bytes: after the header in the readable stream (`Out`), or before the status
    /// byte in the writable stream (`In`, `GetId`); 0 for the others.
    pub data_len: u64,
    /// Offset of the status byte in the writable stream (its last byte).
    pub status_offset: u64,
}

/// A chain that is not a request at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the chain has no device-writable byte for the status")]
    NoStatus,
    /// The status byte exists: the request is answered IOERR.
    #[error("the request header has {0} bytes, 16 are needed")]
    ShortHeader(u64),
}

/// Why a request's range was refused (answered IOERR).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("{0} data bytes are not a whole number of sectors")]
    Partial(u64),
    #[error("{len} data bytes exceed the {max}-byte request limit")]
    TooLarge { len: u64, max: u64 },
    #[error("sectors {sector}..+{count} are past the end of the disk ({capacity} sectors)")]
    PastEnd {
        sector: u64,
        count: u64,
        capacity: u64,
    },
}

/// Parses the request in `chain`.
pub fn parse(mem: &GuestMemoryMmap, chain: &Chain) -> Result<Request, RequestError> {
    let writable = total_len(&chain.writable);
    let status_offset = writable.checked_sub(1).ok_or(RequestError::NoStatus)?;
    let readable = total_len(&chain.readable);
    let mut header = [0u8; HEADER_BYTES];
    if readable < HEADER_LEN || read_stream(mem, &chain.readable, 0, &mut header) != header.len() {
        return Err(RequestError::ShortHeader(readable));
    }
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    let kind = RequestType::from(u32::from_le_bytes([t0, t1, t2, t3]));
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    let data_len = match kind {
        RequestType::Out => readable - HEADER_LEN,
        RequestType::In | RequestType::GetId => status_offset,
        RequestType::Flush | RequestType::Unsupported(_) => 0,
    };
    Ok(Request {
        kind,
        sector,
        data_len,
        status_offset,
    })
}

impl Request {
    /// Checks a read or write against the disk: whole sectors, at most `max` bytes, inside
    /// the first `capacity` sectors (checked arithmetic throughout). Returns the byte offset;
    /// the offset plus `data_len` (the end of the access in bytes) is then known not to
    /// overflow, whatever `capacity` is.
    pub fn check_range(&self, capacity: u64, max: u64) -> Result<u64, RangeError> {
        if !self.data_len.is_multiple_of(SECTOR_SIZE) {
            return Err(RangeError::Partial(self.data_len));
        }
        if self.data_len > max {
            return Err(RangeError::TooLarge {
                len: self.data_len,
                max,
            });
        }
        let count = self.data_len / SECTOR_SIZE;
        let past = RangeError::PastEnd {
            sector: self.sector,
            count,
            capacity,
        };
        let end = self.sector.checked_add(count).ok_or(past.clone())?;
        if end > capacity {
            return Err(past);
        }
        let offset = self.sector.checked_mul(SECTOR_SIZE).ok_or(past.clone())?;
        // The device adds the length to the offset: the end in bytes must exist too (it
        // does not for a disk of more than 2^55 sectors, which only a caller can claim).
        offset.checked_add(self.data_len).ok_or(past)?;
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::queue::tests::mem;
    use crate::devices::virtio::queue::Buffer;
    use vm_memory::{Bytes, GuestAddress};

    fn header(m: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn buf(addr: u64, len: u32) -> Buffer {
        Buffer {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn parses_the_usual_layout() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 7);
        let chain = Chain {
            head: 0,
            readable: vec![buf(0x1000, 16)],
            writable: vec![buf(0x2000, 1024), buf(0x3000, 1)],
        };
        let r = parse(&m, &chain).unwrap();
        assert_eq!(
            r,
            Request {
                kind: RequestType::In,
                sector: 7,
                data_len: 1024,
                status_offset: 1024
            }
        );
        assert_eq!(r.check_range(9, 1 << 20), Ok(7 * 512));
        assert!(matches!(
            r.check_range(8, 1 << 20),
            Err(RangeError::PastEnd { .. })
        ));
    }

    #[test]
    fn parses_any_layout() {
        let m = mem();
        // Header split over two descriptors, write data in the second one's tail.
        header(&m, 0x1000, VIRTIO_BLK_T_OUT, 1);
        m.write_slice(&[0u8; 8], GuestAddress(0x2000)).unwrap();
        m.write_slice(&1u64.to_le_bytes(), GuestAddress(0x2000))
            .unwrap();
        let chain = Chain {
            head: 0,
            readable: vec![buf(0x1000, 8), buf(0x2000, 8 + 512)],
            writable: vec![buf(0x3000, 1)],
        };
        let r = parse(&m, &chain).unwrap();
        assert_eq!(r.kind, RequestType::Out);
        assert_eq!(r.sector, 1);
        assert_eq!(r.data_len, 512);
        assert_eq!(r.status_offset, 0);
    }

    #[test]
    fn malformed_chains() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        let no_status = Chain {
            head: 0,
            readable: vec![buf(0x1000, 16)],
            writable: vec![],
        };
        assert_eq!(parse(&m, &no_status), Err(RequestError::NoStatus));
        let short = Chain {
            head: 0,
            readable: vec![buf(0x1000, 15)],
            writable: vec![buf(0x3000, 1)],
        };
        assert_eq!(parse(&m, &short), Err(RequestError::ShortHeader(15)));
        header(&m, 0x1000, 99, 0);
        let odd = Chain {
            head: 0,
            readable: vec![buf(0x1000, 16)],
            writable: vec![buf(0x3000, 1)],
        };
        assert_eq!(parse(&m, &odd).unwrap().kind, RequestType::Unsupported(99));
    }

    #[test]
    fn ranges_never_overflow() {
        let r = |sector, data_len| Request {
            kind: RequestType::In,
            sector,
            data_len,
            status_offset: data_len,
        };
        assert!(matches!(
            r(u64::MAX, 512).check_range(u64::MAX, 1 << 20),
            Err(RangeError::PastEnd { .. })
        ));
        assert!(matches!(
            r(u64::MAX / 512 + 1, 0).check_range(u64::MAX, 1 << 20),
            Err(RangeError::PastEnd { .. })
        ));
        assert_eq!(
            r(0, 100).check_range(10, 1 << 20),
            Err(RangeError::Partial(100))
        );
        assert!(matches!(
            r(0, 2 << 20).check_range(1 << 30, 1 << 20),
            Err(RangeError::TooLarge { .. })
        ));
        assert_eq!(r(10, 0).check_range(10, 1 << 20), Ok(5120));
        assert!(r(10, 512).check_range(10, 1 << 20).is_err());
        assert_eq!(r(9, 512).check_range(10, 1 << 20), Ok(9 * 512));
    }

    /// Found by the `virtio_queue` fuzz target: on a disk of `u64::MAX` sectors the last
    /// sector whose byte offset exists was accepted although its end in bytes overflows.
    #[test]
    fn the_end_in_bytes_never_overflows() {
        let r = |sector, data_len| Request {
            kind: RequestType::In,
            sector,
            data_len,
            status_offset: data_len,
        };
        let last = u64::MAX / SECTOR_SIZE;
        assert!(matches!(
            r(last, 512).check_range(u64::MAX, 1 << 20),
            Err(RangeError::PastEnd { .. })
        ));
        assert!(matches!(
            r(last - 1, 1024).check_range(u64::MAX, 1 << 20),
            Err(RangeError::PastEnd { .. })
        ));
        for capacity in [0, 1, 8, 1 << 40, u64::MAX] {
            for sector in [0, 1, last - 2, last - 1, last, u64::MAX] {
                for data_len in [0, 512, 1024, 1 << 20] {
                    if let Ok(at) = r(sector, data_len).check_range(capacity, 1 << 20) {
                        let end = at.checked_add(data_len).expect("the end exists");
                        assert!(end <= capacity.saturating_mul(SECTOR_SIZE));
                    }
                }
            }
        }
    }
}
