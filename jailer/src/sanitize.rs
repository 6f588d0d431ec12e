//! Step 1: start from a clean process — no inherited file descriptors beyond stdio, no
//! environment, default signal dispositions, an empty signal mask and a strict umask.

use std::io;

use crate::sys::{cvt, cvt_long};

#[derive(Debug, thiserror::Error)]
pub enum SanitizeError {
    #[error("close_range(3, ~0) of inherited file descriptors: {0}")]
    CloseRange(#[source] io::Error),
    #[error("resetting the disposition of signal {signal}: {source}")]
    Signal { signal: i32, source: io::Error },
    #[error("setting the signal mask: {0}")]
    SigMask(#[source] io::Error),
}

/// Closes every file descriptor above 2 (close_range(2), Linux 5.9+).
pub fn close_inherited_fds() -> Result<(), SanitizeError> {
    // SAFETY: close_range takes plain integers; closing descriptors we do not own is the
    // point, and nothing in this process holds one above 2 yet (std opens none before main).
    cvt_long(unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) })
        .map_err(SanitizeError::CloseRange)?;
    Ok(())
}

/// Marks every descriptor above 2 close-on-exec (the exec pipe must stay usable until the
/// exec itself, which then closes everything).
pub fn cloexec_inherited_fds() -> Result<(), SanitizeError> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    })
    .map_err(SanitizeError::CloseRange)?;
    Ok(())
}

/// Removes every environment variable. The VMM is later exec'd with an empty environment
/// as well, so nothing from the caller reaches it.
pub fn clear_environment() {
    let keys: Vec<_> = std::env::vars_os().map(|(k, _)| k).collect();
    for k in keys {
        // Single-threaded at this point: no other thread reads the environment.
        std::env::remove_var(k);
    }
}

/// Sets the umask so nothing is created more open than the code asks for.
pub fn strict_umask() {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
}

/// Resets every catchable signal to its default action and unblocks all signals. With
/// `ignore_sigpipe`, SIGPIPE stays ignored (the jailer itself prefers EPIPE errors); before
/// exec it is reset too.
pub fn reset_signals(ignore_sigpipe: bool) -> Result<(), SanitizeError> {
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        let action = if signal == libc::SIGPIPE && ignore_sigpipe {
            libc::SIG_IGN
        } else {
            libc::SIG_DFL
        };
        // SAFETY: installs SIG_DFL/SIG_IGN (no handler code runs); the old action is not
        // needed.
        let ret = unsafe { libc::signal(signal, action) };
        if ret == libc::SIG_ERR {
            let err = io::Error::last_os_error();
            // glibc reserves a few real-time signals for itself and refuses them: skip.
            if err.raw_os_error() == Some(libc::EINVAL) {
                continue;
            }
            return Err(SanitizeError::Signal {
                signal,
                source: err,
            });
        }
    }
    set_signal_mask(&[], libc::SIG_SETMASK)
}

/// Blocks (`SIG_BLOCK`), unblocks (`SIG_UNBLOCK`) or sets (`SIG_SETMASK`) `signals`.
pub fn set_signal_mask(signals: &[i32], how: libc::c_int) -> Result<(), SanitizeError> {
    let set = signal_set(signals);
    // SAFETY: `set` is an initialised sigset_t; the old mask is not requested.
    cvt(unsafe { libc::sigprocmask(how, &set, std::ptr::null_mut()) })
        .map_err(SanitizeError::SigMask)?;
    Ok(())
}

/// A sigset_t holding `signals`.
pub fn signal_set(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: as above; an invalid signal number only makes sigaddset return EINVAL.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_set_holds_what_was_added() {
        let set = signal_set(&[libc::SIGTERM, libc::SIGCHLD]);
        // SAFETY: `set` is initialised.
        unsafe {
            assert_eq!(libc::sigismember(&set, libc::SIGTERM), 1);
            assert_eq!(libc::sigismember(&set, libc::SIGCHLD), 1);
            assert_eq!(libc::sigismember(&set, libc::SIGINT), 0);
        }
    }
}
