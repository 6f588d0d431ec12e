//! Kiln's host worker (`kiln`): the model orchestrator that runs every function instance in
//! its own jail and microVM.
//!
//! - [`cli`]: the command line (`kiln invoke`, `kiln serve`).
//! - [`function`]: the registry of functions, built into images by `kiln_guest_builder`.
//! - [`instance`]: one jailed microVM: start (jailer + VMM + guest `Hello`), invoke, stop.
//! - [`vmm_exit`]: the VMM's exit codes the worker interprets (the contract of docs/vmm.md).
//! - [`channel`]: the framed vsock stream to a guest (`kiln_protocol`).
//! - [`pool`]: warm instances per function, concurrency limits, the idle reaper.
//! - [`server`]: HTTP over a Unix socket for `kiln serve`; the HTTP status of every error.
//! - [`timing`]: the phases of an invocation.
//! - [`sys`]: the system calls std does not wrap.
//! - [`sync`]: the poison-tolerant lock helpers.

pub mod channel;
pub mod cli;
pub mod function;
pub mod instance;
pub mod pool;
pub mod server;
pub mod sync;
pub mod sys;
pub mod timing;
pub mod vmm_exit;
