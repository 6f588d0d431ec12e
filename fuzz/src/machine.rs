//! A machine as the VMM builds one around a virtio device, without KVM: guest memory, the
//! device behind its virtio-mmio transport on the MMIO bus (`VirtioSetup::attach`, as the
//! builder attaches every virtio device), and the VMM thread's event loop running the
//! device's queue and descriptor handlers (`VirtioSetup::start`). What the guest does is the
//! fuzz input's: MMIO reads and writes on the bus (what KVM hands a vCPU thread), and writes
//! into its own memory ([`crate::driver`] does the driver's part).
//!
//! Guest memory is [`crate::guest::memory`]: two 64 KiB regions with a hole between them, so
//! rings and buffers may straddle a region's end or fall into the hole.
//!
//! The device is wrapped in a [`Spy`], which forwards every call and records the queues the
//! transport hands over at `DRIVER_OK`. [`Machine::run`] turns the event loop, and checks
//! around each run ([`Watch`]) what the threat model promises:
//!
//! - the device writes guest memory only inside device-writable descriptors of its queues and
//!   its used rings (when a driver hands out its own rings as buffers, what the device does
//!   next no longer follows from the tables before the run: such runs are not checked);
//! - a run adds at most the queue size of used entries, each naming a head the available
//!   ring held;
//! - the transport shows `DRIVER_OK` exactly while the device runs: a device that refused to
//!   start, or whose driver broke a queue, shows `DEVICE_NEEDS_RESET`, never a panic.

use crate::guest::{memory, REGION0, REGION1, REGION_LEN};
use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
use virtio_bindings::virtio_mmio as reg;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::bus::Bus;
use vmm::devices::manager::DeviceManager;
use vmm::devices::virtio::setup::{attach_devices, Transport};
use vmm::devices::virtio::{ActivateError, Activation, EventCtx, VirtioDevice};
use vmm::event_loop::{EventHandler, EventLoop, Flow, Sources};
use vmm::exit::VmExit;
use vmm::resources::VmResources;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// One queue as the transport handed it to the device at `DRIVER_OK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSeen {
    pub ready: bool,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl QueueSeen {
    pub fn desc_len(&self) -> u64 {
        16 * u64::from(self.size)
    }
    pub fn avail_len(&self) -> u64 {
        6 + 2 * u64::from(self.size)
    }
    pub fn used_len(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }
}

/// What the device was given at its last activation.
#[derive(Debug, Default)]
pub struct Seen {
    /// Activations so far.
    pub count: u64,
    /// The queues of the current activation (empty while the device is reset).
    pub queues: Vec<QueueSeen>,
}

/// The device under test, unchanged, recording what it was given.
pub struct Spy<D> {
    pub inner: D,
    pub seen: Arc<Mutex<Seen>>,
}

impl<D: VirtioDevice> VirtioDevice for Spy<D> {
    fn device_type(&self) -> u32 {
        self.inner.device_type()
    }
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.inner.queue_max_sizes()
    }
    fn features(&self) -> u64 {
        self.inner.features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.inner.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) -> bool {
        self.inner.write_config(offset, data)
    }
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let seen: Vec<QueueSeen> = activation
            .queues
            .iter()
            .map(|q| QueueSeen {
                ready: q.ready(),
                size: q.size(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
            })
            .collect();
        for q in seen.iter().filter(|q| q.ready) {
            // The transport checked them (`Queue::is_valid`): inside guest memory.
            for (addr, len) in [
                (q.desc, q.desc_len()),
                (q.avail, q.avail_len()),
                (q.used, q.used_len()),
            ] {
                assert!(
                    in_memory(addr, len),
                    "the transport handed over a ring at {addr:#x}+{len:#x} outside memory"
                );
            }
        }
        let result = self.inner.activate(activation);
        let mut s = self.seen.lock().unwrap();
        s.count += 1;
        s.queues = if result.is_ok() { seen } else { Vec::new() };
        result
    }
    fn reset(&mut self) {
        self.seen.lock().unwrap().queues.clear();
        self.inner.reset()
    }
    fn is_activated(&self) -> bool {
        self.inner.is_activated()
    }
    fn process_queue(&mut self, index: usize, ctx: &mut EventCtx) {
        self.inner.process_queue(index, ctx)
    }
    fn process_fd(&mut self, token: u64, events: EventSet, ctx: &mut EventCtx) {
        self.inner.process_fd(token, events, ctx)
    }
}

/// True when `[addr, addr + len)` is inside one region of the fuzz guest's memory.
pub fn in_memory(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let region = REGION_LEN as u64;
    [REGION0, REGION1]
        .iter()
        .any(|&r| addr >= r && end <= r + region)
}

/// Ends the event loop's `run` after a number of its waits (an always-ready eventfd). The
/// loop drops the handler that stops it (its descriptor closes and leaves the epoll set):
/// each run adds a new one.
struct Stopper {
    _evt: EventFd,
    left: u32,
}

impl EventHandler<()> for Stopper {
    fn handle(&mut self, _: &mut (), _: &mut Sources<()>, _: EventSet) -> Flow {
        self.left = self.left.saturating_sub(1);
        if self.left == 0 {
            Flow::Exit(VmExit::Requested {
                code: 0,
                reason: String::new(),
            })
        } else {
            Flow::Continue
        }
    }
}

/// The machine: memory, the MMIO bus with the device's window, the event loop.
pub struct Machine {
    pub mem: GuestMemoryMmap,
    pub mmio: Arc<Bus>,
    /// The device's window on the MMIO bus.
    pub base: u64,
    pub seen: Arc<Mutex<Seen>>,
    device: Arc<Mutex<dyn VirtioDevice>>,
    /// The used index the device last published on each queue, for the activation it
    /// belongs to (a device starts at 0; the ring's memory may say anything a guest wrote);
    /// `None` after a run whose writes could not be told apart (the index in memory may then
    /// be a buffer's data, not what the device published).
    published: (u64, Vec<Option<u16>>),
    event_loop: EventLoop<()>,
    /// Runs whose writes were not checked (the driver handed out its rings as buffers): the
    /// used entries they added are not reported.
    pub unchecked_runs: u32,
}

impl Machine {
    /// Attaches `device` (wrapped in a [`Spy`]) as the builder does and starts its handlers.
    /// Returns the machine and the spy (to look at the device).
    pub fn new<D: VirtioDevice + 'static>(device: D) -> (Machine, Arc<Mutex<Spy<D>>>) {
        let mem = memory();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let spy = Arc::new(Mutex::new(Spy {
            inner: device,
            seen: seen.clone(),
        }));
        let mut dm = DeviceManager::new();
        let mut setup = attach_devices(&mut dm, &mem, &VmResources::default(), Transport::Mmio)
            .expect("an empty set of devices attaches");
        setup
            .attach(&mut dm, &mem, spy.clone())
            .expect("the device attaches");
        let base = dm.mmio_slots()[0].base;
        let devices = dm.finish();
        let mut event_loop = EventLoop::new().expect("an epoll set");
        setup
            .start(event_loop.sources())
            .expect("the device's handlers join the event loop");
        let device: Arc<Mutex<dyn VirtioDevice>> = spy.clone();
        (
            Machine {
                mem,
                mmio: devices.mmio,
                base,
                seen,
                device,
                event_loop,
                unchecked_runs: 0,
                published: (0, Vec::new()),
            },
            spy,
        )
    }

    /// A guest read of `data.len()` bytes at `offset` in the device's window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        self.mmio.read(self.base.wrapping_add(offset), data);
    }

    pub fn write(&self, offset: u64, data: &[u8]) {
        self.mmio.write(self.base.wrapping_add(offset), data);
    }

    pub fn read32(&self, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        self.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write32(&self, offset: u32, v: u32) {
        self.write(u64::from(offset), &v.to_le_bytes());
    }

    /// The status register as the driver reads it.
    pub fn status(&self) -> u32 {
        self.read32(reg::VIRTIO_MMIO_STATUS)
    }

    /// Turns the event loop (`waits` epoll waits, each running every ready handler) and
    /// checks what the device did meanwhile. Returns the new used entries, per queue (none
    /// when the run could not be checked: see [`Machine::unchecked_runs`]).
    pub fn run(&mut self, waits: u32) -> Vec<Vec<(u32, u32)>> {
        let watch = Watch::before(self);
        let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        evt.write(1).expect("eventfd write");
        let fd = evt.as_raw_fd();
        let stopper = Stopper {
            _evt: evt,
            left: waits.max(1),
        };
        self.event_loop
            .add(fd, Box::new(stopper))
            .expect("the stopper joins the event loop");
        let exit = self.event_loop.run(&mut ());
        assert!(
            matches!(exit, VmExit::Requested { .. }),
            "the event loop stopped on its own: {exit:?}"
        );
        let used = watch.after(self);
        self.check_status();
        match used {
            Some(used) => used,
            None => {
                self.unchecked_runs += 1;
                Vec::new()
            }
        }
    }

    /// The transport shows DRIVER_OK while the device runs, DEVICE_NEEDS_RESET when it
    /// refused to start (or broke), and nothing when it is reset.
    pub fn check_status(&self) {
        let status = self.status();
        let active = self.device.lock().unwrap().is_activated();
        if active {
            assert!(
                status & VIRTIO_CONFIG_S_DRIVER_OK != 0,
                "the device runs but the status is {status:#x}"
            );
        } else if status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            assert!(
                status & VIRTIO_CONFIG_S_NEEDS_RESET != 0,
                "DRIVER_OK without a running device and without NEEDS_RESET: {status:#x}"
            );
        }
    }

    /// The whole of guest memory (both regions), to compare before and after.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = vec![0u8; 2 * REGION_LEN];
        let (a, b) = out.split_at_mut(REGION_LEN);
        self.mem
            .read_slice(a, GuestAddress(REGION0))
            .expect("region 0 reads");
        self.mem
            .read_slice(b, GuestAddress(REGION1))
            .expect("region 1 reads");
        out
    }

    /// A little-endian value of guest memory (zero where there is no memory).
    pub fn read_u16(&self, addr: u64) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(addr))
            .map(u16::from_le)
            .unwrap_or(0)
    }

    /// The descriptor at `index` of the table at `desc`: (addr, len, flags, next).
    pub fn descriptor(&self, desc: u64, index: u16) -> Option<(u64, u32, u16, u16)> {
        let at = desc.checked_add(16 * u64::from(index))?;
        let mut d = [0u8; 16];
        self.mem.read_slice(&mut d, GuestAddress(at)).ok()?;
        Some((
            u64::from_le_bytes(d[0..8].try_into().ok()?),
            u32::from_le_bytes(d[8..12].try_into().ok()?),
            u16::from_le_bytes(d[12..14].try_into().ok()?),
            u16::from_le_bytes(d[14..16].try_into().ok()?),
        ))
    }
}

impl Machine {
    /// The writable buffers of the chain at `head` on queue `q` as the device got it, as the
    /// descriptors in memory say now (to read back what the device wrote).
    pub fn writable_buffers(&self, q: usize, head: u32) -> Vec<(u64, u32)> {
        let Some(r) = self.seen.lock().unwrap().queues.get(q).copied() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let Ok(mut index) = u16::try_from(head) else {
            return out;
        };
        for _ in 0..r.size {
            let Some((addr, len, flags, next)) = self.descriptor(r.desc, index) else {
                break;
            };
            if u32::from(flags) & VRING_DESC_F_WRITE != 0 {
                out.push((addr, len));
            }
            if u32::from(flags) & VRING_DESC_F_NEXT == 0 {
                break;
            }
            index = next;
        }
        out
    }
}

/// True when no two of `buffers` share a byte (then each still holds what the device wrote
/// into it).
pub fn disjoint<'a>(buffers: impl IntoIterator<Item = &'a (u64, u32)>) -> bool {
    let mut all: Vec<(u64, u64)> = buffers
        .into_iter()
        .map(|&(a, l)| (a, u64::from(l)))
        .collect();
    all.sort();
    all.windows(2)
        .all(|w| w[0].0.saturating_add(w[0].1) <= w[1].0)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// What the checks around one run need from before it.
struct Watch {
    before: Vec<u8>,
    /// The queues of the current activation (by index; a queue not ready is never used).
    queues: Vec<QueueSeen>,
    /// Device-writable buffers of every queue, and the used rings: where writes may land.
    allowed: Vec<(u64, u64)>,
    /// Per queue: what the used index says in memory, and the heads in the available ring.
    memory_idx: Vec<u16>,
    heads: Vec<HashSet<u16>>,
    /// The driver handed out its rings as buffers (or let rings overlap): not checked.
    self_modifying: bool,
}

impl Watch {
    fn before(m: &mut Machine) -> Watch {
        let (count, queues) = {
            let s = m.seen.lock().unwrap();
            (s.count, s.queues.clone())
        };
        if m.published.0 != count {
            m.published = (count, vec![Some(0); queues.len()]);
        }
        let mut writable = Vec::new();
        let mut rings = Vec::new();
        for q in queues.iter().filter(|q| q.ready) {
            for i in 0..q.size {
                if let Some((addr, len, flags, _)) = m.descriptor(q.desc, i) {
                    if u32::from(flags) & VRING_DESC_F_WRITE != 0 {
                        writable.push((addr, u64::from(len)));
                    }
                }
            }
            rings.push(((q.desc, q.desc_len()), false));
            rings.push(((q.avail, q.avail_len()), false));
            rings.push(((q.used, q.used_len()), true));
        }
        let heads = queues
            .iter()
            .map(|q| {
                (0..q.size)
                    .map(|i| m.read_u16(q.avail + 4 + 2 * u64::from(i)))
                    .collect()
            })
            .collect();
        let memory_idx = queues.iter().map(|q| m.read_u16(q.used + 2)).collect();
        // Writes into a ring change what the device reads next: a buffer over a ring, or a
        // used ring over another ring.
        let self_modifying = rings.iter().enumerate().any(|(i, &(ring, used))| {
            writable.iter().any(|&b| overlaps(b, ring))
                || (used
                    && rings
                        .iter()
                        .enumerate()
                        .any(|(j, &(other, _))| i != j && overlaps(ring, other)))
        });
        let mut allowed = writable;
        allowed.extend(rings.iter().filter(|r| r.1).map(|r| r.0));
        Watch {
            before: m.snapshot(),
            queues,
            allowed,
            memory_idx,
            heads,
            self_modifying,
        }
    }

    /// The new used entries per queue; `None` when the run could not be checked.
    fn after(self, m: &mut Machine) -> Option<Vec<Vec<(u32, u32)>>> {
        if self.self_modifying {
            // What the device published cannot be told from what it wrote elsewhere (a buffer
            // over the used ring may have overwritten its index): unknown until the device
            // publishes again.
            for (n, _) in self.queues.iter().enumerate().filter(|(_, q)| q.ready) {
                m.published.1[n] = None;
            }
            return None;
        }
        let after = m.snapshot();
        const BLOCK: usize = 256;
        for (i, (a, b)) in self
            .before
            .chunks(BLOCK)
            .zip(after.chunks(BLOCK))
            .enumerate()
        {
            if a == b {
                continue;
            }
            for (j, (x, y)) in a.iter().zip(b).enumerate() {
                if x == y {
                    continue;
                }
                let at = (i * BLOCK + j) as u64;
                let len = REGION_LEN as u64;
                let addr = if at < len {
                    REGION0 + at
                } else {
                    REGION1 + (at - len)
                };
                assert!(
                    self.allowed.iter().any(|&(s, l)| addr >= s && addr - s < l),
                    "the device wrote guest memory at {addr:#x}, outside its used rings and \
                     device-writable buffers (queues {:x?})",
                    self.queues
                );
            }
        }
        let mut new_used = vec![Vec::new(); self.queues.len()];
        for (n, q) in self.queues.iter().enumerate().filter(|(_, q)| q.ready) {
            let now = m.read_u16(q.used + 2);
            if now == self.memory_idx[n] {
                // The device published nothing (or just what memory said already).
                continue;
            }
            let Some(last) = m.published.1[n].replace(now) else {
                // The first index published after an unchecked run: the new baseline.
                continue;
            };
            let added = now.wrapping_sub(last);
            assert!(
                added <= q.size,
                "queue {n}: {added} used entries in one run of a queue of {}",
                q.size
            );
            for k in 0..added {
                let slot = u64::from(last.wrapping_add(k) % q.size.max(1));
                let at = q.used + 4 + 8 * slot;
                let id = m
                    .mem
                    .read_obj::<u32>(GuestAddress(at))
                    .map(u32::from_le)
                    .unwrap_or(u32::MAX);
                let len = m
                    .mem
                    .read_obj::<u32>(GuestAddress(at + 4))
                    .map(u32::from_le)
                    .unwrap_or(0);
                let head = u16::try_from(id).ok().filter(|h| self.heads[n].contains(h));
                assert!(
                    head.is_some(),
                    "queue {n}: a used entry for head {id}, which the available ring did not hold"
                );
                new_used[n].push((id, len));
            }
        }
        Some(new_used)
    }
}
