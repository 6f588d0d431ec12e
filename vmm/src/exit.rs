//! Why the microVM stopped, the VMM's exit code for it, and how the vCPU threads and devices
//! tell the run loop.
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | the guest rebooted/reset or powered off, or SIGTERM/SIGINT stopped the VMM |
//! | 1    | the VMM failed while running (its own I/O, an unresponsive vCPU) |
//! | 2    | the guest crashed: triple fault (`KVM_EXIT_SHUTDOWN`) or a crash event |
//! | 3    | a vCPU hit an error: KVM internal/emulation error, failed entry, unknown exit, `KVM_RUN` failure |
//! | 4    | a vCPU thread panicked |
//! | 5    | the microVM could not be built or started (KVM, memory, kernel, devices) |
//! | 6    | `--strict-io`: the guest accessed an I/O port or MMIO address with no device |
//! | 152  | bad configuration (config file unreadable, invalid JSON, invalid value) |
//! | 153  | bad command-line arguments |

use crate::sync::lock;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

pub mod code {
    pub const OK: i32 = 0;
    pub const GENERIC: i32 = 1;
    pub const GUEST_CRASH: i32 = 2;
    pub const VCPU_ERROR: i32 = 3;
    pub const VCPU_PANIC: i32 = 4;
    pub const START_FAILED: i32 = 5;
    /// `--strict-io`: the guest accessed a port or MMIO address no device handles.
    pub const STRICT_IO: i32 = 6;
    pub const BAD_CONFIG: i32 = 152;
    pub const BAD_ARGS: i32 = 153;
}

/// What stopped a vCPU for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// `KVM_EXIT_SHUTDOWN`: triple fault (or the guest shut the CPU down).
    Shutdown,
    /// `KVM_SYSTEM_EVENT_CRASH`.
    Crash,
    /// `KVM_EXIT_INTERNAL_ERROR` (emulation failure and the like).
    InternalError,
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry,
    /// An exit the VMM does not handle.
    UnexpectedExit,
    /// `KVM_RUN` itself failed.
    RunFailed,
    /// `--strict-io`: a port or MMIO access no device handles.
    UnhandledIo,
}

/// Why the microVM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (`reboot`): i8042 CPU reset or a KVM reset event.
    GuestReset { how: &'static str },
    /// The guest powered off (KVM shutdown event).
    GuestPowerOff,
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// The embedding code (e.g. the API) asked the VMM to stop.
    Requested { code: i32, reason: String },
    /// A vCPU stopped on something the guest cannot recover from.
    VcpuFault {
        index: u8,
        kind: FaultKind,
        detail: String,
        rip: Option<u64>,
    },
    /// A vCPU thread panicked.
    VcpuPanic { index: u8, message: String },
    /// The VMM's own machinery failed while the guest ran.
    VmmError(String),
}

impl VmExit {
    /// The process exit code for this exit.
    pub fn code(&self) -> i32 {
        match self {
            VmExit::GuestReset { .. } | VmExit::GuestPowerOff | VmExit::Signal(_) => code::OK,
            VmExit::Requested { code, .. } => *code,
            VmExit::VcpuFault {
                kind: FaultKind::Shutdown | FaultKind::Crash,
                ..
            } => code::GUEST_CRASH,
            VmExit::VcpuFault {
                kind: FaultKind::UnhandledIo,
                ..
            } => code::STRICT_IO,
            VmExit::VcpuFault { .. } => code::VCPU_ERROR,
            VmExit::VcpuPanic { .. } => code::VCPU_PANIC,
            VmExit::VmmError(_) => code::GENERIC,
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::GuestReset { how } => {
                write!(f, "the guest reset the machine ({how}); stopping")
            }
            VmExit::GuestPowerOff => write!(f, "the guest powered off; stopping"),
            VmExit::Signal(s) => {
                let name = match *s {
                    libc::SIGTERM => "SIGTERM",
                    libc::SIGINT => "SIGINT",
                    _ => "a signal",
                };
                write!(f, "received {name}; stopping the guest")
            }
            VmExit::Requested { reason, .. } => write!(f, "stop requested: {reason}"),
            VmExit::VcpuFault {
                index, detail, rip, ..
            } => {
                write!(f, "vCPU {index} stopped: {detail}")?;
                match rip {
                    Some(rip) => write!(f, " at RIP {rip:#x}"),
                    None => write!(f, " (RIP unavailable)"),
                }
            }
            VmExit::VcpuPanic { index, message } => {
                write!(f, "vCPU {index} thread panicked: {message}")
            }
            VmExit::VmmError(e) => write!(f, "VMM error: {e}"),
        }
    }
}

/// Collects the first reason to stop and wakes the run loop through an eventfd.
pub struct ExitNotifier {
    evt: EventFd,
    first: Mutex<Option<VmExit>>,
    /// Set by the first notification: vCPUs stop running guest code at their next exit.
    stopping: AtomicBool,
}

impl ExitNotifier {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitNotifier {
            evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            first: Mutex::new(None),
            stopping: AtomicBool::new(false),
        })
    }

    /// Records `exit` unless an earlier reason is pending, and wakes the run loop.
    pub fn notify(&self, exit: VmExit) {
        let mut first = lock(&self.first);
        if first.is_none() {
            *first = Some(exit);
        }
        self.stopping.store(true, Ordering::Release);
        drop(first);
        // Fails only if the counter would overflow, in which case the loop is awake anyway.
        let _ = self.evt.write(1);
    }

    /// Whether a reason to stop has been reported (a guest reset, for instance): a vCPU
    /// that sees this after an exit runs no more guest code.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The pending reason, if any; clears the eventfd.
    pub fn take(&self) -> Option<VmExit> {
        let _ = self.evt.read();
        lock(&self.first).take()
    }
}

impl AsRawFd for ExitNotifier {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(VmExit::GuestReset { how: "i8042" }.code(), 0);
        assert_eq!(VmExit::Signal(libc::SIGTERM).code(), 0);
        let f = |kind| VmExit::VcpuFault {
            index: 1,
            kind,
            detail: "x".into(),
            rip: Some(0x1000),
        };
        assert_eq!(f(FaultKind::Shutdown).code(), 2);
        assert_eq!(f(FaultKind::InternalError).code(), 3);
        assert_eq!(f(FaultKind::UnhandledIo).code(), 6);
        assert_eq!(
            VmExit::VcpuPanic {
                index: 0,
                message: "m".into()
            }
            .code(),
            4
        );
        assert_eq!(
            f(FaultKind::Shutdown).to_string(),
            "vCPU 1 stopped: x at RIP 0x1000"
        );
    }

    #[test]
    fn first_reason_wins() {
        let n = ExitNotifier::new().unwrap();
        assert_eq!(n.take(), None);
        n.notify(VmExit::GuestPowerOff);
        n.notify(VmExit::Signal(libc::SIGTERM));
        assert_eq!(n.take(), Some(VmExit::GuestPowerOff));
        assert_eq!(n.take(), None);
    }
}
