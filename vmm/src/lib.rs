//! Kiln's VMM: one process runs exactly one KVM microVM.
//!
//! The `vmm` binary (`src/bin/vmm/`: its command line and `run`) is built on this library,
//! which knows nothing of the command line: the binary converts its flags into the plain
//! values the modules take. The modules, from the bottom layer up; each uses only modules
//! of its own layer or below, and no two import each other:
//!
//! 1. Foundations, used everywhere:
//!    - [`sync`]: the poison-tolerant `lock()`;
//!    - [`resources`]: the microVM's typed configuration, shared by the config file and the
//!      API;
//!    - [`metrics`]: lock-free counters, written as JSON lines; [`output`]: opening the log
//!      and metrics destinations; [`logger`]: leveled log lines; [`timing`]: boot milestones
//!      and the `--boot-timer` trace;
//!    - [`exit`]: why the microVM stopped and the process exit code; [`signals`]: SIGTERM and
//!      the vCPU kick; [`seccomp`]: the filter of each thread kind (api, vmm, vcpu);
//!    - [`snapshot`]: the snapshot file format (envelope, bounded encoding, key and MAC,
//!      memory digests), knowing nothing of what is saved.
//! 2. [`event_loop`]: the VMM thread's epoll loop; its handlers add or remove sources and
//!    stop the loop with a [`exit::VmExit`].
//! 3. The machine: [`arch`] (x86_64 memory layout, boot registers, CPUID, MSRs, MP table),
//!    [`vstate`] (KVM VM, guest memory, vCPUs and their threads), [`devices`] (buses, device
//!    manager, serial console, i8042, virtio devices on virtio-mmio), [`loader`] (kernel,
//!    initrd, command line and boot information).
//! 4. The running microVM: [`vmm`] (pause/resume, the run loop and what it watches besides
//!    the devices); [`builder`]: from resources to a running microVM
//!    ([`builder::build_microvm`]), kept apart from the run loop; [`persist`]: from a
//!    paused microVM to snapshot files and from them to a new microVM.
//! 5. The API: [`api`] (the HTTP edge on its own thread: socket, routing, the requests and
//!    answers crossing to the VMM thread, status codes) and, above it, [`controller`]
//!    (applies the requests on the VMM thread).

/// `eprintln!` that drops a message stderr cannot take (a pipe nobody reads any more)
/// instead of panicking: `kiln_argv::stderr`.
macro_rules! eprintln {
    ($($arg:tt)*) => {
        kiln_argv::stderr::line(format_args!($($arg)*))
    };
}

pub mod api;
pub mod arch;
pub mod builder;
pub mod controller;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod loader;
pub mod logger;
pub mod metrics;
pub mod mmds;
pub mod output;
pub mod persist;
pub mod random;
pub mod resources;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod sync;
#[cfg(test)]
mod test_scratch;
pub mod timing;
pub mod vmm;
pub mod vstate;
