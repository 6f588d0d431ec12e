//! Netlink encoding: messages (`nlmsghdr` + `nfgenmsg`) and their attributes (`nlattr`,
//! nested ones flagged `NLA_F_NESTED`), appended to one buffer that becomes the batch.
//!
//! Layout (linux/netlink.h, linux/netfilter/nfnetlink.h): a message is a 16-byte header
//! (length, type, flags, sequence, port id, all in host order) and a 4-byte `nfgenmsg`
//! (family, version 0, resource id in network order), then attributes; an attribute is a
//! 4-byte header (length without padding, type) and its payload, padded to 4 bytes.
//! nf_tables' integers are in network order, hence [`Writer::u32`] and [`Writer::u64`].

/// `NLA_F_NESTED`: the attribute holds attributes.
const NESTED: u16 = 0x8000;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

/// Bytes of a netlink message header, and of the `nfgenmsg` after it.
pub const NLMSG_HDRLEN: usize = 16;
pub const NFGENMSG_LEN: usize = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A growing buffer of netlink messages.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

/// Where an open message or nested attribute starts (its length is written when it ends).
#[derive(Debug, Clone, Copy)]
#[must_use = "a message or nest is closed with Writer::end or Writer::end_nest"]
pub struct Mark(usize);

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Starts a message: header and `nfgenmsg`; its length is set by [`Writer::end`].
    pub fn begin(&mut self, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Mark {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        Mark(start)
    }

    /// Ends the message started at `mark`.
    pub fn end(&mut self, mark: Mark) {
        let len = u32::try_from(self.buf.len() - mark.0).unwrap_or(u32::MAX);
        self.buf[mark.0..mark.0 + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Adds `flags` to the header of the message started at `mark`.
    pub fn add_flags(&mut self, mark: Mark, flags: u16) {
        let at = mark.0 + 6;
        let old = u16::from_ne_bytes([self.buf[at], self.buf[at + 1]]);
        self.buf[at..at + 2].copy_from_slice(&(old | flags).to_ne_bytes());
    }

    /// An attribute holding `data` (a payload longer than an attribute can say is cut to
    /// the length the header can hold: the kernel then rejects the message, never misreads
    /// it; nothing the jailer writes comes near 64 KiB).
    pub fn bytes(&mut self, kind: u16, data: &[u8]) {
        let data = &data[..data.len().min(usize::from(u16::MAX) - 4)];
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// A NUL-terminated string attribute.
    pub fn str(&mut self, kind: u16, s: &str) {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.bytes(kind, &data);
    }

    /// A 32-bit integer in network order.
    pub fn u32(&mut self, kind: u16, v: u32) {
        self.bytes(kind, &v.to_be_bytes());
    }

    /// A 64-bit integer in network order.
    pub fn u64(&mut self, kind: u16, v: u64) {
        self.bytes(kind, &v.to_be_bytes());
    }

    /// Starts a nested attribute; closed by [`Writer::end_nest`].
    pub fn nest(&mut self, kind: u16) -> Mark {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(kind | NESTED).to_ne_bytes());
        Mark(start)
    }

    pub fn end_nest(&mut self, mark: Mark) {
        let len = u16::try_from(self.buf.len() - mark.0).unwrap_or(u16::MAX);
        self.buf[mark.0..mark.0 + 2].copy_from_slice(&len.to_ne_bytes());
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_measured() {
        let mut w = Writer::new();
        let m = w.begin(0x0a00, NLM_F_REQUEST, 7, 1, 0);
        w.str(1, "t");
        let n = w.nest(4);
        w.u32(1, 3);
        w.end_nest(n);
        w.end(m);
        let b = w.into_bytes();
        assert_eq!(b.len(), 16 + 4 + 8 + 12);
        assert_eq!(&b[0..4], &40u32.to_ne_bytes());
        assert_eq!(&b[4..6], &0x0a00u16.to_ne_bytes());
        assert_eq!(&b[8..12], &7u32.to_ne_bytes());
        assert_eq!(&b[16..20], &[1, 0, 0, 0]);
        // "t\0" in a 6-byte attribute padded to 8.
        assert_eq!(&b[20..28], &[6, 0, 1, 0, b't', 0, 0, 0]);
        assert_eq!(&b[28..32], &[12, 0, 4, 0x80]);
        assert_eq!(&b[32..40], &[8, 0, 1, 0, 0, 0, 0, 3]);
    }
}
