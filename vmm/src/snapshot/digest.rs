//! Digests of a guest memory image: SHA-256 of each [`CHUNK`] bytes, in order.
//!
//! An authenticated snapshot carries these digests in its (MACed) state, so the MAC covers
//! the memory file's contents without hashing 1 GiB inside one HMAC: chunks are hashed on
//! several threads when the caller allows it, a mismatch names the chunk (and so the file
//! offset) that differs, and a diff snapshot only rehashes the chunks it rewrote.

use super::codec::{CodecError, Decoder, Encoder, Persist};
use sha2::{Digest as _, Sha256};

/// Bytes of memory per digest (the last chunk of an image may be shorter).
pub const CHUNK_BYTES: usize = 2 << 20;
/// [`CHUNK_BYTES`] as a file offset.
pub const CHUNK: u64 = CHUNK_BYTES as u64;
/// Most chunks a digest holds: 256 GiB, the largest guest memory, in 2 MiB chunks.
pub const MAX_CHUNKS: usize = 1 << 17;

/// One SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Sha256Digest {
    Sha256::digest(data).into()
}

/// The digest of one chunk's bytes. A chunk of zeros (most of a guest's memory, and every
/// hole of a memory file) is not hashed again: its digest is computed once per process.
pub fn chunk_digest(bytes: &[u8]) -> Sha256Digest {
    if bytes.len() == CHUNK_BYTES && is_zero(bytes) {
        zero_chunk_digest()
    } else {
        sha256(bytes)
    }
}

/// The digest of a whole chunk of zeros.
pub fn zero_chunk_digest() -> Sha256Digest {
    static ZERO: std::sync::OnceLock<Sha256Digest> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| sha256(&vec![0u8; CHUNK_BYTES]))
}

/// True when every byte is zero (64 bytes at a time: the OR of a block vectorizes).
pub fn is_zero(bytes: &[u8]) -> bool {
    let blocks = bytes.chunks_exact(64);
    let tail = blocks.remainder();
    for block in blocks {
        if block.iter().fold(0u8, |a, &b| a | b) != 0 {
            return false;
        }
    }
    tail.iter().all(|&b| b == 0)
}

/// What a chunk reader did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// The buffer holds the chunk's bytes.
    Read,
    /// The chunk is known to be all zeros (a hole of the file); the buffer was not filled.
    Zeros,
}

/// The digests of one memory image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryDigest {
    pub chunks: Vec<Sha256Digest>,
}

/// How many chunks an image of `size` bytes has.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK)
}

/// The byte range of chunk `index` in an image of `size` bytes.
pub fn chunk_range(index: u64, size: u64) -> (u64, usize) {
    let start = index.saturating_mul(CHUNK).min(size);
    let len = (size - start).min(CHUNK);
    // At most CHUNK (2 MiB): fits a usize.
    (start, usize::try_from(len).unwrap_or(0))
}

impl MemoryDigest {
    /// Hashes an image of `size` bytes, chunk by chunk, with `read(offset, buf)` filling
    /// `buf` from the image (or saying that the chunk is zeros), on up to `threads` threads
    /// (each with its own 2 MiB buffer).
    pub fn compute<E: Send>(
        size: u64,
        threads: usize,
        read: impl Fn(u64, &mut [u8]) -> Result<Chunk, E> + Sync,
    ) -> Result<MemoryDigest, E> {
        let count = usize::try_from(chunk_count(size)).unwrap_or(usize::MAX);
        let threads = threads.clamp(1, count.max(1));
        let hash_some = |first: usize| -> Result<Vec<(usize, Sha256Digest)>, E> {
            let mut buf = vec![0u8; CHUNK_BYTES];
            let mut out = Vec::new();
            let mut i = first;
            while i < count {
                let (start, len) = chunk_range(i as u64, size);
                let b = buf.get_mut(..len).unwrap_or_default();
                let d = match read(start, b)? {
                    Chunk::Read => chunk_digest(b),
                    Chunk::Zeros if len == CHUNK_BYTES => zero_chunk_digest(),
                    Chunk::Zeros => {
                        b.fill(0);
                        sha256(b)
                    }
                };
                out.push((i, d));
                i += threads;
            }
            Ok(out)
        };
        let parts: Vec<Result<Vec<(usize, Sha256Digest)>, E>> = if threads == 1 {
            vec![hash_some(0)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| s.spawn(move || hash_some(t)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        let mut chunks = vec![[0u8; 32]; count];
        for part in parts {
            for (i, d) in part? {
                if let Some(slot) = chunks.get_mut(i) {
                    *slot = d;
                }
            }
        }
        Ok(MemoryDigest { chunks })
    }

    /// The first chunk where `self` and `other` differ (or the shorter's end).
    pub fn first_difference(&self, other: &MemoryDigest) -> Option<usize> {
        let n = self.chunks.len().min(other.chunks.len());
        (0..n)
            .find(|&i| self.chunks.get(i) != other.chunks.get(i))
            .or((self.chunks.len() != other.chunks.len()).then_some(n))
    }

    /// All digests, in order (what the MAC covers).
    pub fn bytes(&self) -> Vec<u8> {
        self.chunks.iter().flatten().copied().collect()
    }
}

impl Persist for MemoryDigest {
    fn encode(&self, e: &mut Encoder) {
        e.count(self.chunks.len());
        for c in &self.chunks {
            e.fixed(c);
        }
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        let n = d.count("memory digest chunks", MAX_CHUNKS, 32)?;
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            chunks.push(d.array::<32>("memory digest")?);
        }
        Ok(MemoryDigest { chunks })
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn chunks_threads_and_differences() {
        let size = 5 * CHUNK + 123;
        let image: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let read = |off: u64, buf: &mut [u8]| -> Result<Chunk, ()> {
            let off = off as usize;
            buf.copy_from_slice(&image[off..off + buf.len()]);
            Ok(Chunk::Read)
        };
        let one = MemoryDigest::compute(size, 1, read).unwrap();
        let four = MemoryDigest::compute(size, 4, read).unwrap();
        assert_eq!(one, four);
        assert_eq!(one.chunks.len(), 6);
        assert_eq!(one.chunks[5], sha256(&image[5 * CHUNK as usize..]));
        let mut other = one.clone();
        other.chunks[3][0] ^= 1;
        assert_eq!(one.first_difference(&other), Some(3));
        assert_eq!(one.first_difference(&one), None);
        other.chunks.truncate(2);
        assert_eq!(one.first_difference(&other), Some(2));
        let mut e = Encoder::new();
        e.put(&one);
        let b = e.into_bytes();
        let back: MemoryDigest = Decoder::new(&b).get().unwrap();
        assert_eq!(back, one);
        assert_eq!(chunk_range(5, size), (5 * CHUNK, 123));
        let err = MemoryDigest::compute(size, 2, |_, _| Err("boom"));
        assert_eq!(err, Err("boom"));
        // Zero chunks: read as zeros or said to be zeros, the same digests.
        let zeros = |_: u64, buf: &mut [u8]| -> Result<Chunk, ()> {
            buf.fill(0);
            Ok(Chunk::Read)
        };
        let holes = |_: u64, _: &mut [u8]| -> Result<Chunk, ()> { Ok(Chunk::Zeros) };
        let a = MemoryDigest::compute(size, 2, zeros).unwrap();
        assert_eq!(a, MemoryDigest::compute(size, 1, holes).unwrap());
        assert_eq!(a.chunks[0], sha256(&vec![0u8; CHUNK_BYTES]));
        assert_eq!(a.chunks[5], sha256(&[0u8; 123]));
        assert!(is_zero(&[0u8; 37]) && !is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }
}
