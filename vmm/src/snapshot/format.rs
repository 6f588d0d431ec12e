//! The state file's envelope: header, body, tag (see the module above for the layout).
//!
//! [`seal`] wraps an encoded state; [`open`] checks a file's envelope and returns its body
//! only once the tag verifies, so nothing of an unverified file reaches the decoder, let
//! alone KVM or a device. [`describe`] reads the version without verifying anything
//! (`--describe-snapshot`).

use super::digest::sha256;
use super::key::SnapshotKey;
use hmac::Mac;

/// The first 8 bytes of every Kiln snapshot state file.
pub const MAGIC: [u8; 8] = *b"KILNSNAP";
/// The format version this VMM writes and reads.
/// v1.1: a virtio transport's state ends with its device's own state (the balloon's free
/// page hinting run).
/// v1.2: the VM's PIT is optional (a presence byte before its state, `vstate::vm_state`).
/// v1.3: the PCI bus of a microVM started with `--enable-pci` (a presence byte after the
/// virtio transports, then the bus: `devices::virtio::pci::persist`); older files have
/// none, their devices are on virtio-mmio.
/// v1.4: the virtio-mem device (`memory-hotplug`: a presence byte after the PCI bus, then
/// its section: `devices::virtio::mem::persist`), its hot-plug region in the memory file
/// after the RAM; older files have none.
pub const VERSION: Version = Version { major: 1, minor: 4 };
/// Magic, version, flags, body length.
pub const HEADER_LEN: usize = 24;
/// HMAC-SHA256 or SHA-256: 32 bytes.
pub const TAG_LEN: usize = 32;
/// The largest body read: far above any state (a few KiB per vCPU and device, 4 MiB of
/// memory digests for 256 GiB of memory).
pub const MAX_BODY: usize = 64 << 20;
/// The largest state file: header, largest body, tag.
pub const MAX_FILE: usize = HEADER_LEN + MAX_BODY + TAG_LEN;
/// Flags bit 0: the tag is HMAC-SHA256 with the orchestrator's key (else SHA-256).
pub const FLAG_MAC: u32 = 1;

/// A format version, `MAJOR.MINOR` (printed `vMAJOR.MINOR.0`, Firecracker's style). A
/// reader refuses another major version, and a minor version newer than its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.0", self.major, self.minor)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the state file is {0} bytes, shorter than a snapshot's header and tag ({min} bytes): it is truncated or not a snapshot", min = HEADER_LEN + TAG_LEN)]
    TooShort(usize),
    #[error("the state file is not a Kiln snapshot (it does not start with \"KILNSNAP\")")]
    NotASnapshot,
    #[error("the state file has format version {found}; this VMM reads {VERSION} and older minor versions of it")]
    Version { found: Version },
    #[error("the state file has unknown flags {0:#x}")]
    UnknownFlags(u32),
    #[error("the state file's header declares a state of {declared} bytes, more than the {MAX_BODY} allowed")]
    TooLarge { declared: u64 },
    #[error("the state file's header declares a state of {declared} bytes but the file holds {actual} (truncated or extended)")]
    Length { declared: u64, actual: u64 },
    #[error("the state file's checksum does not match: the file is corrupted or was modified")]
    Checksum,
    #[error("the state file's MAC does not verify with this VMM's snapshot key: it was made with another key, or modified")]
    Mac,
    #[error("the snapshot is authenticated (HMAC-SHA256), and this VMM has no snapshot key to check it (--snapshot-key-file or --snapshot-key-fd)")]
    NeedKey,
    #[error("the snapshot is not authenticated, and this VMM has a snapshot key: it loads only snapshots made with that key")]
    Unauthenticated,
}

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub authenticated: bool,
    pub body_len: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Reads and checks the header of a state file (nothing verified yet).
pub fn describe(file: &[u8]) -> Result<Header, FormatError> {
    if file.len() < HEADER_LEN + TAG_LEN {
        return Err(FormatError::TooShort(file.len()));
    }
    if file.get(..8) != Some(&MAGIC[..]) {
        return Err(FormatError::NotASnapshot);
    }
    let version = Version {
        major: u16_at(file, 8),
        minor: u16_at(file, 10),
    };
    if version.major != VERSION.major || version.minor > VERSION.minor {
        return Err(FormatError::Version { found: version });
    }
    let flags = u32_at(file, 12);
    if flags & !FLAG_MAC != 0 {
        return Err(FormatError::UnknownFlags(flags));
    }
    let declared = u64_at(file, 16);
    if declared > MAX_BODY as u64 {
        return Err(FormatError::TooLarge { declared });
    }
    let actual = (file.len() - HEADER_LEN - TAG_LEN) as u64;
    if declared != actual {
        return Err(FormatError::Length { declared, actual });
    }
    Ok(Header {
        version,
        authenticated: flags & FLAG_MAC != 0,
        body_len: declared,
    })
}

/// The state file for `body`: with `key`, its tag is HMAC-SHA256 over header and body;
/// without, SHA-256 of them (a checksum against accidents, Firecracker's level of trust).
pub fn seal(body: &[u8], key: Option<&SnapshotKey>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.major.to_le_bytes());
    out.extend_from_slice(&VERSION.minor.to_le_bytes());
    let flags = if key.is_some() { FLAG_MAC } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let tag: [u8; 32] = match key {
        Some(k) => {
            let mut m = k.mac();
            m.update(&out);
            m.finalize().into_bytes().into()
        }
        None => sha256(&out),
    };
    out.extend_from_slice(&tag);
    out
}

/// A verified state file.
#[derive(Debug)]
pub struct Opened<'a> {
    pub header: Header,
    pub body: &'a [u8],
}

/// Checks the envelope of `file` and verifies its tag: the MAC with `key` (which a MACed
/// file needs, and which refuses a file without a MAC), else the checksum.
pub fn open<'a>(file: &'a [u8], key: Option<&SnapshotKey>) -> Result<Opened<'a>, FormatError> {
    let header = describe(file)?;
    let split = file.len() - TAG_LEN;
    let (signed, tag) = (&file[..split], &file[split..]);
    match (header.authenticated, key) {
        (true, Some(k)) => {
            let mut m = k.mac();
            m.update(signed);
            m.verify_slice(tag).map_err(|_| FormatError::Mac)?;
        }
        (true, None) => return Err(FormatError::NeedKey),
        (false, Some(_)) => return Err(FormatError::Unauthenticated),
        (false, None) => {
            if sha256(signed) != tag {
                return Err(FormatError::Checksum);
            }
        }
    }
    Ok(Opened {
        header,
        body: &signed[HEADER_LEN..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SnapshotKey {
        SnapshotKey::from_bytes(vec![b; 32], "test").unwrap()
    }

    #[test]
    fn sealed_files_open_and_tampering_is_named() {
        let body = b"state bytes";
        let plain = seal(body, None);
        assert_eq!(open(&plain, None).unwrap().body, body);
        assert_eq!(
            open(&plain, Some(&key(1))).unwrap_err(),
            FormatError::Unauthenticated
        );
        let macd = seal(body, Some(&key(1)));
        let o = open(&macd, Some(&key(1))).unwrap();
        assert!(o.header.authenticated);
        assert_eq!(o.body, body);
        assert_eq!(open(&macd, Some(&key(2))).unwrap_err(), FormatError::Mac);
        assert_eq!(open(&macd, None).unwrap_err(), FormatError::NeedKey);
        for i in 0..macd.len() {
            let mut bad = macd.clone();
            bad[i] ^= 0x20;
            assert!(open(&bad, Some(&key(1))).is_err(), "byte {i} flipped");
            let mut bad = plain.clone();
            if i < bad.len() {
                bad[i] ^= 0x20;
                assert!(open(&bad, None).is_err(), "byte {i} flipped");
            }
        }
        assert_eq!(
            open(&macd[..macd.len() - 1], Some(&key(1))).unwrap_err(),
            FormatError::Length {
                declared: body.len() as u64,
                actual: body.len() as u64 - 1
            }
        );
        assert_eq!(
            open(&macd[..40], None).unwrap_err(),
            FormatError::TooShort(40)
        );
        let mut v = plain.clone();
        v[8] = 2;
        v[10] = 0;
        assert_eq!(
            describe(&v).unwrap_err().to_string(),
            "the state file has format version v2.0.0; this VMM reads v1.4.0 and older minor versions of it"
        );
        // A newer minor version is refused, an older one read.
        let mut v = plain.clone();
        v[10] = 5;
        assert_eq!(
            describe(&v).unwrap_err().to_string(),
            "the state file has format version v1.5.0; this VMM reads v1.4.0 and older minor versions of it"
        );
        v[10] = 0;
        assert_eq!(
            describe(&v).unwrap().version,
            Version { major: 1, minor: 0 }
        );
        let mut junk = vec![0u8; 100];
        junk[..8].copy_from_slice(b"NOTASNAP");
        assert_eq!(describe(&junk).unwrap_err(), FormatError::NotASnapshot);
        assert_eq!(describe(&plain).unwrap().version, VERSION);
    }
}
