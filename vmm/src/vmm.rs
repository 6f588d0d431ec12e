//! The running microVM ([`Vmm`]) and the VMM thread's run loop.
//!
//! The run loop waits on an epoll set holding the [`ExitNotifier`]'s eventfd (vCPU threads and
//! the i8042 report why the VM must stop there) and any number of event sources registered
//! with [`Vmm::add_event_source`] (SIGTERM's signalfd, the serial console's stdin, the API's
//! request eventfd, ...). It returns the [`VmExit`] that ended the VM, after stopping every
//! vCPU; the caller turns it into the process exit code.
//!
//! `pause`/`resume` really stop and restart guest execution: each vCPU thread is sent a
//! command and kicked out of `KVM_RUN`, and the call waits for every vCPU's acknowledgement.

use crate::devices::manager::Devices;
use crate::exit::{ExitNotifier, VmExit};
use crate::sync::lock;
use crate::vstate::vcpu_thread::{VcpuAck, VcpuCommand, VcpuHandle};
use crate::vstate::vm::Vm;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// How long pause/resume wait for every vCPU to acknowledge.
const VCPU_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long teardown waits for the vCPU threads to end.
const VCPU_JOIN_TIMEOUT: Duration = Duration::from_secs(2);
const EXIT_TOKEN: u64 = 0;

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
    #[error("cannot watch file descriptor {fd}: {source}")]
    Epoll { fd: RawFd, source: std::io::Error },
}

/// What an event handler asks the run loop to do next.
pub enum Flow {
    Continue,
    /// Stop watching this source.
    Remove,
    /// Stop the VM with this reason.
    Exit(VmExit),
}

/// Something the run loop watches besides the vCPUs. `handle` runs on the VMM thread when
/// the source's file descriptor is readable (or hung up), with the whole [`Vmm`] at hand.
pub trait EventHandler: Send {
    fn handle(&mut self, vmm: &mut Vmm, events: EventSet) -> Flow;
}

/// Identifies a registered event source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceId(u64);

struct Source {
    fd: RawFd,
    handler: Option<Box<dyn EventHandler>>,
}

/// A built, running microVM. Field order is drop order: vCPU threads are stopped (in
/// `Drop`), then devices, the VM and finally guest memory are released.
pub struct Vmm {
    vcpus: Vec<VcpuHandle>,
    acks: Receiver<VcpuAck>,
    exits: Arc<ExitNotifier>,
    devices: Devices,
    epoll: Epoll,
    sources: Vec<Option<Source>>,
    state: VmState,
    vcpu_count: u8,
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
    ) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            exits.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EXIT_TOKEN),
        )?;
        let vcpu_count = u8::try_from(vcpus.len()).unwrap_or(u8::MAX);
        Ok(Vmm {
            vcpus,
            acks,
            exits,
            devices,
            epoll,
            sources: Vec::new(),
            state: VmState::Running,
            vcpu_count,
            vm,
            mem,
        })
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

    /// The reporter vCPUs and devices use; embedding code may also stop the VM through it
    /// (`notify(VmExit::Requested { .. })`).
    pub fn exit_notifier(&self) -> &Arc<ExitNotifier> {
        &self.exits
    }

    /// Watches `fd` (level-triggered, readable) and runs `handler` when it is.
    pub fn add_event_source(
        &mut self,
        fd: RawFd,
        handler: Box<dyn EventHandler>,
    ) -> Result<SourceId, VmmError> {
        let slot = self
            .sources
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.sources.len());
        let token = slot as u64 + 1;
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(|source| VmmError::Epoll { fd, source })?;
        let src = Some(Source {
            fd,
            handler: Some(handler),
        });
        if slot == self.sources.len() {
            self.sources.push(src);
        } else {
            self.sources[slot] = src;
        }
        Ok(SourceId(token))
    }

    /// Stops watching a source.
    pub fn remove_event_source(&mut self, id: SourceId) {
        let Some(slot) = usize::try_from(id.0).ok().and_then(|t| t.checked_sub(1)) else {
            return;
        };
        if let Some(src) = self.sources.get_mut(slot).and_then(Option::take) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, src.fd, EpollEvent::default());
        }
    }

    /// Runs until the VM stops; every vCPU thread has been told to stop when it returns.
    pub fn run(&mut self) -> VmExit {
        let mut events = vec![EpollEvent::default(); 16];
        let exit = 'outer: loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break VmExit::VmmError(format!("epoll_wait failed: {e}")),
            };
            for ev in events.iter().take(n) {
                let token = ev.data();
                if token == EXIT_TOKEN {
                    if let Some(exit) = self.exits.take() {
                        break 'outer exit;
                    }
                    continue;
                }
                if let Some(exit) = self.dispatch(token, ev.event_set()) {
                    break 'outer exit;
                }
            }
        };
        self.stop_vcpus();
        exit
    }

    fn dispatch(&mut self, token: u64, events: EventSet) -> Option<VmExit> {
        let slot = usize::try_from(token).ok()?.checked_sub(1)?;
        // Taken out while it runs, so the handler can use `&mut self`.
        let mut handler = self.sources.get_mut(slot)?.as_mut()?.handler.take()?;
        let flow = handler.handle(self, events);
        match flow {
            Flow::Continue => {
                if let Some(src) = self.sources.get_mut(slot).and_then(Option::as_mut) {
                    src.handler = Some(handler);
                }
                None
            }
            Flow::Remove => {
                self.remove_event_source(SourceId(token));
                None
            }
            Flow::Exit(exit) => Some(exit),
        }
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

    /// (port-I/O, MMIO) accesses no device handled, each as (reads, writes).
    pub fn unhandled_accesses(&self) -> ((u64, u64), (u64, u64)) {
        (self.devices.pio.unhandled(), self.devices.mmio.unhandled())
    }

    /// Tells every vCPU thread to stop and waits (bounded) for them to end.
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
            if Instant::now() >= deadline {
                let stuck: Vec<u8> = self
                    .vcpus
                    .iter()
                    .filter(|v| !v.is_finished())
                    .map(|v| v.index)
                    .collect();
                eprintln!("vmm: vCPU threads {stuck:?} did not stop within {VCPU_JOIN_TIMEOUT:?}; leaving them to process exit");
                return;
            }
            // Re-kick: a thread may have been between its command check and KVM_RUN.
            for v in self.vcpus.iter().filter(|v| !v.is_finished()) {
                v.command(VcpuCommand::Stop);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.stop_vcpus();
    }
}

/// Stops the VM when SIGTERM or SIGINT arrives.
pub struct TerminationHandler(pub crate::signals::TerminationSignals);

impl EventHandler for TerminationHandler {
    fn handle(&mut self, _vmm: &mut Vmm, _events: EventSet) -> Flow {
        match self.0.read() {
            Some(sig) => Flow::Exit(VmExit::Signal(sig)),
            None => Flow::Continue,
        }
    }
}

/// Feeds the VMM's stdin to the guest's serial console.
pub struct SerialInputHandler;

/// Unbuffered reads from fd 0 (std's `Stdin` buffers, which would hide input from epoll).
struct RawStdin;

impl std::io::Read for RawStdin {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: reads at most buf.len() bytes into buf from fd 0.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }
}

impl EventHandler for SerialInputHandler {
    fn handle(&mut self, vmm: &mut Vmm, _events: EventSet) -> Flow {
        let Some(serial) = vmm.devices.serial.clone() else {
            return Flow::Remove;
        };
        if crate::devices::legacy::serial::forward_input(&mut RawStdin, &serial) {
            Flow::Continue
        } else {
            Flow::Remove
        }
    }
}

impl Vmm {
    /// Stops the VM with exit code 0 on SIGTERM/SIGINT.
    pub fn watch_termination_signals(
        &mut self,
        signals: crate::signals::TerminationSignals,
    ) -> Result<SourceId, VmmError> {
        let fd = signals.as_raw_fd();
        self.add_event_source(fd, Box::new(TerminationHandler(signals)))
    }

    /// Forwards stdin to the guest's serial console when stdin can be polled (a terminal or
    /// a pipe); returns whether it is forwarded.
    pub fn forward_stdin_to_serial(&mut self) -> bool {
        self.devices.serial.is_some()
            && self
                .add_event_source(libc::STDIN_FILENO, Box::new(SerialInputHandler))
                .is_ok()
    }
}
