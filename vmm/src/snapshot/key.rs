//! The snapshot key: a secret the orchestrator gives the VMM on its command line (a file,
//! `--snapshot-key-file`, or an inherited descriptor, `--snapshot-key-fd`; never the API
//! body, which any client of the socket could read or choose), and the HMAC-SHA256 made
//! with it.
//!
//! Any 16 to 1024 bytes are a key (raw bytes, not text: a trailing newline is part of it);
//! 32 random bytes (`head -c 32 /dev/urandom > key`) is what the documentation suggests.
//! The raw bytes are wiped once the HMAC state is keyed, and never printed.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fs::File;
use std::path::Path;

/// Shortest key accepted: shorter secrets are guessable.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key accepted (HMAC hashes longer keys down anyway).
pub const MAX_KEY_LEN: usize = 1024;

/// HMAC-SHA256, the MAC of authenticated snapshots.
pub type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("snapshot key {source_name}: {reason}")]
    Read { source_name: String, reason: String },
    #[error("snapshot key {source_name}: {len} bytes; a key is {MIN_KEY_LEN} to {MAX_KEY_LEN} bytes (e.g. `head -c 32 /dev/urandom`)")]
    Length { source_name: String, len: usize },
}

/// The orchestrator's secret, kept as the keyed HMAC state only: the raw bytes are wiped
/// as soon as that is made.
pub struct SnapshotKey {
    mac: HmacSha256,
    len: usize,
}

impl SnapshotKey {
    /// A key from its bytes (`name` says where they came from, for errors). The bytes are
    /// wiped.
    pub fn from_bytes(mut bytes: Vec<u8>, name: &str) -> Result<Self, KeyError> {
        let len = bytes.len();
        let made = if (MIN_KEY_LEN..=MAX_KEY_LEN).contains(&len) {
            <HmacSha256 as Mac>::new_from_slice(&bytes).ok()
        } else {
            None
        };
        wipe(&mut bytes);
        let mac = made.ok_or_else(|| KeyError::Length {
            source_name: name.to_string(),
            len,
        })?;
        Ok(SnapshotKey { mac, len })
    }

    /// Reads the key file `path` (a regular file or a pipe, by the project's one rule for
    /// caller-named inputs).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let name = format!("file {path:?}");
        let bytes =
            kiln_hostfs::read_bytes(path, MAX_KEY_LEN as u64).map_err(|e| KeyError::Read {
                source_name: name.clone(),
                reason: e.to_string(),
            })?;
        Self::from_bytes(bytes, &name)
    }

    /// Reads the key from an inherited descriptor `fd` (read to its end, then closed).
    pub fn from_file_handle(file: File, fd: i32) -> Result<Self, KeyError> {
        let name = format!("descriptor {fd}");
        let bytes =
            kiln_hostfs::read_open_file(file, MAX_KEY_LEN as u64).map_err(|e| KeyError::Read {
                source_name: name.clone(),
                reason: e.to_string(),
            })?;
        Self::from_bytes(bytes, &name)
    }

    /// A fresh HMAC-SHA256 keyed with this key.
    pub fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }
}

/// Overwrites `bytes` with zeros in a way the compiler keeps.
fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, exclusive reference to one byte of the slice; the volatile
        // write keeps the compiler from eliding the wipe of memory about to be freed.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotKey({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_sources() {
        assert!(SnapshotKey::from_bytes(vec![1; 15], "t").is_err());
        assert!(SnapshotKey::from_bytes(vec![1; 1025], "t").is_err());
        let k = SnapshotKey::from_bytes(vec![7; 32], "t").unwrap();
        assert_eq!(format!("{k:?}"), "SnapshotKey(32 bytes)");
        let dir = std::env::temp_dir().join(format!("kiln-key-{}", std::process::id()));
        std::fs::write(&dir, [9u8; 32]).unwrap();
        let a = SnapshotKey::from_file(&dir).unwrap();
        let f = File::open(&dir).unwrap();
        let b = SnapshotKey::from_file_handle(f, 3).unwrap();
        let (mut ma, mut mb) = (a.mac(), b.mac());
        ma.update(b"x");
        mb.update(b"x");
        assert_eq!(ma.finalize().into_bytes(), mb.finalize().into_bytes());
        std::fs::write(&dir, b"short").unwrap();
        let e = SnapshotKey::from_file(&dir).unwrap_err().to_string();
        assert!(e.contains("5 bytes; a key is 16 to 1024 bytes"), "{e}");
        let _ = std::fs::remove_file(&dir);
        let e = SnapshotKey::from_file(Path::new("/nonexistent/key"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("snapshot key file \"/nonexistent/key\": cannot open"),
            "{e}"
        );
    }
}
