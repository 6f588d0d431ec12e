//! The thread that runs one vCPU.
//!
//! It loops on `KVM_RUN`, serving port-I/O and MMIO exits from the buses. An exit the guest
//! cannot continue from (triple fault, KVM internal/emulation error, failed entry, an
//! unexpected exit, a `KVM_RUN` failure, or a panic of the thread) is reported to the run
//! loop through the [`ExitNotifier`] with the vCPU index, the exit reason and RIP, and the
//! thread ends. The run loop decides what the process does.
//!
//! Control: the run loop sends [`VcpuCommand`]s and then kicks the thread
//! ([`crate::signals::kick`]); the kick makes `KVM_RUN` return at once (its handler sets
//! `immediate_exit`), the thread drains its commands, and acknowledges Pause/Resume with a
//! [`VcpuAck`]. A paused thread blocks on its command channel and runs no guest code; told
//! to save its state (a snapshot), it reads it from KVM and answers with it, still paused.

use super::vcpu::Vcpu;
use super::vcpu_state::{VcpuState, VcpuStateError};
use crate::devices::bus::Bus;
use crate::exit::{ExitNotifier, FaultKind, VmExit};
use crate::metrics::METRICS;
use crate::signals;
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// `KVM_INTERNAL_ERROR_EMULATION`.
const SUBERROR_EMULATION: u32 = 1;
/// `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`.
const EMULATION_FLAG_INSN_BYTES: u64 = 1;
/// Longest x86 instruction.
const MAX_INSN_LEN: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuCommand {
    Pause,
    Resume,
    Stop,
    /// Read the vCPU's state for a snapshot (sent while paused).
    SaveState,
}

#[derive(Debug)]
pub enum VcpuAck {
    Paused(u8),
    Resumed(u8),
    Saved(u8, Box<Result<VcpuState, VcpuStateError>>),
    /// The thread's last word: its vCPU descriptor is closed and it is returning, so a
    /// join waits for no more than the thread's exit (teardown waits for this instead of
    /// polling).
    Ended(u8),
}

/// What a vCPU thread shares with the rest of the VMM.
#[derive(Clone)]
pub struct VcpuShared {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exits: Arc<ExitNotifier>,
    pub acks: Sender<VcpuAck>,
    /// Used to show the faulting instruction's bytes.
    pub mem: GuestMemoryMmap,
    /// `--strict-io`: an access no device handles stops the VM instead of being ignored.
    pub strict_io: bool,
    /// The MSRs a saved vCPU state holds (the VM's snapshot capabilities).
    pub snapshot_msrs: Arc<[u32]>,
    /// The VM's coalesced MMIO ring, drained after every `KVM_RUN` (before its exit is
    /// served), when the VM coalesces writes ([`super::coalesced`]).
    pub coalesced: Option<Arc<super::coalesced::CoalescedRing>>,
}

/// The run loop's handle on a running vCPU thread.
pub struct VcpuHandle {
    pub index: u8,
    commands: Sender<VcpuCommand>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// Sends `cmd` and kicks the thread out of `KVM_RUN`. False if the thread has ended.
    pub fn command(&self, cmd: VcpuCommand) -> bool {
        if self.commands.send(cmd).is_err() {
            return false;
        }
        match &self.thread {
            Some(t) if !t.is_finished() => signals::kick(t).is_ok(),
            _ => false,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Joins the thread, which said it has [`VcpuAck::Ended`] (so this does not block for
    /// longer than the thread takes to return).
    pub fn join_ended(&mut self) {
        if let Some(t) = self.thread.take() {
            // As in `try_join`: nothing else to collect.
            let _ = t.join();
        }
    }

    /// Joins the thread if it has ended; true when it is gone.
    pub fn try_join(&mut self) -> bool {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            if let Some(t) = self.thread.take() {
                // The thread's own panics are caught and reported; nothing else to collect.
                let _ = t.join();
            }
        }
        self.thread.is_none()
    }
}

/// What one trip through `KVM_RUN` asks for.
enum Outcome {
    Continue,
    /// `KVM_RUN` returned early (kick or signal): look at the commands.
    Interrupted,
    Exit(VmExit),
    Fault {
        kind: FaultKind,
        detail: String,
    },
}

struct Runner {
    exits: u64,
    vcpu: Vcpu,
    shared: VcpuShared,
    commands: Receiver<VcpuCommand>,
}

/// A vCPU thread started ahead of its vCPU: it has installed its seccomp filter and waits
/// for [`Parked::start`]; dropped unstarted, it ends without running anything.
pub struct Parked {
    index: u8,
    start: std::sync::mpsc::SyncSender<(Vcpu, VcpuShared)>,
    commands: Sender<VcpuCommand>,
    thread: JoinHandle<()>,
}

/// Starts the thread of vCPU `index` before the vCPU is ready (its creation and seccomp
/// filter then overlap the rest of the build); it runs guest code once started, or
/// (`paused`, a restored microVM) acknowledges a pause and waits for `Resume` before its
/// first `KVM_RUN`.
pub fn park(index: u8, paused: bool) -> std::io::Result<Parked> {
    let (tx, rx) = std::sync::mpsc::channel();
    if paused {
        // The receiver is alive: this send cannot fail.
        let _ = tx.send(VcpuCommand::Pause);
    }
    let (start_tx, start_rx) = std::sync::mpsc::sync_channel::<(Vcpu, VcpuShared)>(1);
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            // Before the first KVM_RUN: the guest's exits are untrusted input.
            crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu);
            // No vCPU (the build failed): nothing to run.
            let Ok((vcpu, shared)) = start_rx.recv() else {
                return;
            };
            let exits = shared.exits.clone();
            let acks = shared.acks.clone();
            let mut runner = Runner {
                exits: 0,
                vcpu,
                shared,
                commands: rx,
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.run()));
            // SAFETY: null unregisters the immediate_exit pointer; always sound.
            unsafe { signals::set_immediate_exit_ptr(std::ptr::null_mut()) };
            if let Err(payload) = result {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic payload".into());
                exits.notify(VmExit::VcpuPanic { index, message });
            }
            // The vCPU's descriptor and kvm_run mapping are released before the last word.
            drop(runner);
            let _ = acks.send(VcpuAck::Ended(index));
        })?;
    Ok(Parked {
        index,
        start: start_tx,
        commands: tx,
        thread,
    })
}

impl Parked {
    /// Hands the thread its vCPU (of the same index): it runs it from now on.
    pub fn start(self, vcpu: Vcpu, shared: VcpuShared) -> std::io::Result<VcpuHandle> {
        let index = self.index;
        if vcpu.index != index {
            return Err(std::io::Error::other(format!(
                "vCPU {} handed to the thread of vCPU {index}",
                vcpu.index
            )));
        }
        self.start
            .send((vcpu, shared))
            .map_err(|_| std::io::Error::other(format!("the thread of vCPU {index} ended")))?;
        Ok(VcpuHandle {
            index,
            commands: self.commands,
            thread: Some(self.thread),
        })
    }
}

/// Starts the thread for `vcpu` ([`park`] then [`Parked::start`]).
pub fn spawn(vcpu: Vcpu, shared: VcpuShared, paused: bool) -> std::io::Result<VcpuHandle> {
    park(vcpu.index, paused)?.start(vcpu, shared)
}

/// After a port or MMIO exit: go on, unless no device handled the access and `--strict-io`
/// asks for such a guest to be stopped.
fn io_outcome(
    strict: bool,
    handled: bool,
    unhandled: &crate::metrics::Counter,
    what: &str,
    addr: u64,
    len: usize,
) -> Outcome {
    if !handled {
        unhandled.inc();
    }
    if handled || !strict {
        return Outcome::Continue;
    }
    Outcome::Fault {
        kind: FaultKind::UnhandledIo,
        detail: format!("{what} {addr:#x} ({len}-byte access) with no device (--strict-io)"),
    }
}

impl Runner {
    fn run(&mut self) {
        let immediate_exit: *mut u8 = &mut self.vcpu.fd.get_kvm_run().immediate_exit;
        // SAFETY: the pointer is into this vCPU's kvm_run mapping, owned by `self.vcpu`,
        // which outlives this call; the thread unregisters it before `self.vcpu` is dropped.
        unsafe { signals::set_immediate_exit_ptr(immediate_exit) };
        // A command sent before the pointer was registered had its kick lost: look now.
        if !self.obey_commands() {
            return;
        }
        loop {
            match self.run_once() {
                // A device may have ended the VM (the guest's reset request): like a CPU in
                // reset, this vCPU executes nothing more.
                Outcome::Continue if self.shared.exits.is_stopping() => return,
                Outcome::Continue => {}
                Outcome::Interrupted => {
                    signals::clear_immediate_exit();
                    if !self.obey_commands() {
                        return;
                    }
                }
                Outcome::Exit(exit) => {
                    self.shared.exits.notify(exit);
                    return;
                }
                Outcome::Fault { kind, detail } => {
                    let exit = self.describe_fault(kind, detail);
                    self.shared.exits.notify(exit);
                    return;
                }
            }
        }
    }

    /// Handles pending commands; false when the thread must end.
    fn obey_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(VcpuCommand::Stop) | Err(TryRecvError::Disconnected) => {
                    self.log_final_state();
                    return false;
                }
                Ok(VcpuCommand::Resume) => {
                    let _ = self.shared.acks.send(VcpuAck::Resumed(self.vcpu.index));
                }
                Ok(VcpuCommand::SaveState) => self.save_state(),
                Ok(VcpuCommand::Pause) => {
                    let _ = self.shared.acks.send(VcpuAck::Paused(self.vcpu.index));
                    // Paused: no guest code runs until Resume or Stop.
                    loop {
                        match self.commands.recv() {
                            Ok(VcpuCommand::Resume) => {
                                let _ = self.shared.acks.send(VcpuAck::Resumed(self.vcpu.index));
                                break;
                            }
                            Ok(VcpuCommand::Pause) => {
                                let _ = self.shared.acks.send(VcpuAck::Paused(self.vcpu.index));
                            }
                            Ok(VcpuCommand::SaveState) => self.save_state(),
                            Ok(VcpuCommand::Stop) | Err(_) => return false,
                        }
                    }
                    // Kicks received while paused set immediate_exit; drop that.
                    signals::clear_immediate_exit();
                }
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    /// Reads the vCPU's state for a snapshot and sends it to the run loop. The thread is
    /// out of `KVM_RUN` (its last run was interrupted, so a port or MMIO access it served
    /// has completed).
    fn save_state(&mut self) {
        let index = self.vcpu.index;
        let state = VcpuState::save(&self.vcpu.fd, index, &self.shared.snapshot_msrs);
        let _ = self
            .shared
            .acks
            .send(VcpuAck::Saved(index, Box::new(state)));
    }

    /// Where the vCPU was when told to stop (debug log: shows where a hung guest spins).
    fn log_final_state(&mut self) {
        if !crate::logger::enabled(crate::logger::Level::Debug) {
            return;
        }
        let rip = self.vcpu.fd.get_regs().map_or_else(
            |e| format!("unavailable ({e})"),
            |r| format!("{:#x}", r.rip),
        );
        let mp = self
            .vcpu
            .fd
            .get_mp_state()
            .map_or_else(|e| format!("unavailable ({e})"), |m| m.mp_state.to_string());
        crate::log_debug!(
            "vCPU {} stopped by the VMM at RIP {rip} (mp_state {mp}) after {} exits",
            self.vcpu.index,
            self.exits
        );
    }

    fn run_once(&mut self) -> Outcome {
        self.exits += 1;
        let shared = &self.shared;
        let result = self.vcpu.fd.run();
        crate::metrics::count_vcpu_exit(&result);
        // The writes KVM queued come before whatever ended this run.
        if let Some(u) = shared
            .coalesced
            .as_ref()
            .and_then(|r| r.drain(&shared.mmio))
        {
            let unhandled = &METRICS.vcpu.unhandled_mmio;
            if let fault @ Outcome::Fault { .. } = io_outcome(
                shared.strict_io,
                false,
                unhandled,
                "MMIO write to",
                u.addr,
                u.len,
            ) {
                return fault;
            }
        }
        match result {
            Ok(VcpuExit::IoOut(port, data)) => {
                let handled = shared.pio.write(u64::from(port), data);
                io_outcome(shared.strict_io, handled, &METRICS.vcpu.unhandled_io, "write to I/O port", u64::from(port), data.len())
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                let handled = shared.pio.read(u64::from(port), data);
                io_outcome(shared.strict_io, handled, &METRICS.vcpu.unhandled_io, "read from I/O port", u64::from(port), data.len())
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                let handled = shared.mmio.write(addr, data);
                io_outcome(shared.strict_io, handled, &METRICS.vcpu.unhandled_mmio, "MMIO write to", addr, data.len())
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                let handled = shared.mmio.read(addr, data);
                io_outcome(shared.strict_io, handled, &METRICS.vcpu.unhandled_mmio, "MMIO read from", addr, data.len())
            }
            Ok(VcpuExit::Intr) => Outcome::Interrupted,
            Ok(VcpuExit::Shutdown) => Outcome::Fault {
                kind: FaultKind::Shutdown,
                detail: "KVM_EXIT_SHUTDOWN (triple fault or CPU shutdown)".into(),
            },
            Ok(VcpuExit::InternalError) => Outcome::Fault { kind: FaultKind::InternalError, detail: String::new() },
            Ok(VcpuExit::FailEntry(reason, cpu)) => Outcome::Fault {
                kind: FaultKind::FailEntry,
                detail: format!("KVM_EXIT_FAIL_ENTRY (hardware entry failure reason {reason:#x}, host CPU {cpu})"),
            },
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Outcome::Exit(VmExit::GuestPowerOff),
                KVM_SYSTEM_EVENT_RESET => Outcome::Exit(VmExit::GuestReset { how: "KVM reset event" }),
                KVM_SYSTEM_EVENT_CRASH => Outcome::Fault {
                    kind: FaultKind::Crash,
                    detail: "KVM_EXIT_SYSTEM_EVENT (guest crash)".into(),
                },
                other => Outcome::Fault {
                    kind: FaultKind::UnexpectedExit,
                    detail: format!("KVM_EXIT_SYSTEM_EVENT of unknown type {other}"),
                },
            },
            Ok(other) => Outcome::Fault { kind: FaultKind::UnexpectedExit, detail: format!("unexpected exit {other:?}") },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Outcome::Interrupted,
            Err(e) => Outcome::Fault { kind: FaultKind::RunFailed, detail: format!("KVM_RUN failed: {e}") },
        }
    }

    /// Completes a fault's description with what KVM and the registers say.
    fn describe_fault(&mut self, kind: FaultKind, mut detail: String) -> VmExit {
        let regs = self.vcpu.fd.get_regs().ok();
        let rip = regs.map(|r| r.rip);
        if kind == FaultKind::InternalError {
            let run = self.vcpu.fd.get_kvm_run();
            // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, for which the kernel fills
            // the `internal` member of the union; it is plain data.
            let internal = unsafe { run.__bindgen_anon_1.internal };
            let ndata = usize::try_from(internal.ndata)
                .unwrap_or(0)
                .min(internal.data.len());
            let data = &internal.data[..ndata];
            let what = match internal.suberror {
                SUBERROR_EMULATION => "emulation failure",
                2 => "simultaneous exception",
                3 => "delivery event",
                4 => "unexpected exit reason",
                _ => "other",
            };
            detail = format!(
                "KVM_EXIT_INTERNAL_ERROR suberror {} ({what})",
                internal.suberror
            );
            let mut insn = None;
            if internal.suberror == SUBERROR_EMULATION
                && data.len() >= 3
                && data[0] & EMULATION_FLAG_INSN_BYTES != 0
            {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&data[1].to_le_bytes());
                bytes[8..].copy_from_slice(&data[2].to_le_bytes());
                let len = usize::from(bytes[0]).min(MAX_INSN_LEN);
                insn = Some(bytes[1..=len].to_vec());
            }
            if insn.is_none() {
                insn = rip.and_then(|rip| self.guest_bytes_at(rip));
            }
            if let Some(b) = insn.filter(|b| !b.is_empty()) {
                let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
                detail.push_str(&format!(", instruction bytes {}", hex.join(" ")));
            }
            if !data.is_empty() {
                let words: Vec<String> = data.iter().map(|w| format!("{w:#x}")).collect();
                detail.push_str(&format!(", data [{}]", words.join(", ")));
            }
        }
        VmExit::VcpuFault {
            index: self.vcpu.index,
            kind,
            detail,
            rip,
        }
    }

    /// Up to 15 bytes at the guest's linear address CS.base + `rip`, if mapped.
    fn guest_bytes_at(&self, rip: u64) -> Option<Vec<u8>> {
        let cs_base = self.vcpu.fd.get_sregs().ok()?.cs.base;
        let linear = cs_base.wrapping_add(rip);
        let t = self.vcpu.fd.translate_gva(linear).ok()?;
        if t.valid == 0 {
            return None;
        }
        let mut out = Vec::with_capacity(MAX_INSN_LEN);
        for i in 0..MAX_INSN_LEN as u64 {
            match self
                .shared
                .mem
                .read_obj::<u8>(GuestAddress(t.physical_address.wrapping_add(i)))
            {
                Ok(b) => out.push(b),
                Err(_) => break,
            }
        }
        Some(out)
    }
}
