//! Kiln's VMM: one process runs exactly one KVM microVM.
//!
//! - [`resources`]: the microVM's typed configuration, shared by the config file and the API.
//! - [`api`]: the HTTP API on a Unix socket (Firecracker's paths), on its own thread.
//! - [`controller`]: applies API requests on the VMM thread.
//! - [`logger`], [`metrics`], [`timing`]: logs, JSON-line metrics, boot milestones.
//! - [`cli`]: the `vmm` command line.
//! - [`builder`]: from resources to a running microVM ([`builder::build_microvm`]).
//! - [`vmm`]: the running microVM and the VMM thread's run loop; [`exit`]: why it stopped
//!   and the process exit code.
//! - [`vstate`]: KVM VM, guest memory, vCPUs and their threads.
//! - [`arch`]: x86_64 memory layout, boot registers, CPUID, MSRs, MP table.
//! - [`loader`]: kernel, initrd, command line and boot information.
//! - [`devices`]: buses, device manager, serial console and i8042.
//! - [`signals`]: SIGTERM handling and the vCPU kick signal.
//! - [`seccomp`]: the seccomp filter of each thread kind (api, vmm, vcpu).

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
pub mod output;
pub mod resources;
pub mod seccomp;
pub mod signals;
pub mod sync;
pub mod timing;
pub mod vmm;
pub mod vstate;
