//! The running microVM ([`Vmm`]) and what its run loop watches besides the devices.
//!
//! [`Vmm::run`] runs the VMM thread's [`EventLoop`] with the microVM as the handlers'
//! context. The loop watches the [`ExitNotifier`]'s eventfd (vCPU threads and the i8042
//! report there why the VM must stop; [`watch_exits`]), the devices' queues and descriptors,
//! and whatever the caller adds: SIGTERM's signalfd ([`watch_termination_signals`]), the
//! serial console's stdin ([`Vmm::forward_stdin_to_serial`]), the API's request eventfd. It
//! returns the [`VmExit`] that ended the VM, after stopping every vCPU; the caller turns it
//! into the process exit code.
//!
//! `pause`/`resume` really stop and restart guest execution: each vCPU thread is sent a
//! command and kicked out of `KVM_RUN`, and the call waits for every vCPU's acknowledgement.

use crate::devices::legacy::serial::{self, SerialDevice};
use crate::devices::manager::Devices;
use crate::devices::virtio::handles::{DriveUpdateError, NetUpdateError};
use crate::event_loop::{EventHandler, EventLoop, EventLoopError, Flow, SourceId, Sources};
use crate::exit::{ExitNotifier, VmExit};
use crate::mmds::{MmdsStack, SharedMmds};
use crate::resources::MmdsConfig;
use crate::resources::RateLimiterConfig;
use crate::signals::TerminationSignals;
use crate::snapshot::digest::MemoryDigest;
use crate::sync::lock;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vcpu_thread::{VcpuAck, VcpuCommand, VcpuHandle};
use crate::vstate::vm::Vm;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

/// How long pause/resume wait for every vCPU to acknowledge.
const VCPU_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long teardown waits for the vCPU threads to end.
const VCPU_JOIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long teardown waits for a vCPU thread's last word before kicking the threads again.
const VCPU_REKICK: Duration = Duration::from_millis(1);

/// Whether guest code is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VmState {
    Running,
    Paused,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("the microVM is not {0}")]
    WrongState(&'static str),
    #[error("vCPU {0} has stopped")]
    VcpuGone(u8),
    #[error("vCPU {index} did not acknowledge {what} within {VCPU_ACK_TIMEOUT:?}")]
    VcpuUnresponsive { index: u8, what: &'static str },
    #[error("the guest's keyboard buffer is full")]
    KeyboardFull,
    #[error("the microVM has no i8042 device")]
    NoKeyboard,
    #[error("{0}")]
    SaveVcpu(String),
}

/// A built, running microVM. Field order is drop order: vCPU threads are stopped (in
/// `Drop`), then devices, the VM and finally guest memory are released.
pub struct Vmm {
    vcpus: Vec<VcpuHandle>,
    acks: Receiver<VcpuAck>,
    exits: Arc<ExitNotifier>,
    devices: Devices,
    state: VmState,
    vcpu_count: u8,
    /// The memory digests of the last authenticated snapshot taken or loaded, which a diff
    /// snapshot updates (see `crate::persist`).
    memory_digest: Option<MemoryDigest>,
    /// Descriptors that live as long as the microVM (a `Uffd` restore's userfaultfd and
    /// the connection to its page-fault handler).
    held: Vec<OwnedFd>,
    // Declared after everything that uses them.
    vm: Vm,
    mem: GuestMemoryMmap,
}

impl Vmm {
    pub(crate) fn new(
        vcpus: Vec<VcpuHandle>,
        acks: Receiver<VcpuAck>,
        exits: Arc<ExitNotifier>,
        devices: Devices,
        vm: Vm,
        mem: GuestMemoryMmap,
    ) -> Self {
        let vcpu_count = u8::try_from(vcpus.len()).unwrap_or(u8::MAX);
        Vmm {
            vcpus,
            acks,
            exits,
            devices,
            state: VmState::Running,
            vcpu_count,
            memory_digest: None,
            held: Vec::new(),
            vm,
            mem,
        }
    }

    /// Keeps `fds` open for as long as the microVM.
    pub(crate) fn hold(&mut self, fds: Vec<OwnedFd>) {
        self.held.extend(fds);
    }

    /// A microVM whose vCPU threads were started paused (restored from a snapshot): waits
    /// for each to acknowledge the pause.
    pub(crate) fn started_paused(&mut self) -> Result<(), VmmError> {
        self.wait_acks("pause", |a| match a {
            VcpuAck::Paused(i) => Some(*i),
            _ => None,
        })?;
        self.state = VmState::Paused;
        Ok(())
    }

    /// Every vCPU's state, for a snapshot (the microVM must be paused).
    pub fn save_vcpu_states(&mut self) -> Result<Vec<VcpuState>, VmmError> {
        if self.state != VmState::Paused {
            return Err(VmmError::WrongState("paused"));
        }
        while self.acks.try_recv().is_ok() {}
        self.command_all(VcpuCommand::SaveState)?;
        let mut states: Vec<Option<VcpuState>> = (0..self.vcpus.len()).map(|_| None).collect();
        let deadline = Instant::now() + VCPU_ACK_TIMEOUT;
        while states.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acks.recv_timeout(left) {
                Ok(VcpuAck::Saved(i, result)) => {
                    let state = (*result).map_err(|e| VmmError::SaveVcpu(e.to_string()))?;
                    if let Some(slot) = states.get_mut(usize::from(i)) {
                        *slot = Some(state);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    let index = states.iter().position(Option::is_none).unwrap_or(0);
                    return Err(VmmError::VcpuUnresponsive {
                        index: u8::try_from(index).unwrap_or(u8::MAX),
                        what: "save-state",
                    });
                }
            }
        }
        Ok(states.into_iter().flatten().collect())
    }

    /// The memory digests of the last authenticated snapshot of this microVM (taken, or
    /// loaded), if any.
    pub fn memory_digest(&self) -> Option<&MemoryDigest> {
        self.memory_digest.as_ref()
    }

    pub fn set_memory_digest(&mut self, d: Option<MemoryDigest>) {
        self.memory_digest = d;
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    pub fn vcpu_count(&self) -> u8 {
        self.vcpu_count
    }

    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Gives the interfaces `cfg` names (none without a config) their MMDS endpoint at
    /// its address, answering from `store`.
    pub fn attach_mmds(&self, cfg: Option<&MmdsConfig>, store: &SharedMmds) {
        let Some(cfg) = cfg else {
            return;
        };
        for (id, net) in &self.devices.virtio.nets {
            if cfg.network_interfaces.contains(id) {
                let stack = MmdsStack::new(cfg.address(), store.clone());
                crate::sync::lock(net).set_mmds(Some(stack));
            }
        }
    }

    /// The reporter vCPUs and devices use; embedding code may also stop the VM through it
    /// (`notify(VmExit::Requested { .. })`).
    pub fn exit_notifier(&self) -> &Arc<ExitNotifier> {
        &self.exits
    }

    /// Runs `events` with this microVM as the handlers' context until the VM stops; every
    /// vCPU thread has been told to stop when it returns.
    pub fn run(&mut self, events: &mut EventLoop<Vmm>) -> VmExit {
        let exit = events.run(self);
        self.stop_vcpus();
        exit
    }

    fn wait_acks(
        &mut self,
        what: &'static str,
        want: fn(&VcpuAck) -> Option<u8>,
    ) -> Result<(), VmmError> {
        let mut pending: Vec<u8> = self.vcpus.iter().map(|v| v.index).collect();
        let deadline = Instant::now() + VCPU_ACK_TIMEOUT;
        while let Some(&first) = pending.first() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acks.recv_timeout(left) {
                Ok(ack) => {
                    if let Some(i) = want(&ack) {
                        pending.retain(|&p| p != i);
                    }
                }
                Err(_) => {
                    let gone = self
                        .vcpus
                        .iter()
                        .find(|v| pending.contains(&v.index) && v.is_finished());
                    return Err(match gone {
                        Some(v) => VmmError::VcpuGone(v.index),
                        None => VmmError::VcpuUnresponsive { index: first, what },
                    });
                }
            }
        }
        Ok(())
    }

    fn command_all(&self, cmd: VcpuCommand) -> Result<(), VmmError> {
        for v in &self.vcpus {
            if !v.command(cmd) {
                return Err(VmmError::VcpuGone(v.index));
            }
        }
        Ok(())
    }

    /// Stops guest execution on every vCPU; returns once all have acknowledged.
    pub fn pause(&mut self) -> Result<(), VmmError> {
        if self.state != VmState::Running {
            return Err(VmmError::WrongState("running"));
        }
        while self.acks.try_recv().is_ok() {}
        self.command_all(VcpuCommand::Pause)?;
        self.wait_acks("pause", |a| match a {
            VcpuAck::Paused(i) => Some(*i),
            _ => None,
        })?;
        self.state = VmState::Paused;
        Ok(())
    }

    /// Restarts guest execution on every vCPU.
    pub fn resume(&mut self) -> Result<(), VmmError> {
        if self.state != VmState::Paused {
            return Err(VmmError::WrongState("paused"));
        }
        while self.acks.try_recv().is_ok() {}
        self.command_all(VcpuCommand::Resume)?;
        self.wait_acks("resume", |a| match a {
            VcpuAck::Resumed(i) => Some(*i),
            _ => None,
        })?;
        self.state = VmState::Running;
        Ok(())
    }

    /// Types Ctrl+Alt+Del on the guest's i8042 keyboard (Linux then reboots).
    pub fn send_ctrl_alt_del(&self) -> Result<(), VmmError> {
        let kbd = self.devices.i8042.as_ref().ok_or(VmmError::NoKeyboard)?;
        if lock(kbd).send_ctrl_alt_del() {
            Ok(())
        } else {
            Err(VmmError::KeyboardFull)
        }
    }

    /// `PATCH /drives/{id}` after boot: points the drive at a new backing file and tells the
    /// guest its configuration changed.
    pub fn update_drive(&self, drive_id: &str, path_on_host: &str) -> Result<(), DriveUpdateError> {
        self.devices.virtio.update_drive(drive_id, path_on_host)
    }

    /// `PATCH /drives/{id}` with `rate_limiter`: replaces the drive's buckets given.
    pub fn update_drive_rate_limiter(
        &self,
        drive_id: &str,
        update: &RateLimiterConfig,
    ) -> Result<(), DriveUpdateError> {
        self.devices
            .virtio
            .update_drive_rate_limiter(drive_id, update)
    }

    /// `PATCH /network-interfaces/{id}`: replaces the interface's buckets given.
    pub fn update_net_rate_limiters(
        &self,
        iface_id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), NetUpdateError> {
        self.devices
            .virtio
            .update_net_rate_limiters(iface_id, rx, tx)
    }

    /// (port-I/O, MMIO) accesses no device handled, each as (reads, writes).
    pub fn unhandled_accesses(&self) -> ((u64, u64), (u64, u64)) {
        (self.devices.pio.unhandled(), self.devices.mmio.unhandled())
    }

    /// Tells every vCPU thread to stop and waits (bounded) for them to end: for each
    /// thread's [`VcpuAck::Ended`], so the wait ends as soon as the last one has (no
    /// polling sleep), re-kicking the threads after each quiet millisecond (a thread may
    /// have been between its command check and `KVM_RUN`).
    pub fn stop_vcpus(&mut self) {
        for v in &self.vcpus {
            v.command(VcpuCommand::Stop);
        }
        let deadline = Instant::now() + VCPU_JOIN_TIMEOUT;
        loop {
            let mut all_gone = true;
            for v in &mut self.vcpus {
                all_gone &= v.try_join();
            }
            if all_gone {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let stuck: Vec<u8> = self
                    .vcpus
                    .iter()
                    .filter(|v| !v.is_finished())
                    .map(|v| v.index)
                    .collect();
                eprintln!("vmm: vCPU threads {stuck:?} did not stop within {VCPU_JOIN_TIMEOUT:?}; leaving them to process exit");
                return;
            }
            match self.acks.recv_timeout(left.min(VCPU_REKICK)) {
                Ok(VcpuAck::Ended(i)) => {
                    if let Some(v) = self.vcpus.iter_mut().find(|v| v.index == i) {
                        v.join_ended();
                    }
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    for v in self.vcpus.iter().filter(|v| !v.is_finished()) {
                        v.command(VcpuCommand::Stop);
                    }
                }
                // Every thread has dropped its sender: each is returning.
                Err(RecvTimeoutError::Disconnected) => {
                    for v in &mut self.vcpus {
                        v.join_ended();
                    }
                }
            }
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.stop_vcpus();
    }
}

/// Ends the run loop with the reason the vCPUs and devices reported.
struct ExitWatch(Arc<ExitNotifier>);

impl<C> EventHandler<C> for ExitWatch {
    fn handle(&mut self, _cx: &mut C, _sources: &mut Sources<C>, _events: EventSet) -> Flow {
        match self.0.take() {
            Some(exit) => Flow::Exit(exit),
            None => Flow::Continue,
        }
    }
}

/// Makes `events` end when `exits` reports a reason to stop (the builder does this first).
pub fn watch_exits<C>(
    events: &mut EventLoop<C>,
    exits: Arc<ExitNotifier>,
) -> Result<SourceId, EventLoopError> {
    let fd = exits.as_raw_fd();
    events.add(fd, Box::new(ExitWatch(exits)))
}

/// Stops the VM when SIGTERM or SIGINT arrives.
struct TerminationHandler(TerminationSignals);

impl<C> EventHandler<C> for TerminationHandler {
    fn handle(&mut self, _cx: &mut C, _sources: &mut Sources<C>, _events: EventSet) -> Flow {
        match self.0.read() {
            Some(sig) => Flow::Exit(VmExit::Signal(sig)),
            None => Flow::Continue,
        }
    }
}

/// Stops the VM with exit code 0 on SIGTERM/SIGINT.
pub fn watch_termination_signals<C>(
    events: &mut EventLoop<C>,
    signals: TerminationSignals,
) -> Result<SourceId, EventLoopError> {
    let fd = signals.as_raw_fd();
    events.add(fd, Box::new(TerminationHandler(signals)))
}

/// Feeds the VMM's stdin to the guest's serial console.
struct SerialInputHandler(Arc<Mutex<SerialDevice>>);

/// Unbuffered reads from fd 0 (std's `Stdin` buffers, which would hide input from epoll).
struct RawStdin;

impl std::io::Read for RawStdin {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: reads at most buf.len() bytes into buf from fd 0.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }
}

impl<C> EventHandler<C> for SerialInputHandler {
    fn handle(&mut self, _cx: &mut C, _sources: &mut Sources<C>, _events: EventSet) -> Flow {
        if serial::forward_input(&mut RawStdin, &self.0) {
            Flow::Continue
        } else {
            Flow::Remove
        }
    }
}

impl Vmm {
    /// Forwards stdin to the guest's serial console when stdin can be polled (a terminal or
    /// a pipe); returns whether it is forwarded.
    pub fn forward_stdin_to_serial(&self, events: &mut EventLoop<Vmm>) -> bool {
        let Some(serial) = self.devices.serial.clone() else {
            return false;
        };
        events
            .add(libc::STDIN_FILENO, Box::new(SerialInputHandler(serial)))
            .is_ok()
    }
}
