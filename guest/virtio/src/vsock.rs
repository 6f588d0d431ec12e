//! The virtio-vsock packet header (`struct virtio_vsock_hdr`, virtio 1.2 section 5.10.6) and
//! the values of its fields drivers use. Every packet starts with it; the host is CID 2, the
//! guest's CID is in the device's configuration space (offset 0, 64 bits).

/// Size of the packet header.
pub const HDR_LEN: usize = 44;
/// The host's CID.
pub const HOST_CID: u64 = 2;

/// `type` of a stream socket.
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// `flags` of a SHUTDOWN: neither side sends any more.
pub const SHUTDOWN_BOTH: u32 = 3;
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, the event queue's one event.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// The packet header, as on the wire (little endian, packed): a driver may read or write it
/// in place with `read_unaligned`/`write_unaligned`, or through [`Hdr::from_bytes`] and
/// [`Hdr::to_bytes`].
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    /// Bytes of payload after the header.
    pub len: u32,
    /// `type` ([`TYPE_STREAM`]).
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    /// The sender's receive space (credit).
    pub buf_alloc: u32,
    /// Payload bytes the sender has consumed (credit).
    pub fwd_cnt: u32,
}

const _: () = assert!(core::mem::size_of::<Hdr>() == HDR_LEN);

impl Hdr {
    /// The header's bytes on the wire.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&{ self.src_cid }.to_le_bytes());
        b[8..16].copy_from_slice(&{ self.dst_cid }.to_le_bytes());
        b[16..20].copy_from_slice(&{ self.src_port }.to_le_bytes());
        b[20..24].copy_from_slice(&{ self.dst_port }.to_le_bytes());
        b[24..28].copy_from_slice(&{ self.len }.to_le_bytes());
        b[28..30].copy_from_slice(&{ self.kind }.to_le_bytes());
        b[30..32].copy_from_slice(&{ self.op }.to_le_bytes());
        b[32..36].copy_from_slice(&{ self.flags }.to_le_bytes());
        b[36..40].copy_from_slice(&{ self.buf_alloc }.to_le_bytes());
        b[40..44].copy_from_slice(&{ self.fwd_cnt }.to_le_bytes());
        b
    }

    /// The header whose bytes on the wire are `b`.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Hdr {
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | u64::from(u32_at(at + 4)) << 32;
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}
