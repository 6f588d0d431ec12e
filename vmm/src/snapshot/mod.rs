//! The snapshot file format (bytes only: what the state *is* lives with its owners, and
//! `crate::persist` puts a microVM into these files and back).
//!
//! A snapshot is two files, as in Firecracker: the **memory file** (the guest's RAM, region
//! after region, at file offset = the sum of the regions before it) and the **state file**:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `KILNSNAP` |
//! | 8 | 2 | format major version (little-endian; this VMM: 1) |
//! | 10 | 2 | format minor version (3; a reader takes older minor versions) |
//! | 12 | 4 | flags: bit 0 = the tag is an HMAC-SHA256 with the orchestrator's key |
//! | 16 | 8 | body length *n* (at most [`format::MAX_BODY`]) |
//! | 24 | *n* | body: the microVM's state in the [`codec`] encoding |
//! | 24 + *n* | 32 | tag: HMAC-SHA256(key, bytes 0..24+*n*), or SHA-256 of them without a key |
//!
//! The file must be exactly 24 + *n* + 32 bytes. With a key, the body holds the digests of
//! the memory file's 2 MiB chunks ([`digest`]), so the MAC covers the memory too.
//!
//! - [`codec`]: the bounded binary encoding and the [`codec::Persist`] trait;
//! - [`format`]: the envelope above (seal, open and verify, describe the version);
//! - [`key`]: the orchestrator's key and HMAC-SHA256;
//! - [`digest`]: the memory file's chunk digests.

pub mod codec;
pub mod digest;
pub mod format;
pub mod key;

pub use codec::{CodecError, Decoder, Encoder, Persist};
pub use format::{FormatError, VERSION};
pub use key::{KeyError, SnapshotKey};
