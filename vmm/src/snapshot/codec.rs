//! The state file's binary encoding: little-endian integers, length-prefixed byte strings
//! and lists, and KVM's C structs as their raw bytes.
//!
//! The decoder is the part that faces a hostile file: every read is bounded by what is left
//! of the input, every length and count is checked against a maximum the caller names and
//! against the bytes left *before* anything is allocated, a KVM struct must be exactly its
//! size, and a boolean must be 0 or 1. Every error names the field being read, so a bad
//! file is refused with a message that says where it went wrong. Nothing here panics on
//! any input (a fuzz target, `fuzz/fuzz_targets/snapshot_state.rs`, holds it to that).
//!
//! A type that goes into a snapshot implements [`Persist`] next to its owner (the vCPU
//! state in `vstate`, a device's in its `persist` module); this module knows none of them.

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Why a state could not be decoded. `what` names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("{what}: the state ends {need} bytes too early")]
    Truncated { what: &'static str, need: usize },
    #[error("{what}: {count} entries, more than the {max} allowed")]
    TooMany {
        what: &'static str,
        count: u64,
        max: usize,
    },
    #[error("{what}: {len} bytes, where exactly {expected} are expected")]
    WrongSize {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("{what}: invalid value {value}")]
    Invalid { what: &'static str, value: String },
    #[error("{0} bytes are left over after the state")]
    Trailing(usize),
}

/// A value that can be written into and read back from a snapshot.
pub trait Persist: Sized {
    fn encode(&self, e: &mut Encoder);
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError>;
}

/// Writes values in the state file's encoding.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// A count (of list entries or bytes) as a u32. Everything the VMM saves is far below
    /// 4 Gi entries; a larger one is saturated, which the decoder's bounds then refuse.
    pub fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// Bytes of a fixed size, known to both sides (no length).
    pub fn fixed(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.count(b.len());
        self.buf.extend_from_slice(b);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// A KVM C struct as its raw bytes (length-prefixed, so a struct whose size differs
    /// between builds is refused by size, not misread).
    pub fn pod<T: IntoBytes + Immutable>(&mut self, v: &T) {
        self.bytes(v.as_bytes());
    }

    pub fn put<T: Persist>(&mut self, v: &T) {
        v.encode(self);
    }

    pub fn list<T: Persist>(&mut self, items: &[T]) {
        self.count(items.len());
        for i in items {
            i.encode(self);
        }
    }

    pub fn option<T: Persist>(&mut self, v: Option<&T>) {
        match v {
            Some(v) => {
                self.u8(1);
                v.encode(self);
            }
            None => self.u8(0),
        }
    }
}

/// Reads values back, refusing anything out of bounds.
#[derive(Debug)]
pub struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    minor: u16,
}

impl<'a> Decoder<'a> {
    /// A decoder of data in this VMM's format version.
    pub fn new(data: &'a [u8]) -> Self {
        Self::with_minor(data, super::VERSION.minor)
    }

    /// A decoder of data written in minor format version `minor` (of this VMM's major
    /// version): a field added in a later minor version is not read from it (its owner
    /// takes its default).
    pub fn with_minor(data: &'a [u8], minor: u16) -> Self {
        Decoder {
            data,
            pos: 0,
            minor,
        }
    }

    /// The minor format version of the data.
    pub fn minor(&self) -> u16 {
        self.minor
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], CodecError> {
        let left = self.remaining();
        if n > left {
            return Err(CodecError::Truncated {
                what,
                need: n - left,
            });
        }
        let out = self
            .data
            .get(self.pos..self.pos + n)
            .ok_or(CodecError::Truncated { what, need: n })?;
        self.pos += n;
        Ok(out)
    }

    /// `N` bytes (a value of a fixed size, written with [`Encoder::fixed`]).
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CodecError> {
        let b = self.take(what, N)?;
        <[u8; N]>::try_from(b).map_err(|_| CodecError::Truncated { what, need: N })
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(CodecError::Invalid {
                what,
                value: v.to_string(),
            }),
        }
    }

    /// A count of at most `max`, and (each entry taking at least `min_entry` bytes) no more
    /// than the input left can hold: the caller may allocate that many entries.
    pub fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_entry: usize,
    ) -> Result<usize, CodecError> {
        let raw = self.u32(what)?;
        let n = usize::try_from(raw).unwrap_or(usize::MAX);
        if n > max {
            return Err(CodecError::TooMany {
                what,
                count: u64::from(raw),
                max,
            });
        }
        let need = n.saturating_mul(min_entry.max(1));
        if need > self.remaining() {
            return Err(CodecError::Truncated {
                what,
                need: need - self.remaining(),
            });
        }
        Ok(n)
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], CodecError> {
        let n = self.count(what, max, 1)?;
        self.take(what, n)
    }

    pub fn str(&mut self, what: &'static str, max: usize) -> Result<String, CodecError> {
        let b = self.bytes(what, max)?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError::Invalid {
            what,
            value: "(not UTF-8)".into(),
        })
    }

    /// A KVM C struct: exactly `size_of::<T>()` bytes.
    pub fn pod<T: FromBytes>(&mut self, what: &'static str) -> Result<T, CodecError> {
        let expected = std::mem::size_of::<T>();
        let len = usize::try_from(self.u32(what)?).unwrap_or(usize::MAX);
        if len != expected {
            return Err(CodecError::WrongSize {
                what,
                len,
                expected,
            });
        }
        let b = self.take(what, len)?;
        T::read_from_bytes(b).map_err(|_| CodecError::WrongSize {
            what,
            len,
            expected,
        })
    }

    pub fn get<T: Persist>(&mut self) -> Result<T, CodecError> {
        T::decode(self)
    }

    /// A list of at most `max` entries, each at least `min_entry` bytes long encoded.
    pub fn list<T: Persist>(
        &mut self,
        what: &'static str,
        max: usize,
        min_entry: usize,
    ) -> Result<Vec<T>, CodecError> {
        let n = self.count(what, max, min_entry)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(T::decode(self)?);
        }
        Ok(out)
    }

    pub fn option<T: Persist>(&mut self, what: &'static str) -> Result<Option<T>, CodecError> {
        if self.bool(what)? {
            Ok(Some(T::decode(self)?))
        } else {
            Ok(None)
        }
    }

    /// Refuses bytes left after the last value.
    pub fn finish(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Pair(u16, String);

    impl Persist for Pair {
        fn encode(&self, e: &mut Encoder) {
            e.u16(self.0);
            e.str(&self.1);
        }
        fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
            Ok(Pair(d.u16("pair.a")?, d.str("pair.b", 16)?))
        }
    }

    #[test]
    fn values_round_trip() {
        let mut e = Encoder::new();
        e.u8(7);
        e.u32(0xdead_beef);
        e.u64(u64::MAX);
        e.bool(true);
        e.bytes(b"abc");
        e.list(&[Pair(1, "x".into()), Pair(2, "yz".into())]);
        e.option(Some(&Pair(3, String::new())));
        e.option::<Pair>(None);
        let regs = kvm_bindings::kvm_regs {
            rip: 0x1234,
            rflags: 2,
            ..Default::default()
        };
        e.pod(&regs);
        let b = e.into_bytes();
        let mut d = Decoder::new(&b);
        assert_eq!(d.u8("a").unwrap(), 7);
        assert_eq!(d.u32("b").unwrap(), 0xdead_beef);
        assert_eq!(d.u64("c").unwrap(), u64::MAX);
        assert!(d.bool("d").unwrap());
        assert_eq!(d.bytes("e", 3).unwrap(), b"abc");
        let l: Vec<Pair> = d.list("pairs", 2, 6).unwrap();
        assert_eq!(l, vec![Pair(1, "x".into()), Pair(2, "yz".into())]);
        assert_eq!(d.option::<Pair>("o").unwrap(), Some(Pair(3, String::new())));
        assert_eq!(d.option::<Pair>("o").unwrap(), None);
        let r: kvm_bindings::kvm_regs = d.pod("regs").unwrap();
        assert_eq!((r.rip, r.rflags), (0x1234, 2));
        d.finish().unwrap();
    }

    #[test]
    fn bad_input_is_refused_by_name() {
        assert_eq!(
            Decoder::new(&[1, 2]).u32("x").unwrap_err(),
            CodecError::Truncated { what: "x", need: 2 }
        );
        assert_eq!(
            Decoder::new(&[2]).bool("flag").unwrap_err(),
            CodecError::Invalid {
                what: "flag",
                value: "2".into()
            }
        );
        // A huge count is refused before anything is allocated.
        let mut e = Encoder::new();
        e.u32(u32::MAX);
        let b = e.into_bytes();
        assert!(matches!(
            Decoder::new(&b).list::<Pair>("pairs", 1 << 20, 6),
            Err(CodecError::TooMany { what: "pairs", .. })
        ));
        assert!(matches!(
            Decoder::new(&b).list::<Pair>("pairs", usize::MAX, 6),
            Err(CodecError::Truncated { what: "pairs", .. })
        ));
        // A KVM struct of the wrong size.
        let mut e = Encoder::new();
        e.bytes(&[0u8; 10]);
        let b = e.into_bytes();
        assert_eq!(
            Decoder::new(&b)
                .pod::<kvm_bindings::kvm_regs>("regs")
                .unwrap_err(),
            CodecError::WrongSize {
                what: "regs",
                len: 10,
                expected: std::mem::size_of::<kvm_bindings::kvm_regs>()
            }
        );
        let d = Decoder::new(&[0]);
        assert_eq!(d.finish().unwrap_err(), CodecError::Trailing(1));
        let mut e = Encoder::new();
        e.bytes(&[0xff, 0xfe]);
        let b = e.into_bytes();
        assert!(matches!(
            Decoder::new(&b).str("name", 8),
            Err(CodecError::Invalid { what: "name", .. })
        ));
    }
}
