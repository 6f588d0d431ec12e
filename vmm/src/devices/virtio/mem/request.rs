//! virtio-mem requests and responses (virtio 1.2, 5.15.6): their wire layout, and the
//! checks a requested range must pass before the device looks at its blocks.
//!
//! A request is 24 bytes: `le16 type`, 6 bytes of padding, then for PLUG, UNPLUG and STATE
//! `le64 addr`, `le16 nb_blocks` and 6 bytes of padding (UNPLUG_ALL ignores them). A
//! response is 10 bytes: `le16 type`, 6 bytes of padding, `le16 state` (STATE's answer;
//! zero otherwise). Everything here is a pure function of its arguments, so the fuzz
//! target drives it directly.

/// Bytes of a request (`struct virtio_mem_req`).
pub const REQUEST_SIZE: usize = 24;
/// Bytes of a response (`struct virtio_mem_resp`).
pub const RESPONSE_SIZE: usize = 10;

const REQ_PLUG: u16 = 0;
const REQ_UNPLUG: u16 = 1;
const REQ_UNPLUG_ALL: u16 = 2;
const REQ_STATE: u16 = 3;

/// A range of blocks as the driver gives it: the guest-physical address of its first block
/// and how many blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    pub addr: u64,
    pub nb_blocks: u16,
}

/// One decoded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Plug(BlockRange),
    Unplug(BlockRange),
    UnplugAll,
    State(BlockRange),
}

/// Why 24 bytes are not a request.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("unknown request type {0}")]
    UnknownType(u16),
}

impl Request {
    pub fn decode(bytes: &[u8; REQUEST_SIZE]) -> Result<Request, RequestError> {
        let kind = u16::from_le_bytes([bytes[0], bytes[1]]);
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&bytes[8..16]);
        let range = BlockRange {
            addr: u64::from_le_bytes(addr),
            nb_blocks: u16::from_le_bytes([bytes[16], bytes[17]]),
        };
        match kind {
            REQ_PLUG => Ok(Request::Plug(range)),
            REQ_UNPLUG => Ok(Request::Unplug(range)),
            REQ_UNPLUG_ALL => Ok(Request::UnplugAll),
            REQ_STATE => Ok(Request::State(range)),
            other => Err(RequestError::UnknownType(other)),
        }
    }

    /// The request's bytes (the tests' and the fuzz target's drivers).
    pub fn encode(&self) -> [u8; REQUEST_SIZE] {
        let (kind, range) = match *self {
            Request::Plug(r) => (REQ_PLUG, Some(r)),
            Request::Unplug(r) => (REQ_UNPLUG, Some(r)),
            Request::UnplugAll => (REQ_UNPLUG_ALL, None),
            Request::State(r) => (REQ_STATE, Some(r)),
        };
        let mut out = [0u8; REQUEST_SIZE];
        out[..2].copy_from_slice(&kind.to_le_bytes());
        if let Some(r) = range {
            out[8..16].copy_from_slice(&r.addr.to_le_bytes());
            out[16..18].copy_from_slice(&r.nb_blocks.to_le_bytes());
        }
        out
    }
}

/// The state of a range of blocks (STATE's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    Plugged = 0,
    Unplugged = 1,
    Mixed = 2,
}

/// The device's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    Ack,
    /// The request is valid but refused now (PLUG past `requested_size`).
    Nack,
    /// The request is valid but the device cannot serve it now (KVM refused a slot).
    Busy,
    /// The request is invalid (a bad range, a block in the wrong state).
    Error,
    /// ACK with the state of the range (STATE).
    State(BlockState),
}

impl Response {
    pub fn encode(self) -> [u8; RESPONSE_SIZE] {
        let (kind, state): (u16, u16) = match self {
            Response::Ack => (0, 0),
            Response::Nack => (1, 0),
            Response::Busy => (2, 0),
            Response::Error => (3, 0),
            Response::State(s) => (0, s as u16),
        };
        let mut out = [0u8; RESPONSE_SIZE];
        out[..2].copy_from_slice(&kind.to_le_bytes());
        out[8..].copy_from_slice(&state.to_le_bytes());
        out
    }
}

/// Why a requested range is invalid (answered `VIRTIO_MEM_RESP_ERROR`).
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("no blocks")]
    Empty,
    #[error("address {addr:#x} is not aligned to the block size ({block:#x})")]
    Unaligned { addr: u64, block: u64 },
    #[error(
        "{addr:#x} + {nb_blocks} blocks is not inside the usable region [{start:#x}, {end:#x})"
    )]
    Outside {
        addr: u64,
        nb_blocks: u16,
        start: u64,
        end: u64,
    },
}

/// Where the device's region is and which part of it the driver may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Guest-physical start of the region.
    pub addr: u64,
    /// Block size (a power of two).
    pub block: u64,
    /// Bytes from `addr` the driver may plug (`usable_region_size`).
    pub usable: u64,
}

impl Geometry {
    /// The blocks `range` names, as `(first block index, count)`, when every one of them is
    /// inside the usable region and the address is block-aligned.
    pub fn blocks(&self, range: BlockRange) -> Result<(u64, u64), RangeError> {
        if range.nb_blocks == 0 {
            return Err(RangeError::Empty);
        }
        if !range.addr.is_multiple_of(self.block) {
            return Err(RangeError::Unaligned {
                addr: range.addr,
                block: self.block,
            });
        }
        let outside = RangeError::Outside {
            addr: range.addr,
            nb_blocks: range.nb_blocks,
            start: self.addr,
            end: self.addr.saturating_add(self.usable),
        };
        let offset = range.addr.checked_sub(self.addr).ok_or(outside)?;
        let len = u64::from(range.nb_blocks)
            .checked_mul(self.block)
            .ok_or(outside)?;
        match offset.checked_add(len) {
            Some(end) if end <= self.usable => {
                Ok((offset / self.block, u64::from(range.nb_blocks)))
            }
            _ => Err(outside),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_types_are_refused() {
        let r = BlockRange {
            addr: 0x80_0000_0000,
            nb_blocks: 3,
        };
        for req in [
            Request::Plug(r),
            Request::Unplug(r),
            Request::State(r),
            Request::UnplugAll,
        ] {
            assert_eq!(Request::decode(&req.encode()), Ok(req));
        }
        let mut bad = Request::Plug(r).encode();
        bad[0] = 4;
        assert_eq!(Request::decode(&bad), Err(RequestError::UnknownType(4)));
        bad[0..2].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(
            Request::decode(&bad),
            Err(RequestError::UnknownType(0xffff))
        );
    }

    #[test]
    fn responses_have_the_specs_layout() {
        assert_eq!(Response::Ack.encode(), [0; 10]);
        assert_eq!(Response::Nack.encode()[..2], [1, 0]);
        assert_eq!(Response::Busy.encode()[..2], [2, 0]);
        assert_eq!(Response::Error.encode()[..2], [3, 0]);
        let s = Response::State(BlockState::Mixed).encode();
        assert_eq!((s[0], s[8], s[9]), (0, 2, 0));
        assert_eq!(Response::State(BlockState::Unplugged).encode()[8], 1);
    }

    #[test]
    fn ranges_must_be_aligned_non_empty_and_usable() {
        let g = Geometry {
            addr: 1 << 39,
            block: 2 << 20,
            usable: 128 << 20,
        };
        let at = |off: u64, n: u16| BlockRange {
            addr: (1 << 39) + off,
            nb_blocks: n,
        };
        assert_eq!(g.blocks(at(0, 1)), Ok((0, 1)));
        assert_eq!(g.blocks(at(4 << 20, 62)), Ok((2, 62)));
        assert_eq!(g.blocks(at(0, 0)), Err(RangeError::Empty));
        assert!(matches!(
            g.blocks(at(4096, 1)),
            Err(RangeError::Unaligned { .. })
        ));
        assert!(matches!(
            g.blocks(at(126 << 20, 2)),
            Err(RangeError::Outside { .. })
        ));
        assert!(matches!(
            g.blocks(BlockRange {
                addr: (1 << 39) - (2 << 20),
                nb_blocks: 1
            }),
            Err(RangeError::Outside { .. })
        ));
        // No overflow at the top of the address space.
        assert!(g
            .blocks(BlockRange {
                addr: u64::MAX - (2 << 20) + 1,
                nb_blocks: u16::MAX
            })
            .is_err());
        let none = Geometry { usable: 0, ..g };
        assert!(none.blocks(at(0, 1)).is_err());
    }
}
