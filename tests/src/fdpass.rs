//! Passing a descriptor over a connected Unix socket (SCM_RIGHTS): the host side hands a
//! jailed probe a descriptor of a host directory (a careless or compromised host process),
//! and the probe tries to reach a file through it.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Size of one descriptor in an SCM_RIGHTS message.
const FD_BYTES: u32 = libc::c_int::BITS / 8;

/// Calls `f` with a one-byte message that has room for one descriptor, as `sendmsg` reads
/// it and `recvmsg` fills it: its pointers point into buffers that outlive the call.
fn with_message<T>(f: impl FnOnce(&mut libc::msghdr) -> T) -> T {
    let mut byte = [b'x'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(FD_BYTES) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // usize with glibc, u32 with musl.
    msg.msg_controllen = space
        .try_into()
        .expect("a one-descriptor control buffer fits");
    f(&mut msg)
}

/// Sends `fd` over a connected Unix socket.
pub fn send_fd(socket: &UnixStream, fd: &impl AsRawFd) -> std::io::Result<()> {
    let n = with_message(|msg| {
        // SAFETY: the control buffer holds one full header of CMSG_SPACE(FD_BYTES) bytes, so
        // the first header and its data fit; the descriptor is written unaligned.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(FD_BYTES) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), fd.as_raw_fd());
        }
        // SAFETY: sendmsg reads the buffers `msg` describes, all alive for the call.
        unsafe { libc::sendmsg(socket.as_raw_fd(), msg, 0) }
    });
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one descriptor (close-on-exec) on a connected Unix socket: `None` when the
/// message carried none.
pub fn recv_fd(socket: RawFd) -> std::io::Result<Option<OwnedFd>> {
    with_message(|msg| {
        // SAFETY: recvmsg fills the buffers `msg` describes, all alive for the call.
        let n = unsafe { libc::recvmsg(socket, msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `msg` was filled by recvmsg; the first header, if any, lies in its control
        // buffer.
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
        if cmsg.is_null() {
            return Ok(None);
        }
        // SAFETY: an SCM_RIGHTS header carries at least one descriptor; read unaligned.
        let fd: RawFd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
        // SAFETY: the descriptor was just received and is owned by nothing else.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
    })
}

/// Opens `name` read-only relative to the directory `dir` (`openat`).
pub fn open_in(dir: &OwnedFd, name: &str) -> std::io::Result<File> {
    let name = CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: openat relative to a directory descriptor we hold, with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_directory_descriptor_crosses_a_socket_and_opens_a_file_in_it() {
        let dir = crate::ScratchDir::new("kiln-fdpass");
        dir.write("secret", b"hidden");
        let (a, b) = UnixStream::pair().expect("socketpair");
        send_fd(&a, &File::open(dir.path()).expect("open dir")).expect("send");
        let got = recv_fd(b.as_raw_fd()).expect("recv").expect("a descriptor");
        let mut text = String::new();
        open_in(&got, "secret")
            .expect("openat")
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, "hidden");
        assert_eq!(
            open_in(&got, "missing")
                .map(drop)
                .map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENOENT))
        );
    }

    #[test]
    fn a_message_without_a_descriptor_is_none() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        std::io::Write::write_all(&mut &a, b"x").expect("write");
        assert!(recv_fd(b.as_raw_fd()).expect("recv").is_none());
    }
}
