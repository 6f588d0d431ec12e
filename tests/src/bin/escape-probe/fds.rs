//! Descriptors: what the parent leaked into the jail, and a descriptor of a host directory
//! handed in over a unix socket (the test plays a careless or compromised host process).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::sys::{cstr, errno, errno_name, last_error, sleep_ms};
use crate::{Attempt, Ctx, Outcome};

pub const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "fds.inherited",
        what: "use a descriptor leaked by the jailer's parent (the test leaks a host directory and a host file into the jailer)",
        run: inherited,
    },
    Attempt {
        name: "fds.passed-dir",
        what: "open a host file through a host directory descriptor received over a unix socket",
        run: passed_dir,
    },
];

/// Descriptors open in this process (0..4096).
pub fn open_fds() -> Vec<i32> {
    (0..4096)
        // SAFETY: F_GETFD only queries a descriptor number.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .collect()
}

fn inherited(ctx: &Ctx) -> Outcome {
    let extra: Vec<i32> = ctx
        .inherited_fds
        .iter()
        .copied()
        .filter(|&fd| fd > 2)
        .collect();
    if extra.is_empty() {
        return Outcome::Blocked("NONE (only 0, 1, 2 were open at start)".into());
    }
    // Try to read through each: a host directory or file would be an escape.
    let mut reached = Vec::new();
    for fd in extra {
        let mut st: libc::stat = unsafe_zeroed_stat();
        // SAFETY: fstat writes one stat into `st`.
        if unsafe { libc::fstat(fd, &mut st) } == 0 {
            reached.push(format!("fd {fd} (mode {:o})", st.st_mode));
        }
    }
    Outcome::Escaped(format!("inherited {}", reached.join(", ")))
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: stat is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Receives one descriptor on a connected unix socket.
fn recv_fd(sock: RawFd) -> Result<OwnedFd, String> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(4) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; every pointer set below points into a live buffer.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: recvmsg fills the buffers described by `msg`.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(format!("recvmsg {}", last_error()));
    }
    // SAFETY: `msg` was filled by recvmsg; the header, if any, lies in `control`.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return Err("no descriptor in the message".into());
    }
    // SAFETY: an SCM_RIGHTS header carries at least one descriptor.
    let fd: RawFd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
    // SAFETY: the descriptor was just received and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn passed_dir(ctx: &Ctx) -> Outcome {
    let Some(path) = ctx.fd_socket.as_deref() else {
        return Outcome::Error("no --fd-socket".into());
    };
    // The test binds the socket once the jail's /run exists: wait for it (bounded).
    let mut stream = None;
    for _ in 0..300 {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => sleep_ms(10),
        }
    }
    let Some(stream) = stream else {
        return Outcome::Error(format!("cannot connect to {path}"));
    };
    let dir = match recv_fd(stream.as_raw_fd()) {
        Ok(d) => d,
        Err(e) => return Outcome::Error(e),
    };
    let name = cstr("secret");
    // SAFETY: openat relative to the received directory descriptor, NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Outcome::Blocked(errno_name(errno()));
    }
    // SAFETY: the descriptor was just opened and is owned by nothing else.
    let file = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = [0u8; 64];
    // SAFETY: reads at most buf.len() bytes into buf.
    let n = unsafe { libc::read(file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let text = usize::try_from(n)
        .ok()
        .and_then(|n| buf.get(..n))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    Outcome::Escaped(format!("read the host file: {:?}", text.trim()))
}
