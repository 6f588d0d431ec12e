//! A virtio-pmem request, parsed from a validated descriptor chain (virtio 1.3, 5.19.6):
//! one device-readable buffer of exactly 4 bytes holding the request type (only
//! [`REQ_TYPE_FLUSH`] exists), then a device-writable buffer of exactly 4 bytes for the
//! status. Anything else is refused, as Firecracker refuses it; further writable buffers
//! are ignored.

use crate::devices::virtio::queue::{Buffer, Chain};
use vm_memory::{Bytes, GuestMemoryMmap};

/// `VIRTIO_PMEM_REQ_TYPE_FLUSH`.
pub const REQ_TYPE_FLUSH: u32 = 0;
/// The status of a flush that made the file durable.
pub const STATUS_OK: u32 = 0;
/// The status of a flush that failed (-1, as Firecracker answers; Linux reports EIO).
pub const STATUS_FAILED: u32 = u32::MAX;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the chain has {0} device-readable buffers; a request has exactly one")]
    ReadableCount(usize),
    #[error("the request buffer has {0} bytes instead of 4")]
    RequestLen(u32),
    #[error("the request buffer cannot be read")]
    RequestRead,
    #[error("unknown request type {0}")]
    UnknownType(u32),
    #[error("the chain has no device-writable status buffer")]
    NoStatus,
    #[error("the status buffer has {0} bytes instead of 4")]
    StatusLen(u32),
}

/// Checks `chain` and returns the status buffer of its flush request.
pub fn parse(chain: &Chain, mem: &GuestMemoryMmap) -> Result<Buffer, RequestError> {
    let [request] = chain.readable.as_slice() else {
        return Err(RequestError::ReadableCount(chain.readable.len()));
    };
    if request.len != 4 {
        return Err(RequestError::RequestLen(request.len));
    }
    let kind = u32::from_le(
        mem.read_obj::<u32>(request.addr)
            .map_err(|_| RequestError::RequestRead)?,
    );
    if kind != REQ_TYPE_FLUSH {
        return Err(RequestError::UnknownType(kind));
    }
    let status = *chain.writable.first().ok_or(RequestError::NoStatus)?;
    if status.len != 4 {
        return Err(RequestError::StatusLen(status.len));
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn buf(addr: u64, len: u32) -> Buffer {
        Buffer {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn only_a_well_formed_flush_is_a_request() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_obj(0u32, GuestAddress(0x100)).unwrap();
        mem.write_obj(7u32, GuestAddress(0x200)).unwrap();
        let chain = |readable: Vec<Buffer>, writable: Vec<Buffer>| Chain {
            head: 0,
            readable,
            writable,
        };
        let ok = chain(vec![buf(0x100, 4)], vec![buf(0x300, 4), buf(0x400, 8)]);
        assert_eq!(parse(&ok, &mem), Ok(buf(0x300, 4)));
        let cases = [
            (
                chain(vec![], vec![buf(0x300, 4)]),
                RequestError::ReadableCount(0),
            ),
            (
                chain(vec![buf(0x100, 4), buf(0x100, 4)], vec![buf(0x300, 4)]),
                RequestError::ReadableCount(2),
            ),
            (
                chain(vec![buf(0x100, 3)], vec![buf(0x300, 4)]),
                RequestError::RequestLen(3),
            ),
            (
                chain(vec![buf(0x200, 4)], vec![buf(0x300, 4)]),
                RequestError::UnknownType(7),
            ),
            (chain(vec![buf(0x100, 4)], vec![]), RequestError::NoStatus),
            (
                chain(vec![buf(0x100, 4)], vec![buf(0x300, 5)]),
                RequestError::StatusLen(5),
            ),
        ];
        for (c, want) in cases {
            assert_eq!(parse(&c, &mem), Err(want));
        }
    }
}
