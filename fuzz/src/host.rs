//! The host side of the device targets: a stand-in for a tap device, and a scratch directory
//! for vsock's Unix sockets.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::PathBuf;
use vmm::devices::virtio::net::tap::Tap;

/// A tap stand-in and the host's end of it: a nonblocking `SOCK_SEQPACKET` pair carries one
/// frame per read and write, as a tap does (the device's end is `Tap::from_file`).
pub fn tap_pair() -> (Tap, File) {
    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, which has room for them.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (dev, host) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    (Tap::from_file(dev, "fuzz-tap"), host)
}

/// Sets a socket's send and receive buffers (the kernel's minimum when 0).
pub fn set_buffers(fd: RawFd, send: i32, recv: i32) {
    for (opt, v) in [(libc::SO_SNDBUF, send), (libc::SO_RCVBUF, recv)] {
        // SAFETY: setsockopt reads one int through a pointer to a live local.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                std::ptr::addr_of!(v).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
    }
}

/// Bytes a socket holds unread (SIOCINQ) — what a host peer has not read yet.
pub fn unread(fd: &impl AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a pointer to a live local.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

/// A directory of this process for vsock's sockets (`<dir>/v.sock`, `<dir>/v.sock_<port>`),
/// emptied on every call: each input starts without a socket of the last one.
pub fn vsock_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-fuzz-vsock-{}", std::process::id()));
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    } else {
        std::fs::create_dir_all(&dir).expect("a scratch directory for vsock sockets");
        crate::remove_at_exit(dir.clone());
    }
    dir
}
