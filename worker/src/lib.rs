//! Kiln's host worker (`kiln`): the model orchestrator that runs every function instance in
//! its own jail and microVM.
//!
//! - [`cli`]: the command line (`kiln invoke`, `kiln serve`).
//! - [`function`]: the registry of functions, built into images by `kiln_guest_builder`.
//! - [`instance`]: one jailed microVM: start (jailer + VMM + guest `Hello`), invoke, stop.
//! - [`vmm_exit`]: the VMM's exit codes the worker interprets (the contract of docs/vmm.md).
//! - [`channel`]: the framed vsock stream to a guest (`kiln_protocol`).
//! - [`context`]: an invocation's Lambda context (request id, ARN, ...).
//! - [`pool`]: warm instances per function, concurrency limits, the idle reaper.
//! - [`blank_pool`]: pre-jailed blank instances that cold starts take (`--blank-pool`).
//! - [`server`]: HTTP for `kiln serve` (Unix socket and TCP): Kiln's API and Lambda's Invoke
//!   API; the HTTP status of every error.
//! - [`timing`]: the phases of an invocation.
//! - [`sys`]: the system calls std does not wrap.
//! - [`sync`]: the poison-tolerant lock helpers.

/// `eprintln!` that drops a message stderr cannot take (a pipe nobody reads any more)
/// instead of panicking: `kiln_argv::stderr`.
macro_rules! eprintln {
    ($($arg:tt)*) => {
        kiln_argv::stderr::line(format_args!($($arg)*))
    };
}

pub mod blank_pool;
pub mod channel;
pub mod cli;
pub mod context;
pub mod function;
pub mod instance;
pub mod pool;
pub mod server;
pub mod sync;
pub mod sys;
pub mod timing;
pub mod vmm_exit;
