//! Opening an image file named by the caller that a device or the loader keeps using (a
//! kernel, an initrd, a drive's backing file): the descriptor is kept, nothing is read here.
//!
//! The same care as for [`crate::input`] files, for the same reasons: the path may name a
//! FIFO whose `open` would wait forever, a device, a directory or a socket. So the file is
//! opened without blocking and without becoming a controlling terminal, and anything but a
//! regular file is refused by kind. The descriptor is then made blocking again (a regular
//! file never blocks; this keeps its I/O the plain kind).

use crate::input::set_blocking;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why an image file could not be opened. The caller adds the field and the path.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Open(#[source] std::io::Error),
    #[error("cannot stat it: {0}")]
    Stat(#[source] std::io::Error),
    #[error("it is {0}, not a regular file")]
    Kind(&'static str),
}

fn kind_name(t: std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

/// Opens the regular file at `path` for reading, and for writing too when `writable`.
/// Symbolic links are followed (the jail decides what is reachable).
pub fn open_regular(path: &Path, writable: bool) -> Result<File, ImageError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(ImageError::Open)?;
    let meta = file.metadata().map_err(ImageError::Stat)?;
    if let Some(kind) = kind_name(meta.file_type()) {
        return Err(ImageError::Kind(kind));
    }
    set_blocking(&file).map_err(ImageError::Stat)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn access_mode(f: &File) -> libc::c_int {
        // SAFETY: F_GETFL on a descriptor `f` owns.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) }
    }

    #[test]
    fn regular_files_open_in_the_mode_asked_and_others_are_refused_by_kind() {
        let dir = std::env::temp_dir().join(format!("kiln-hostfs-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("disk.img");
        std::fs::write(&f, [0u8; 512]).unwrap();
        let ro = open_regular(&f, false).unwrap();
        assert_eq!(access_mode(&ro) & libc::O_ACCMODE, libc::O_RDONLY);
        assert_eq!(access_mode(&ro) & libc::O_NONBLOCK, 0);
        let rw = open_regular(&f, true).unwrap();
        assert_eq!(access_mode(&rw) & libc::O_ACCMODE, libc::O_RDWR);
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: c is a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A FIFO with no writer: refused at once, never waited for.
        assert!(matches!(
            open_regular(&fifo, false),
            Err(ImageError::Kind("a FIFO"))
        ));
        assert!(matches!(
            open_regular(&dir, false),
            Err(ImageError::Kind("a directory"))
        ));
        assert!(matches!(
            open_regular(Path::new("/dev/null"), false),
            Err(ImageError::Kind("a character device"))
        ));
        let e = open_regular(&dir.join("missing"), false).unwrap_err();
        assert_eq!(e.to_string(), "No such file or directory (os error 2)");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
