//! Reading a small input file named by the caller: one rule for every binary.
//!
//! A path may name a FIFO whose `open` would wait forever for a writer, a device that never
//! ends (`/dev/zero`), a directory or something huge. So the file is opened without blocking
//! and without becoming a controlling terminal, must be a regular file or a pipe (a pipe such
//! as bash's `<(...)` is how some callers hand over a generated config; a pipe with no writer
//! reads as empty), and is read up to a limit the caller gives.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why an input file could not be read. The caller adds the flag or field and the path.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot open: {0}")]
    Open(#[source] std::io::Error),
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("is {0}, not a regular file or a pipe")]
    Kind(&'static str),
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    #[error("not UTF-8 text")]
    NotUtf8,
}

fn kind_name(t: std::fs::FileType) -> Option<&'static str> {
    if t.is_file() || t.is_fifo() {
        None
    } else if t.is_dir() {
        Some("a directory")
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

/// Clears `O_NONBLOCK` so that a pipe whose writer is slow is waited for.
pub(crate) fn set_blocking(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fd is owned by `file`, open for the whole call; F_GETFL reads its flags only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL changes only this open file description's status flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads `path` whole, at most `max` bytes.
pub fn read_bytes(path: &Path, max: u64) -> Result<Vec<u8>, InputError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(InputError::Open)?;
    read_open_file(file, max)
}

/// Reads an already open input whole, at most `max` bytes, by the same rule as
/// [`read_bytes`] (a regular file or a pipe): for an input handed over as an inherited
/// descriptor (`vmm --snapshot-key-fd`). The file is closed when read.
pub fn read_open_file(file: File, max: u64) -> Result<Vec<u8>, InputError> {
    let meta = file.metadata().map_err(InputError::Read)?;
    if let Some(kind) = kind_name(meta.file_type()) {
        return Err(InputError::Kind(kind));
    }
    if meta.file_type().is_fifo() {
        set_blocking(&file).map_err(InputError::Read)?;
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(InputError::Read)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max {
        return Err(InputError::TooLarge(max));
    }
    Ok(bytes)
}

/// Reads `path` as UTF-8 text of at most `max` bytes.
pub fn read_text(path: &Path, max: u64) -> Result<String, InputError> {
    String::from_utf8(read_bytes(path, max)?).map_err(|_| InputError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Scratch(std::path::PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn scratch(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("kiln-hostfs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: c is a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn regular_files_up_to_the_limit() {
        let dir = scratch("regular");
        let f = dir.0.join("f");
        std::fs::write(&f, "x".repeat(10)).unwrap();
        assert_eq!(read_text(&f, 10).unwrap().len(), 10);
        std::fs::write(&f, "x".repeat(11)).unwrap();
        assert!(matches!(read_text(&f, 10), Err(InputError::TooLarge(10))));
        std::fs::write(&f, [0xffu8, 0xfe]).unwrap();
        assert!(matches!(read_text(&f, 10), Err(InputError::NotUtf8)));
        assert_eq!(read_bytes(&f, 10).unwrap(), [0xff, 0xfe]);
        let e = read_text(&dir.0.join("missing"), 10).unwrap_err();
        assert!(matches!(e, InputError::Open(_)), "{e:?}");
    }

    #[test]
    fn devices_directories_and_sockets_are_refused_without_reading() {
        let dir = scratch("kinds");
        let e = read_text(Path::new("/dev/zero"), 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "is a character device, not a regular file or a pipe"
        );
        let e = read_text(&dir.0, 10).unwrap_err();
        assert!(matches!(e, InputError::Kind("a directory")), "{e:?}");
        let sock = dir.0.join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        // A socket cannot even be opened: refused at open, not hung.
        assert!(read_text(&sock, 10).is_err());
    }

    #[test]
    fn a_fifo_without_a_writer_reads_empty_instead_of_hanging() {
        let dir = scratch("fifo");
        let fifo = dir.0.join("fifo");
        mkfifo(&fifo);
        assert_eq!(read_text(&fifo, 10).unwrap(), "");
    }

    #[test]
    fn a_pipe_with_a_slow_writer_is_read_whole_and_bounded() {
        use std::os::fd::FromRawFd;
        // What bash's `<(...)` hands over: /dev/fd/N of a pipe whose writer is still busy.
        let mut fds = [0i32; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (read_end, mut write_end) =
            unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        write_end.write_all(b"{\"a\":").unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            write_end.write_all(b"1}").unwrap();
        });
        let path = format!("/proc/self/fd/{}", read_end.as_raw_fd());
        assert_eq!(read_text(Path::new(&path), 100).unwrap(), "{\"a\":1}");
        writer.join().unwrap();
    }

    #[test]
    fn an_endless_pipe_stops_at_the_limit() {
        use std::os::fd::FromRawFd;
        let mut fds = [0i32; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (read_end, mut write_end) =
            unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let writer = std::thread::spawn(move || {
            // Writes until the reader goes away (EPIPE), like `yes`.
            while write_end.write_all(&[b'x'; 4096]).is_ok() {}
        });
        let path = format!("/proc/self/fd/{}", read_end.as_raw_fd());
        let e = read_text(Path::new(&path), 10_000).unwrap_err();
        assert!(matches!(e, InputError::TooLarge(10_000)), "{e:?}");
        drop(read_end);
        writer.join().unwrap();
    }
}
