//! A drive's backing file: a raw image, opened read-only (`O_RDONLY`: a read-only drive can
//! never write its file, whatever the guest does) or read-write, never created or extended.
//!
//! Its capacity is the file's size in whole 512-byte sectors, taken when it is opened; the
//! request checks keep every access inside it, so a write never reaches past the image's
//! end. I/O goes straight between the file and guest memory (no bounce buffer).

use super::request::SECTOR_SIZE;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open the backing file {path:?} {mode}: {source}")]
    Open {
        path: String,
        mode: &'static str,
        source: std::io::Error,
    },
    #[error("cannot stat the backing file {path:?}: {source}")]
    Stat {
        path: String,
        source: std::io::Error,
    },
    #[error("the backing file {path:?} is not a regular file")]
    NotRegular { path: String },
}

/// The file behind a drive.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: String,
    read_only: bool,
    sectors: u64,
}

impl Disk {
    /// Opens the file at `path` (`PATCH /drives/{id}` after boot): `O_RDONLY` for a
    /// read-only drive. This runs on the VMM thread under its seccomp filter, which allows
    /// `openat` with exactly these flags; the request was checked first (a regular file,
    /// `DriveUpdate::validated`), so this does not wait on a FIFO.
    pub fn open(path: &str, read_only: bool) -> Result<Disk, DiskError> {
        let mode = if read_only { "read-only" } else { "read-write" };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_string(),
                mode,
                source,
            })?;
        Disk::from_file(file, path, read_only)
    }

    /// A disk on a file already opened (in the mode `read_only` says) from `path`, e.g. when
    /// the drive's configuration was accepted.
    pub fn from_file(file: File, path: &str, read_only: bool) -> Result<Disk, DiskError> {
        let meta = file.metadata().map_err(|source| DiskError::Stat {
            path: path.to_string(),
            source,
        })?;
        if !meta.is_file() {
            return Err(DiskError::NotRegular {
                path: path.to_string(),
            });
        }
        Ok(Disk {
            file,
            path: path.to_string(),
            read_only,
            sectors: meta.len() / SECTOR_SIZE,
        })
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads the file from byte `offset` into the guest-memory pieces, in order.
    pub fn read_into(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        pieces: impl Iterator<Item = (GuestAddress, usize)>,
    ) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        for (addr, len) in pieces {
            // Marked first: a read that fails halfway has written part of the piece.
            crate::vstate::dirty::mark(addr, len);
            mem.read_exact_volatile_from(addr, &mut self.file, len)
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// Writes the guest-memory pieces, in order, to the file from byte `offset`.
    pub fn write_from(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        pieces: impl Iterator<Item = (GuestAddress, usize)>,
    ) -> std::io::Result<()> {
        if self.read_only {
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        }
        self.file.seek(SeekFrom::Start(offset))?;
        for (addr, len) in pieces {
            mem.write_all_volatile_to(addr, &mut self.file, len)
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// Makes written data durable (`fdatasync`).
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn access_mode(d: &Disk) -> libc::c_int {
        // SAFETY: F_GETFL on a descriptor the Disk owns.
        let flags = unsafe { libc::fcntl(d.file.as_raw_fd(), libc::F_GETFL) };
        flags & libc::O_ACCMODE
    }

    #[test]
    fn read_only_drives_are_opened_read_only() {
        let p = std::env::temp_dir().join(format!("kiln-disk-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 1536 + 100]).unwrap();
        let path = p.to_string_lossy().into_owned();
        let ro = Disk::open(&path, true).unwrap();
        assert_eq!(access_mode(&ro), libc::O_RDONLY);
        assert_eq!(
            ro.sectors(),
            3,
            "a partial last sector is not part of the disk"
        );
        let rw = Disk::open(&path, false).unwrap();
        assert_eq!(access_mode(&rw), libc::O_RDWR);
        let _ = std::fs::remove_file(&p);
        assert!(matches!(
            Disk::open("/", true),
            Err(DiskError::NotRegular { .. })
        ));
        assert!(matches!(
            Disk::open("/nonexistent/kiln", true),
            Err(DiskError::Open { .. })
        ));
    }
}
