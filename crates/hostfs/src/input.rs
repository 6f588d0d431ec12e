//! Reading a small input file named by the caller: one rule for every binary.
//!
//! A path may name a FIFO whose `open` would wait forever for a writer, a device that never
//! ends (`/dev/zero`), a directory or something huge. So the file is opened without blocking
//! and without becoming a controlling terminal, must be a regular file or a pipe (a pipe such
//! as bash's `<(...)` is how some callers hand over a generated config; a pipe with no writer
//! reads as empty), and is read up to a limit the caller gives.
//!
//! A file named relative to a directory someone else fills (a function's `exec` in its
//! directory) is read with [`read_beneath`]: the same bounds, a regular file only, and no
//! symbolic link followed on the way, so that the name cannot reach outside the directory.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path};

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
    #[error("is not a relative path of plain names (no `..`, `.` or root)")]
    NotBeneath,
    #[error("is (or goes through) a symbolic link, which is not followed")]
    Symlink,
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

/// `openat(at, name, flags)`, an owned descriptor.
fn open_at(at: &OwnedFd, name: &CStr, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: `at` is an open descriptor for the whole call and `name` a NUL-terminated
    // string; openat only reads them and returns a new descriptor (or -1).
    let fd = unsafe { libc::openat(at.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `name` in the directory `at` is a symbolic link (not following it).
fn is_symlink_at(at: &OwnedFd, name: &CStr) -> bool {
    // SAFETY: `stat` is plain old data; all zeroes is a valid value for fstatat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `at` is open, `name` NUL-terminated, `st` a valid place for one `struct stat`.
    let rc = unsafe {
        libc::fstatat(
            at.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// An open failure of `name` in `at`, named [`InputError::Symlink`] when a link is why.
fn open_error(at: &OwnedFd, name: &CStr, e: std::io::Error) -> InputError {
    let link = matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
        && is_symlink_at(at, name);
    if link {
        InputError::Symlink
    } else {
        InputError::Open(e)
    }
}

/// Reads the regular file `rel` beneath the directory `dir`, at most `max` bytes. `rel` is
/// plain names only (no `..`, `.` or root), and no symbolic link is followed on the way (a
/// link in a directory someone else fills could pull any host file in); the file is opened
/// without blocking and must be a regular file (a FIFO, a device or a directory is refused
/// before anything is read). `dir` itself is the caller's and is opened as named.
pub fn read_beneath(dir: &Path, rel: &Path, max: u64) -> Result<Vec<u8>, InputError> {
    let names = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => CString::new(n.as_bytes()).ok(),
            _ => None,
        })
        .collect::<Option<Vec<CString>>>()
        .ok_or(InputError::NotBeneath)?;
    let (last, parents) = names.split_last().ok_or(InputError::NotBeneath)?;
    let mut at: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(InputError::Open)?
        .into();
    for name in parents {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        at = open_at(&at, name, flags).map_err(|e| open_error(&at, name, e))?;
    }
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW;
    let file = File::from(open_at(&at, last, flags).map_err(|e| open_error(&at, last, e))?);
    let meta = file.metadata().map_err(InputError::Read)?;
    if !meta.is_file() {
        let kind = kind_name(meta.file_type()).unwrap_or("a FIFO");
        return Err(InputError::Kind(kind));
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
    fn beneath_a_directory_only_plain_names_and_no_links() {
        let dir = scratch("beneath");
        let top = &dir.0;
        std::fs::create_dir_all(top.join("sub/deeper")).unwrap();
        std::fs::write(top.join("sub/deeper/f"), "hello").unwrap();
        std::fs::write(top.join("big"), "x".repeat(11)).unwrap();
        let secret = top.join("secret");
        std::fs::write(&secret, "host file").unwrap();
        let f = |rel: &str| read_beneath(&top.join("sub"), Path::new(rel), 10);
        assert_eq!(f("deeper/f").unwrap(), b"hello");
        assert!(matches!(
            read_beneath(top, Path::new("big"), 10),
            Err(InputError::TooLarge(10))
        ));
        // A link as the file, as a directory on the way, and one that stays inside: refused.
        std::os::unix::fs::symlink(&secret, top.join("sub/link")).unwrap();
        std::os::unix::fs::symlink(top, top.join("sub/up")).unwrap();
        std::os::unix::fs::symlink("deeper/f", top.join("sub/inside")).unwrap();
        for rel in ["link", "up/secret", "inside"] {
            assert!(matches!(f(rel), Err(InputError::Symlink)), "{rel}");
        }
        for rel in [
            "../secret",
            "/etc/passwd",
            "./deeper/f",
            "deeper/../deeper/f",
            "",
        ] {
            assert!(matches!(f(rel), Err(InputError::NotBeneath)), "{rel:?}");
        }
        // Not a regular file: refused by kind, before any read (a FIFO does not block).
        mkfifo(&top.join("sub/fifo"));
        assert!(matches!(f("fifo"), Err(InputError::Kind("a FIFO"))));
        assert!(matches!(f("deeper"), Err(InputError::Kind("a directory"))));
        assert!(matches!(f("missing"), Err(InputError::Open(_))));
        assert!(matches!(f("deeper/f/x"), Err(InputError::Open(_))));
        std::os::unix::fs::symlink("/dev/zero", top.join("sub/zero")).unwrap();
        assert!(matches!(f("zero"), Err(InputError::Symlink)));
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
