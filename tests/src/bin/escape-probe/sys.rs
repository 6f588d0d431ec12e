//! Raw system calls and their results. Attempts call the kernel directly (`libc::syscall`
//! with the syscall number) rather than through the C library, so that the syscall the
//! expected outcome names is exactly the one made (glibc turns `mknod` into `mknodat`,
//! `setuid` into a signal broadcast to every thread, ...).

use std::ffi::CString;

use crate::Outcome;

/// An integer syscall argument widened to a full register (variadic `libc::syscall` would
/// leave the upper half of a 32-bit argument undefined, which matters for `long`
/// parameters).
pub fn long<T: Into<libc::c_long>>(v: T) -> libc::c_long {
    v.into()
}

/// The calling thread's errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The symbolic name of an errno value (`E123` for ones not listed).
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EDQUOT => "EDQUOT",
        libc::ENOKEY => "ENOKEY",
        libc::ESTALE => "ESTALE",
        _ => return format!("E{e}"),
    };
    name.to_owned()
}

/// The name of the thread's errno.
pub fn last_error() -> String {
    errno_name(errno())
}

/// A C string (paths and names in this binary never hold NUL).
pub fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// A raw syscall result: the value, or the errno name.
pub fn check(ret: libc::c_long) -> Result<libc::c_long, String> {
    if ret < 0 {
        Err(last_error())
    } else {
        Ok(ret)
    }
}

/// The usual shape of an attempt: an error is `Blocked(errno)`, success is `Escaped(what)`.
/// A descriptor returned on success is closed.
pub fn verdict(ret: libc::c_long, fd_result: bool, what: &str) -> Outcome {
    match check(ret) {
        Err(e) => Outcome::Blocked(e),
        Ok(v) => {
            if fd_result {
                close(v);
            }
            Outcome::Escaped(what.to_owned())
        }
    }
}

/// Closes a descriptor returned by a syscall (non-negative by construction).
pub fn close(fd: libc::c_long) {
    if let Ok(fd) = libc::c_int::try_from(fd) {
        // SAFETY: closing a descriptor this process owns and no longer uses.
        unsafe { libc::close(fd) };
    }
}

/// `openat(AT_FDCWD, path, flags, mode)` as a raw syscall.
pub fn open(path: &str, flags: libc::c_int, mode: libc::c_uint) -> libc::c_long {
    let p = cstr(path);
    // SAFETY: a NUL-terminated path that outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            p.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    }
}

/// An owned descriptor from a successful syscall.
pub struct Fd(pub libc::c_int);

impl Fd {
    pub fn from_ret(ret: libc::c_long) -> Result<Fd, String> {
        let v = check(ret)?;
        libc::c_int::try_from(v)
            .map(Fd)
            .map_err(|_| "EBADF".to_owned())
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value.
        unsafe { libc::close(self.0) };
    }
}

/// Ignores SIGXFSZ (so that writes past RLIMIT_FSIZE fail with EFBIG instead of killing).
pub fn ignore_sigxfsz() {
    // SAFETY: installs SIG_IGN; no handler code runs.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// Sleeps `ms` milliseconds (clock_nanosleep is allowed by the jail's filter).
pub fn sleep_ms(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}
