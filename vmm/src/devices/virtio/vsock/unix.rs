//! The host side's system calls, each wrapped once: nonblocking `AF_UNIX` stream sockets (the
//! listening socket at `uds_path`, accepted host connections, connections to
//! `<uds_path>_<port>`). The timeouts' timerfd is [`crate::devices::timer::Timer`].
//!
//! Every descriptor is created `O_NONBLOCK | O_CLOEXEC`; reads and writes pass
//! `MSG_DONTWAIT` as well, and writes `MSG_NOSIGNAL` (a peer that went away is `EPIPE`, never
//! a signal). Nothing here can block the VMM thread: a connect to a listener whose backlog is
//! full fails with `EAGAIN` instead of waiting.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Listen backlog of the host socket at `uds_path`.
pub const BACKLOG: i32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    #[error("Unix socket path {path:?} is too long ({len} bytes; at most 107)")]
    PathTooLong { path: String, len: usize },
    #[error("Unix socket path {path:?} contains a NUL byte")]
    PathNul { path: String },
    #[error("cannot create a Unix socket: {0}")]
    Socket(io::Error),
    #[error("cannot bind the Unix socket {path:?}: {source}")]
    Bind { path: String, source: io::Error },
    #[error("cannot listen on the Unix socket {path:?}: {source}")]
    Listen { path: String, source: io::Error },
    #[error("cannot connect to the Unix socket {path:?}: {source}")]
    Connect { path: String, source: io::Error },
}

/// `struct sockaddr_un` for `path` and the length to pass with it.
fn sockaddr(path: &str) -> Result<(libc::sockaddr_un, libc::socklen_t), UnixError> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap_or(1);
    let bytes = path.as_bytes();
    if bytes.contains(&0) {
        return Err(UnixError::PathNul {
            path: path.to_string(),
        });
    }
    // One byte stays for the terminating NUL.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(UnixError::PathTooLong {
            path: path.to_string(),
            len: bytes.len(),
        });
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    let len = libc::socklen_t::try_from(len).map_err(|_| UnixError::PathTooLong {
        path: path.to_string(),
        len: bytes.len(),
    })?;
    Ok((addr, len))
}

/// A new nonblocking, close-on-exec `AF_UNIX` stream socket.
fn stream_socket() -> Result<OwnedFd, UnixError> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(UnixError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The listening socket at `uds_path`.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Binds and listens at `path`. Fails (`EADDRINUSE`) when a file already exists there.
    pub fn bind(path: &str) -> Result<Listener, UnixError> {
        let (addr, len) = sockaddr(path)?;
        let fd = stream_socket()?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if rc != 0 {
            return Err(UnixError::Bind {
                path: path.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: listen(2) on a socket this function owns.
        if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } != 0 {
            return Err(UnixError::Listen {
                path: path.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Listener { fd })
    }

    /// The next pending connection (nonblocking, close-on-exec), or `None` when there is none.
    pub fn accept(&self) -> io::Result<Option<Stream>> {
        // SAFETY: accept4(2) without an address buffer (both pointers null is allowed).
        let fd = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                // The peer gave up between readiness and accept: nothing to take.
                _ if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: `fd` was just returned by accept4(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Some(Stream { fd }))
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A connected, nonblocking `AF_UNIX` stream.
#[derive(Debug)]
pub struct Stream {
    fd: OwnedFd,
}

impl Stream {
    /// Connects to the listener at `path` without blocking: a listener whose backlog is full
    /// (`EAGAIN`), a missing file or nobody listening are all errors.
    pub fn connect(path: &str) -> Result<Stream, UnixError> {
        let (addr, len) = sockaddr(path)?;
        let fd = stream_socket()?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if rc != 0 {
            return Err(UnixError::Connect {
                path: path.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Stream { fd })
    }

    /// A connected pair (for tests).
    #[cfg(test)]
    pub fn pair() -> io::Result<(Stream, Stream)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair(2) writes two descriptors into `fds`.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        Ok(unsafe {
            (
                Stream {
                    fd: OwnedFd::from_raw_fd(fds[0]),
                },
                Stream {
                    fd: OwnedFd::from_raw_fd(fds[1]),
                },
            )
        })
    }

    fn recv_flags(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags | libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Reads what is there (0: the peer will send nothing more).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_flags(buf, 0)
    }

    /// Looks at what is there without taking it.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_flags(buf, libc::MSG_PEEK)
    }

    /// Writes what fits now.
    pub fn send(&self, data: &[u8]) -> io::Result<usize> {
        // SAFETY: send(2) reads at most `data.len()` bytes from `data`.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Tells the peer nothing more will be written (it reads end of file).
    pub fn shutdown_write(&self) -> io::Result<()> {
        // SAFETY: shutdown(2) on a socket this value owns.
        if unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert!(matches!(sockaddr(""), Err(UnixError::PathTooLong { .. })));
        assert!(matches!(sockaddr("a\0b"), Err(UnixError::PathNul { .. })));
        let long = "x".repeat(108);
        assert!(matches!(
            sockaddr(&long),
            Err(UnixError::PathTooLong { len: 108, .. })
        ));
        assert!(sockaddr(&"x".repeat(107)).is_ok());
    }

    #[test]
    fn bind_accept_connect_send_recv() {
        let dir = std::env::temp_dir().join(format!("kiln-vsock-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let _ = std::fs::remove_file(&path);
        let p = path.to_str().unwrap();
        let l = Listener::bind(p).unwrap();
        assert!(matches!(Listener::bind(p), Err(UnixError::Bind { .. })));
        assert!(l.accept().unwrap().is_none());
        let c = Stream::connect(p).unwrap();
        let s = l.accept().unwrap().unwrap();
        assert_eq!(c.send(b"hello\n").unwrap(), 6);
        let mut buf = [0u8; 16];
        assert_eq!(s.peek(&mut buf).unwrap(), 6);
        assert_eq!(s.recv(&mut buf[..2]).unwrap(), 2);
        assert_eq!(&buf[..2], b"he");
        assert_eq!(s.recv(&mut buf).unwrap(), 4);
        assert_eq!(
            s.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        c.shutdown_write().unwrap();
        assert_eq!(s.recv(&mut buf).unwrap(), 0, "end of file after shutdown");
        drop(c);
        assert!(s.send(b"x").is_err(), "EPIPE, not SIGPIPE");
        assert!(matches!(
            Stream::connect(dir.join("nope").to_str().unwrap()),
            Err(UnixError::Connect { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
