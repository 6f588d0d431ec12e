//! KVM's coalesced MMIO for the virtio-mmio registers a driver only writes while it sets a
//! device up: the driver-feature words and selector, and each queue's selector, size,
//! ready flag and ring addresses. KVM appends such a write to a ring page it shares with
//! the VMM instead of leaving `KVM_RUN`; a vCPU thread applies every write queued there, in
//! order, as soon as its `KVM_RUN` returns, before it serves the exit that ended it. So a
//! read of any register (the status read-back after FEATURES_OK, a queue's size, the
//! device's configuration) and a status write (DRIVER_OK, which activates the device)
//! always see the writes before them.
//!
//! Why: on hosts whose KVM emulates MMIO slowly (nested `kvm_pvm`), an exit served by the
//! VMM costs ~36 µs and one served in the kernel ~16 µs; bringing a virtio-mmio device up
//! writes these registers ~20 times (docs/benchmarks.md, row 9).
//!
//! What a guest could do with it: nothing it could not do with plain exits. The writes are
//! the guest's own, applied to its own device in the order it made them; only their timing
//! moves (to the vCPU's next exit). A queue notify (an ioeventfd, served by the event loop)
//! that a driver sent right after enabling a queue, with no exit in between, could find the
//! queue not enabled yet — which a virtio driver never does: queues are enabled before
//! DRIVER_OK (a status write, not coalesced), and notified after it. The zones are
//! registered only for the virtio-mmio transport of a booted microVM (not for PCI, not on a
//! restore).

use crate::devices::bus::Bus;
use crate::sync::lock;
use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};
use kvm_ioctls::VcpuFd;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::Mutex;

/// The register ranges `(offset, length)` of a virtio-mmio window that are coalesced:
/// DriverFeatures and DriverFeaturesSel (0x20-0x27); QueueSel, QueueNumMax, QueueNum and
/// QueueReady (0x30-0x47, QueueNumMax and QueueReady reads still exit); the queue's
/// descriptor, driver and device areas (0x80-0xa7). Not QueueNotify (0x50, an ioeventfd),
/// InterruptACK (0x64), Status (0x70) or the configuration space (0x100 on).
pub const VIRTIO_MMIO_ZONES: [(u64, u32); 3] = [(0x20, 8), (0x30, 0x18), (0x80, 0x28)];

#[derive(Debug, thiserror::Error)]
pub enum CoalescedError {
    #[error("cannot map the coalesced MMIO ring of vCPU 0: {0}")]
    Map(std::io::Error),
}

/// The VM's coalesced MMIO ring, mapped from vCPU 0's descriptor (every vCPU's maps the same
/// page), drained by whichever vCPU thread returns from `KVM_RUN` (one at a time).
pub struct CoalescedRing {
    ring: Mutex<Mapping>,
}

struct Mapping {
    page: NonNull<kvm_coalesced_mmio_ring>,
    page_size: usize,
    /// Entries the page holds.
    max: u32,
}

// SAFETY: the mapping is plain shared memory (KVM writes entries and `last`, the VMM reads
// entries and writes `first`); it is only reached through the mutex, from any thread.
unsafe impl Send for Mapping {}

/// An access the drain applied that no device handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unhandled {
    pub addr: u64,
    pub len: usize,
}

impl CoalescedRing {
    /// Maps the ring page of the VM `vcpu` belongs to.
    pub fn map(vcpu: &VcpuFd) -> Result<CoalescedRing, CoalescedError> {
        // SAFETY: sysconf has no memory effects.
        let page_size =
            usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let offset = libc::off_t::try_from(KVM_COALESCED_MMIO_PAGE_OFFSET as usize * page_size)
            .map_err(|_| CoalescedError::Map(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: a new shared mapping of one page of the vCPU descriptor at KVM's coalesced
        // MMIO offset; no existing memory is affected, and the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(CoalescedError::Map(std::io::Error::last_os_error()));
        }
        let page = NonNull::new(addr.cast::<kvm_coalesced_mmio_ring>())
            .ok_or_else(|| CoalescedError::Map(std::io::Error::from_raw_os_error(libc::EFAULT)))?;
        let header = std::mem::size_of::<kvm_coalesced_mmio_ring>();
        let entry = std::mem::size_of::<kvm_coalesced_mmio>();
        let max = u32::try_from(page_size.saturating_sub(header) / entry).unwrap_or(0);
        Ok(CoalescedRing {
            ring: Mutex::new(Mapping {
                page,
                page_size,
                max,
            }),
        })
    }

    /// Applies every queued write to `mmio`, oldest first; returns the first one no device
    /// handled, if any (`--strict-io` stops the VM on it).
    pub fn drain(&self, mmio: &Bus) -> Option<Unhandled> {
        let m = lock(&self.ring);
        // SAFETY: the page is mapped (for as long as `m` lives), holds `max` entries after
        // its header, and the mutex makes this the only reader.
        unsafe { drain_ring(m.page, m.max, mmio) }
    }
}

/// Applies the entries of the coalesced MMIO ring at `page` from `first` to `last` to
/// `mmio`, advancing `first` past each; returns the first write no device handled.
///
/// # Safety
/// `page` points to a readable and writable ring of `max` entries after its header, which
/// nothing else reads from while this runs (its producer, KVM, only appends).
unsafe fn drain_ring(
    page: NonNull<kvm_coalesced_mmio_ring>,
    max: u32,
    mmio: &Bus,
) -> Option<Unhandled> {
    let ring = page.as_ptr();
    let mut unhandled = None;
    loop {
        // SAFETY: `ring` points to the ring (the caller's contract); `first` and `last` are
        // u32 fields shared with KVM, read and written volatile.
        let (first, last) = unsafe {
            (
                std::ptr::addr_of!((*ring).first).read_volatile(),
                std::ptr::addr_of!((*ring).last).read_volatile(),
            )
        };
        if first == last || first >= max {
            break;
        }
        // KVM wrote the entry before it published `last`.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        // SAFETY: `first < max`, so the entry lies inside the ring (the caller's contract).
        let e: kvm_coalesced_mmio = unsafe {
            std::ptr::addr_of!((*ring).coalesced_mmio)
                .cast::<kvm_coalesced_mmio>()
                .add(first as usize)
                .read_volatile()
        };
        let len = (e.len as usize).min(e.data.len());
        let handled = mmio.write(e.phys_addr, e.data.get(..len).unwrap_or_default());
        if !handled && unhandled.is_none() {
            unhandled = Some(Unhandled {
                addr: e.phys_addr,
                len,
            });
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        // SAFETY: as above; the VMM owns `first`.
        unsafe { std::ptr::addr_of_mut!((*ring).first).write_volatile((first + 1) % max) };
    }
    unhandled
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the page was mapped by `CoalescedRing::map` with this size, and nothing
        // refers to it once the mapping is dropped.
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.page_size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use std::sync::Arc;

    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);

    impl BusDevice for Recorder {
        fn read(&mut self, _offset: u64, _data: &mut [u8]) {}
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    /// A ring of `max` entries in a buffer of u64s (aligned for the ring's fields).
    fn ring(max: u32) -> Vec<u64> {
        let bytes = std::mem::size_of::<kvm_coalesced_mmio_ring>()
            + max as usize * std::mem::size_of::<kvm_coalesced_mmio>();
        vec![0u64; bytes.div_ceil(8)]
    }

    /// Appends a write as KVM does.
    fn push(buf: &mut [u64], max: u32, addr: u64, data: &[u8]) {
        let ring = buf.as_mut_ptr().cast::<kvm_coalesced_mmio_ring>();
        // SAFETY: `buf` holds the header and `max` entries; `last < max`.
        unsafe {
            let last = (*ring).last;
            let e = std::ptr::addr_of_mut!((*ring).coalesced_mmio)
                .cast::<kvm_coalesced_mmio>()
                .add(last as usize);
            (*e).phys_addr = addr;
            (*e).len = u32::try_from(data.len()).unwrap();
            let mut bytes = [0u8; 8];
            bytes[..data.len()].copy_from_slice(data);
            (*e).data = bytes;
            (*ring).last = (last + 1) % max;
        }
    }

    #[test]
    fn queued_writes_reach_the_bus_in_order_and_the_ring_wraps() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        let max = 4;
        let mut buf = ring(max);
        let page = NonNull::new(buf.as_mut_ptr().cast::<kvm_coalesced_mmio_ring>()).unwrap();
        for round in 0..3u8 {
            push(&mut buf, max, 0x1030, &[round, 0, 0, 0]);
            push(&mut buf, max, 0x1038, &[32, 0, 0, 0]);
            push(&mut buf, max, 0x1044, &[1]);
            // SAFETY: `buf` is a ring of `max` entries, read by nothing else.
            assert_eq!(unsafe { drain_ring(page, max, &bus) }, None);
            let got = std::mem::take(&mut lock(&dev).0);
            assert_eq!(
                got,
                [
                    (0x30, vec![round, 0, 0, 0]),
                    (0x38, vec![32, 0, 0, 0]),
                    (0x44, vec![1])
                ]
            );
        }
        // Empty: nothing applied.
        // SAFETY: as above.
        assert_eq!(unsafe { drain_ring(page, max, &bus) }, None);
        assert!(lock(&dev).0.is_empty());
        // A write no device takes is reported (the first of them), the rest still applied.
        push(&mut buf, max, 0x9000, &[1, 2]);
        push(&mut buf, max, 0x1020, &[7, 0, 0, 0]);
        push(&mut buf, max, 0x9100, &[3]);
        // SAFETY: as above.
        let unhandled = unsafe { drain_ring(page, max, &bus) };
        assert_eq!(
            unhandled,
            Some(Unhandled {
                addr: 0x9000,
                len: 2
            })
        );
        assert_eq!(lock(&dev).0, [(0x20, vec![7, 0, 0, 0])]);
    }

    #[test]
    fn the_zones_leave_out_notify_interrupt_ack_status_and_configuration() {
        for (offset, len) in VIRTIO_MMIO_ZONES {
            let end = offset + u64::from(len);
            for reg in [0x50u64, 0x64, 0x70, 0x100] {
                assert!(
                    !(offset..end).contains(&reg),
                    "{reg:#x} in {offset:#x}..{end:#x}"
                );
            }
        }
    }
}
