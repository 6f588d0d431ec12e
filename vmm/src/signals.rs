//! Signals the VMM uses.
//!
//! - **Termination** (SIGTERM, SIGINT): blocked in every thread and read from a signalfd
//!   by the run loop, which then stops the guest and exits 0. [`TerminationSignals::block`]
//!   must run before the process starts any thread, so every thread inherits the mask.
//! - **vCPU kick** (the first real-time signal): sent to one vCPU thread to make its
//!   `KVM_RUN` return. Its handler sets the thread's `kvm_run.immediate_exit`, so a kick
//!   that lands just before the thread enters `KVM_RUN` is not lost.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Once;

/// The signals that stop the VMM cleanly.
pub const TERMINATION_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("cannot block termination signals: {0}")]
    Block(io::Error),
    #[error("cannot create the signalfd: {0}")]
    SignalFd(io::Error),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(io::Error),
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this function; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in TERMINATION_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// A signalfd that becomes readable when SIGTERM or SIGINT arrives.
pub struct TerminationSignals {
    fd: OwnedFd,
}

impl TerminationSignals {
    /// Blocks SIGTERM and SIGINT in the calling thread (and so in every thread it starts
    /// afterwards) and opens a signalfd for them.
    pub fn block() -> Result<Self, SignalError> {
        let set = termination_set();
        // SAFETY: `set` is initialised; the old mask is not requested.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(SignalError::Block(io::Error::from_raw_os_error(rc)));
        }
        // SAFETY: -1 asks for a new signalfd; `set` is initialised.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(SignalError::SignalFd(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by signalfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TerminationSignals { fd })
    }

    /// The signal that arrived, if any (non-blocking).
    pub fn read(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let len = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `len` bytes into `info`, which is `len` bytes long.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                len,
            )
        };
        if usize::try_from(n).ok() != Some(len) {
            return None;
        }
        libc::c_int::try_from(info.ssi_signo).ok()
    }
}

impl AsRawFd for TerminationSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn vcpu_kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, while it runs a vCPU.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only a const-initialised thread-local without destructor is touched: no allocation,
    // no lock, which keeps the handler async-signal-safe.
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer is set by `set_immediate_exit_ptr` on this very thread to a
        // field of its vCPU's kvm_run mapping, and cleared before that mapping goes away.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> Result<(), SignalError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(vcpu_kick_signal(), kick_handler)
            .map_err(|e| SignalError::KickHandler(io::Error::from_raw_os_error(e.errno())));
    });
    result
}

/// Registers (or, with null, unregisters) the calling thread's `immediate_exit` byte.
///
/// # Safety
/// `p` must be null or point to the `immediate_exit` field of a `kvm_run` mapping that
/// stays mapped until this function is called again with null on the same thread.
pub unsafe fn set_immediate_exit_ptr(p: *mut u8) {
    IMMEDIATE_EXIT.with(|c| c.set(p));
}

/// Reads and clears the calling thread's `immediate_exit` byte, if registered.
pub fn clear_immediate_exit() {
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: see `set_immediate_exit_ptr`: the pointer is valid while registered.
        unsafe { std::ptr::write_volatile(p, 0) };
    }
}

/// Sends the kick signal to a thread.
pub fn kick<T>(thread: &std::thread::JoinHandle<T>) -> io::Result<()> {
    use std::os::unix::thread::JoinHandleExt;
    // std hands the pthread_t out as an integer; musl's is a pointer (glibc's an integer).
    #[allow(clippy::unnecessary_cast)]
    let handle = thread.as_pthread_t() as libc::pthread_t;
    // SAFETY: a JoinHandle exists, so the thread has not been joined and its pthread_t is
    // still valid (even if the thread has finished, pthread_kill then fails cleanly).
    let rc = unsafe { libc::pthread_kill(handle, vcpu_kick_signal()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}
