//! Raw system calls and their results. Attempts call the kernel directly (`libc::syscall`
//! with the syscall number) rather than through the C library, so that the syscall the
//! expected outcome names is exactly the one made (glibc turns `mknod` into `mknodat`,
//! `setuid` into a signal broadcast to every thread, ...).

use std::ffi::CString;

use crate::Outcome;

pub use kiln_tests::errno::{errno, errno_name, last_error};

/// An integer syscall argument widened to a full register (variadic `libc::syscall` would
/// leave the upper half of a 32-bit argument undefined, which matters for `long`
/// parameters).
pub fn long<T: Into<libc::c_long>>(v: T) -> libc::c_long {
    v.into()
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

/// `open(path, flags, mode)` as a raw syscall: the call the VMM's C library (musl) makes,
/// and so the one its filter allows (`openat` is not).
pub fn open(path: &str, flags: libc::c_int, mode: libc::c_uint) -> libc::c_long {
    let p = cstr(path);
    // SAFETY: a NUL-terminated path that outlives the call.
    unsafe { libc::syscall(libc::SYS_open, p.as_ptr(), flags | libc::O_CLOEXEC, mode) }
}

/// `mmap(NULL, len, prot, flags, fd, 0)` as a raw syscall (musl's wrapper turns the
/// kernel's EPERM into ENOMEM for anonymous mappings). Returns the address or the errno.
pub fn mmap(
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    fd: libc::c_int,
) -> Result<*mut libc::c_void, String> {
    // SAFETY: a new mapping at an address the kernel chooses: no existing memory changes.
    let ret = unsafe { libc::syscall(libc::SYS_mmap, 0usize, len, prot, flags, fd, 0usize) };
    check(ret).map(|addr| addr as *mut libc::c_void)
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

/// Writes all of `bytes` to `fd`: the errno name of the first failed write.
pub fn write_all(fd: &Fd, bytes: &[u8]) -> Result<(), String> {
    let mut off = 0;
    while off < bytes.len() {
        let rest = bytes.get(off..).unwrap_or_default();
        // SAFETY: writes at most rest.len() bytes from rest.
        let n = unsafe { libc::write(fd.0, rest.as_ptr().cast(), rest.len()) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => off += n,
            _ => return Err(last_error()),
        }
    }
    Ok(())
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
