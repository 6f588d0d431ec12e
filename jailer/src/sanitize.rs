//! The jailer's first step: start from a clean process — no inherited file descriptors
//! beyond stdio, no environment, default signal dispositions, an empty signal mask and a
//! strict umask.
//!
//! Raw calls: `close_range` (nix has no wrapper) and `signal` over every signal number up
//! to SIGRTMAX (nix's `Signal` has no real-time signals).

use std::io;

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{umask, Mode};

use crate::sys::cvt_long;

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

/// Removes every environment variable. The VMM is later exec'd with an environment of the
/// jailer's own making (only the host CPUID, `host_cpuid.rs`), so nothing from the caller
/// reaches it.
pub fn clear_environment() {
    let keys: Vec<_> = std::env::vars_os().map(|(k, _)| k).collect();
    for k in keys {
        // Single-threaded at this point: no other thread reads the environment.
        std::env::remove_var(k);
    }
}

/// Sets the umask so nothing is created more open than the code asks for.
pub fn strict_umask() {
    umask(Mode::from_bits_truncate(0o077));
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
            // The C library reserves a few real-time signals for itself and refuses them: skip.
            if err.raw_os_error() == Some(libc::EINVAL) {
                continue;
            }
            return Err(SanitizeError::Signal {
                signal,
                source: err,
            });
        }
    }
    set_signal_mask(SigmaskHow::SIG_SETMASK, &[])
}

/// Blocks (`SIG_BLOCK`), unblocks (`SIG_UNBLOCK`) or sets (`SIG_SETMASK`) `signals`.
pub fn set_signal_mask(how: SigmaskHow, signals: &[Signal]) -> Result<(), SanitizeError> {
    let set: SigSet = signals.iter().copied().collect();
    sigprocmask(how, Some(&set), None).map_err(|e| SanitizeError::SigMask(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_mask_holds_what_was_blocked() {
        // The mask is per thread: this test's thread only.
        let blocked = [Signal::SIGTERM, Signal::SIGCHLD];
        set_signal_mask(SigmaskHow::SIG_BLOCK, &blocked).unwrap();
        let mask = SigSet::thread_get_mask().unwrap();
        assert!(mask.contains(Signal::SIGTERM) && mask.contains(Signal::SIGCHLD));
        assert!(!mask.contains(Signal::SIGINT));
        set_signal_mask(SigmaskHow::SIG_UNBLOCK, &blocked).unwrap();
        let mask = SigSet::thread_get_mask().unwrap();
        assert!(!mask.contains(Signal::SIGTERM) && !mask.contains(Signal::SIGCHLD));
    }
}
