//! An address space (port I/O or MMIO) that dispatches guest accesses to devices.
//!
//! The guest controls the address and the length of every access. An access is handed to a
//! device only when it lies entirely inside the device's range; anything else is counted and
//! ignored (reads see all-ones, as on a floating bus).

use crate::sync::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the device's range, and
/// `offset + data.len()` never exceeds the range's length.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("a device range cannot be empty (at {0:#x})")]
    Empty(u64),
    #[error("device range {base:#x}+{len:#x} overflows the address space")]
    Overflow { base: u64, len: u64 },
    #[error("device range {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

struct Entry {
    base: u64,
    len: u64,
    dev: Arc<Mutex<dyn BusDevice>>,
}

/// Devices sorted by base address, with counters of accesses nothing handled.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
    unhandled_reads: AtomicU64,
    unhandled_writes: AtomicU64,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `dev`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overflow { base, len })?;
        if let Some(o) = self
            .entries
            .iter()
            .find(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap {
                base,
                len,
                other: o.base,
            });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(at, Entry { base, len, dev });
        Ok(())
    }

    /// The device and offset for an access of `len` bytes at `addr`, if one device covers it
    /// entirely: it starts inside the device's range (an empty access one past the end is
    /// not the device's) and ends at the range's end at the latest.
    fn resolve(&self, addr: u64, len: usize) -> Option<(&Entry, u64)> {
        let idx = self
            .entries
            .partition_point(|e| e.base <= addr)
            .checked_sub(1)?;
        let e = self.entries.get(idx)?;
        let offset = addr - e.base;
        let end = offset.checked_add(u64::try_from(len).ok()?)?;
        (offset < e.len && end <= e.len).then_some((e, offset))
    }

    /// Serves a guest read; returns false (and fills `data` with 0xff) when no device
    /// covers it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.unhandled_reads.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Serves a guest write; returns false when no device covers it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.dev).write(offset, data);
                true
            }
            None => {
                self.unhandled_writes.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// (reads, writes) that no device handled since the VM started.
    pub fn unhandled(&self) -> (u64, u64) {
        (
            self.unhandled_reads.load(Ordering::Relaxed),
            self.unhandled_writes.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_inside_ranges_only() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert!(!bus.write(0x3f7, &[1]));
        assert!(!bus.write(0x400, &[1]));
        let mut w = [0u8; 2];
        assert!(
            !bus.read(0x3ff, &mut w),
            "an access straddling the end is not served"
        );
        assert_eq!(w, [0xff, 0xff]);
        assert_eq!(bus.unhandled(), (1, 2));
        assert_eq!(lock(&dev).writes, vec![(0, vec![b'x'])]);
    }

    /// Found by the legacy_bus fuzz target: an empty access at the first address after a
    /// device's range (with no device there) went to that device, at an offset equal to its
    /// length.
    #[test]
    fn an_empty_access_past_the_end_reaches_no_device() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        assert!(!bus.write(0x1100, &[]));
        assert!(!bus.read(0x1100, &mut []));
        assert_eq!(bus.unhandled(), (1, 1));
        assert!(lock(&dev).writes.is_empty());
        // Inside the range an empty access is still the device's, as any other.
        assert!(bus.write(0x10ff, &[]));
        assert_eq!(lock(&dev).writes, vec![(0xff, vec![])]);
    }

    #[test]
    fn refuses_bad_ranges() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x60, 5, dev.clone()).unwrap();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        assert_eq!(
            bus.insert(0x64, 1, dev.clone()),
            Err(BusError::Overlap {
                base: 0x64,
                len: 1,
                other: 0x60
            })
        );
        assert_eq!(
            bus.insert(0x0, 0x61, dev.clone()),
            Err(BusError::Overlap {
                base: 0,
                len: 0x61,
                other: 0x60
            })
        );
        assert_eq!(
            bus.insert(0x100, 0, dev.clone()),
            Err(BusError::Empty(0x100))
        );
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev.clone()),
            Err(BusError::Overflow { .. })
        ));
        bus.insert(0x65, 1, dev).unwrap();
    }

    #[test]
    fn hostile_addresses_do_not_panic() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x1000, dev).unwrap();
        let mut big = vec![0u8; 4096];
        for addr in [0, 0xfff, 0x1000, 0x1fff, u64::MAX, u64::MAX - 1] {
            bus.read(addr, &mut big);
            bus.write(addr, &big);
            bus.read(addr, &mut []);
        }
    }
}
