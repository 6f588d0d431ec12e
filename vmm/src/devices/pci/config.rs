//! One PCI function's 256-byte configuration space (type 0 header): identification,
//! command and status, one 32-bit memory BAR, the capability list, and which bits the
//! guest may change.
//!
//! Every byte has a write mask: identification, class, header type, capability bodies and
//! the BAR's size bits are read-only; the command register, the interrupt line and the
//! bits a capability's owner declares writable (MSI-X's enable and function mask) are
//! not. The BAR register keeps the address bits the guest writes (all ones while it sizes
//! the BAR, which then reads back as the size's complement) and its type bits are fixed.
//! Accesses are 1, 2 or 4 bytes, naturally aligned, inside the 256 bytes; anything else is
//! refused (reads see all ones) and counted.

use crate::metrics::METRICS;
use crate::snapshot::{CodecError, Decoder, Encoder, Persist};

/// Bytes of configuration space (conventional PCI, no extended space).
pub const CONFIG_SIZE: usize = 256;
/// Offset of the first capability.
const FIRST_CAP: usize = 0x40;

/// Header registers.
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION: usize = 0x08;
pub const CLASS_PROG: usize = 0x09;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;

/// Command register: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register bits a guest may set: memory space, bus master, INTx disable.
const COMMAND_WRITABLE: u16 = COMMAND_MEMORY | (1 << 2) | (1 << 10);
/// Status register: the function has a capability list.
const STATUS_CAP_LIST: u16 = 1 << 4;

/// What identifies a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub vendor: u16,
    pub device: u16,
    /// Base class, subclass, programming interface.
    pub class: u32,
    pub revision: u8,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("a PCI capability of {0} bytes does not fit in what is left of configuration space")]
    CapabilityTooLarge(usize),
    #[error("a BAR's size must be a power of two from 16 bytes to 2 GiB, not {0:#x}")]
    BarSize(u64),
    #[error("byte {offset:#x} is {saved:#04x} in the snapshot, and this function's read-only value is {here:#04x} (another kind of device?)")]
    ReadOnly { offset: usize, saved: u8, here: u8 },
    #[error("BAR 0 is {value:#x} in the snapshot, not aligned to the BAR's size {size:#x}")]
    BarAlignment { value: u32, size: u32 },
    #[error("BAR 0 is {value:#x} in the snapshot, and this function has no BAR")]
    NoBar { value: u32 },
}

/// A configuration space as the guest left it (a snapshot: `super::persist`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigState {
    pub bytes: [u8; CONFIG_SIZE],
}

impl Persist for ConfigState {
    fn encode(&self, e: &mut Encoder) {
        e.fixed(&self.bytes);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(ConfigState {
            bytes: d.array("PCI configuration space")?,
        })
    }
}

/// What a guest write changed that the function's owner must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changes {
    /// The BAR's address or the memory decoding bit.
    pub bar: bool,
    /// Bytes of a capability (the owner re-reads its writable fields).
    pub capability: Option<usize>,
}

/// A type 0 configuration space.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    writable: [u8; CONFIG_SIZE],
    /// Size of BAR 0 (a 32-bit memory BAR), if the function has one.
    bar_size: Option<u32>,
    /// Where the next capability goes, and the previous one's `next` byte.
    next_cap: usize,
    last_next: usize,
    /// Start and length of each capability.
    caps: Vec<(usize, usize)>,
}

/// Whether an access of `len` bytes at `offset` is one the configuration space serves.
pub fn access_ok(offset: u64, len: usize) -> Option<usize> {
    let off = usize::try_from(offset).ok()?;
    let ok = matches!(len, 1 | 2 | 4) && off % len == 0 && off.checked_add(len)? <= CONFIG_SIZE;
    ok.then_some(off)
}

impl ConfigSpace {
    pub fn new(id: Identity) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
            bar_size: None,
            next_cap: FIRST_CAP,
            last_next: CAPABILITIES,
            caps: Vec::new(),
        };
        c.put(VENDOR_ID, &id.vendor.to_le_bytes());
        c.put(DEVICE_ID, &id.device.to_le_bytes());
        c.put(REVISION, &[id.revision]);
        c.put(CLASS_PROG, &id.class.to_le_bytes()[..3]);
        c.put(SUBSYSTEM_VENDOR_ID, &id.subsystem_vendor.to_le_bytes());
        c.put(SUBSYSTEM_ID, &id.subsystem.to_le_bytes());
        c.writable[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        c.writable[INTERRUPT_LINE] = 0xff;
        c
    }

    fn put(&mut self, at: usize, data: &[u8]) {
        if let Some(dst) = at
            .checked_add(data.len())
            .and_then(|end| self.bytes.get_mut(at..end))
        {
            dst.copy_from_slice(data);
        }
    }

    /// Bytes `at..at + N` (zeros outside the space).
    pub fn get<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = at.checked_add(N).and_then(|end| self.bytes.get(at..end)) {
            out.copy_from_slice(src);
        }
        out
    }

    pub fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.get(at))
    }

    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.get(at))
    }

    /// Sets bytes the guest cannot write (a capability's read-only state).
    pub fn set_bytes(&mut self, at: usize, data: &[u8]) {
        self.put(at, data);
    }

    /// Gives BAR 0 a 32-bit, non-prefetchable memory BAR of `size` bytes at `addr` (the
    /// firmware's placement; the guest may move it).
    pub fn set_bar0(&mut self, size: u64, addr: u32) -> Result<(), ConfigError> {
        let size32 = u32::try_from(size)
            .ok()
            .filter(|s| s.is_power_of_two() && *s >= 16 && *s <= 1 << 31)
            .ok_or(ConfigError::BarSize(size))?;
        self.bar_size = Some(size32);
        self.put(BAR0, &(addr & !(size32 - 1)).to_le_bytes());
        Ok(())
    }

    /// Appends a capability with `id` and `body` (the bytes after the id and next
    /// pointer), whose bytes are read-only except those `writable` marks; returns its
    /// offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[(usize, u8)],
    ) -> Result<usize, ConfigError> {
        let len = body.len() + 2;
        let at = self.next_cap;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= CONFIG_SIZE)
            .ok_or(ConfigError::CapabilityTooLarge(len))?;
        let Ok(at8) = u8::try_from(at) else {
            return Err(ConfigError::CapabilityTooLarge(len));
        };
        self.put(at, &[id, 0]);
        self.put(at + 2, body);
        self.put(self.last_next, &[at8]);
        for &(off, mask) in writable {
            if let Some(w) = self.writable.get_mut(at + 2 + off) {
                *w = mask;
            }
        }
        let status = self.u16_at(STATUS) | STATUS_CAP_LIST;
        self.put(STATUS, &status.to_le_bytes());
        self.last_next = at + 1;
        // Capabilities start on 4-byte boundaries.
        self.next_cap = (end + 3) & !3;
        self.caps.push((at, len));
        Ok(at)
    }

    /// Serves a guest read (see [`access_ok`]); false when refused (all ones read).
    pub fn read(&self, offset: u64, data: &mut [u8]) -> bool {
        match access_ok(offset, data.len()).and_then(|off| self.bytes.get(off..off + data.len())) {
            Some(src) => {
                data.copy_from_slice(src);
                true
            }
            None => {
                data.fill(0xff);
                METRICS.pci.invalid_config_accesses.inc();
                false
            }
        }
    }

    /// Serves a guest write through the write masks; returns what changed, or `None` when
    /// the access was refused.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<Changes> {
        let Some(off) = access_ok(offset, data.len()) else {
            METRICS.pci.invalid_config_accesses.inc();
            return None;
        };
        let mut changes = Changes::default();
        let bar_range = BAR0..BAR0 + 4;
        for (i, &b) in data.iter().enumerate() {
            let at = off + i;
            if bar_range.contains(&at) {
                changes.bar = true;
                continue;
            }
            let (Some(old), Some(&mask)) = (self.bytes.get(at), self.writable.get(at)) else {
                continue;
            };
            let new = (old & !mask) | (b & mask);
            if new != *old {
                if (COMMAND..COMMAND + 2).contains(&at) {
                    changes.bar = true;
                }
                if let Some(&(start, _)) =
                    self.caps.iter().find(|&&(s, l)| (s..s + l).contains(&at))
                {
                    changes.capability = Some(start);
                }
            }
            if let Some(slot) = self.bytes.get_mut(at) {
                *slot = new;
            }
        }
        if changes.bar {
            self.write_bar(off, data);
        }
        Some(changes)
    }

    /// The part of a write that falls on BAR 0: the address bits take the written bits;
    /// the size and type bits stay. A function without a BAR keeps zero there.
    fn write_bar(&mut self, off: usize, data: &[u8]) {
        let Some(size) = self.bar_size else {
            return;
        };
        let mut reg = self.get::<4>(BAR0);
        for (i, &b) in data.iter().enumerate() {
            if let Some(k) = (off + i).checked_sub(BAR0).filter(|k| *k < 4) {
                reg[k] = b;
            }
        }
        let value = u32::from_le_bytes(reg) & !(size - 1);
        self.put(BAR0, &value.to_le_bytes());
    }

    /// BAR 0's address and size, when memory decoding is on (the guest may place it
    /// anywhere: the caller checks where).
    pub fn bar0(&self) -> Option<(u64, u64)> {
        let size = self.bar_size?;
        (self.u16_at(COMMAND) & COMMAND_MEMORY != 0)
            .then(|| (u64::from(self.u32_at(BAR0)), u64::from(size)))
    }
}

impl ConfigSpace {
    /// The bytes as the guest reads them (a snapshot).
    pub fn save_state(&self) -> ConfigState {
        ConfigState { bytes: self.bytes }
    }

    /// Takes the guest's changes from `saved` (a freshly built space of the same
    /// function): every bit the guest cannot write must be this space's, and BAR 0 must
    /// be aligned to its size (or zero without a BAR). Nothing changes when refused.
    pub fn restore_state(&mut self, saved: &ConfigState) -> Result<(), ConfigError> {
        let bar_range = BAR0..BAR0 + 4;
        for (offset, ((&s, &here), &mask)) in saved
            .bytes
            .iter()
            .zip(&self.bytes)
            .zip(&self.writable)
            .enumerate()
        {
            if !bar_range.contains(&offset) && s & !mask != here & !mask {
                return Err(ConfigError::ReadOnly {
                    offset,
                    saved: s,
                    here,
                });
            }
        }
        let mut bar = [0u8; 4];
        bar.copy_from_slice(&saved.bytes[bar_range]);
        let value = u32::from_le_bytes(bar);
        match self.bar_size {
            Some(size) if value & (size - 1) != 0 => {
                return Err(ConfigError::BarAlignment { value, size })
            }
            None if value != 0 => return Err(ConfigError::NoBar { value }),
            _ => {}
        }
        self.bytes = saved.bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        let mut c = ConfigSpace::new(Identity {
            vendor: 0x1af4,
            device: 0x1044,
            class: 0x00ff_0000,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        c.set_bar0(0x8000, 0xe000_0000).unwrap();
        c
    }

    fn r32(c: &ConfigSpace, off: u64) -> u32 {
        let mut d = [0u8; 4];
        c.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn identity_and_bar_sizing() {
        let mut c = space();
        assert_eq!(r32(&c, 0), 0x1044_1af4);
        assert_eq!(r32(&c, 0x10), 0xe000_0000);
        assert_eq!(c.bar0(), None, "decoding is off after reset");
        let ch = c.write(0x10, &u32::MAX.to_le_bytes()).unwrap();
        assert!(ch.bar);
        assert_eq!(r32(&c, 0x10), 0xffff_8000, "all ones read back as the size");
        c.write(0x10, &0xe123_4567u32.to_le_bytes()).unwrap();
        assert_eq!(r32(&c, 0x10), 0xe123_0000);
        c.write(4, &COMMAND_MEMORY.to_le_bytes()).unwrap();
        assert_eq!(c.bar0(), Some((0xe123_0000, 0x8000)));
        // Read-only identification.
        c.write(0, &[0, 0]).unwrap();
        assert_eq!(r32(&c, 0), 0x1044_1af4);
    }

    #[test]
    fn hostile_accesses_are_refused() {
        let mut c = space();
        let mut d = [0u8; 4];
        for (off, len) in [
            (1u64, 2usize),
            (2, 4),
            (255, 2),
            (256, 1),
            (u64::MAX, 4),
            (0, 3),
        ] {
            let mut buf = vec![0u8; len];
            assert!(!c.read(off, &mut buf), "{off} {len}");
            assert!(buf.iter().all(|&b| b == 0xff));
            assert!(c.write(off, &buf).is_none());
        }
        assert!(!c.read(0, &mut [0u8; 8]));
        assert!(c.read(0xfc, &mut d));
    }

    #[test]
    fn capabilities_link_and_keep_their_masks() {
        let mut c = space();
        let a = c.add_capability(0x09, &[1, 2, 3], &[]).unwrap();
        let b = c.add_capability(0x11, &[0, 0, 0, 0], &[(1, 0xc0)]).unwrap();
        assert_eq!((a, b), (0x40, 0x48));
        assert_eq!(c.get::<1>(CAPABILITIES), [0x40]);
        assert_eq!(c.get::<2>(a), [0x09, 0x48]);
        assert_eq!(c.get::<2>(b), [0x11, 0]);
        let ch = c.write(0x4a, &[0xff, 0xff]).unwrap();
        assert_eq!(ch.capability, Some(b));
        assert_eq!(c.get::<2>(0x4a), [0, 0xc0]);
        assert_ne!(c.u16_at(STATUS) & STATUS_CAP_LIST, 0);
        assert!(c.add_capability(1, &[0; 250], &[]).is_err());
    }

    #[test]
    fn a_saved_space_restores_what_the_guest_changed_and_nothing_else() {
        let mut c = space();
        let cap = c.add_capability(0x11, &[0, 0, 0, 0], &[(1, 0xc0)]).unwrap();
        c.write(0x10, &0xe010_0000u32.to_le_bytes()).unwrap();
        c.write(4, &COMMAND_MEMORY.to_le_bytes()).unwrap();
        c.write(cap as u64 + 3, &[0xc0]).unwrap();
        let saved = c.save_state();
        let mut fresh = space();
        fresh
            .add_capability(0x11, &[0, 0, 0, 0], &[(1, 0xc0)])
            .unwrap();
        fresh.restore_state(&saved).unwrap();
        assert_eq!(fresh.bar0(), Some((0xe010_0000, 0x8000)));
        assert_eq!(fresh.get::<1>(cap + 3), [0xc0]);
        assert_eq!(fresh.save_state(), saved);
        // Another device id, a read-only bit set, a misaligned BAR: refused, unchanged.
        let mut other = space();
        other
            .add_capability(0x11, &[0, 0, 0, 0], &[(1, 0xc0)])
            .unwrap();
        let before = other.save_state();
        let mut bad = saved.clone();
        bad.bytes[DEVICE_ID] = 0x45;
        assert_eq!(
            other.restore_state(&bad).unwrap_err(),
            ConfigError::ReadOnly {
                offset: DEVICE_ID,
                saved: 0x45,
                here: 0x44
            }
        );
        let mut bad = saved.clone();
        bad.bytes[cap + 3] = 0xff;
        assert!(matches!(
            other.restore_state(&bad),
            Err(ConfigError::ReadOnly { .. })
        ));
        let mut bad = saved.clone();
        bad.bytes[BAR0 + 1] = 0x10;
        assert_eq!(
            other.restore_state(&bad).unwrap_err(),
            ConfigError::BarAlignment {
                value: 0xe010_1000,
                size: 0x8000
            }
        );
        assert_eq!(other.save_state(), before);
    }
}
