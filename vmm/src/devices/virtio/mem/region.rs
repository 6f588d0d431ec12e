//! The hot-plug region on the host: which blocks are plugged, which KVM memory slots are
//! registered, and giving unplugged blocks back to the host.
//!
//! The region is one anonymous private mapping (`MAP_NORESERVE`, made by
//! [`crate::vstate::memory::add_hotplug_region`]) that is part of the VMM's guest memory,
//! so the devices' queues may use plugged blocks like any RAM. The guest's vCPUs reach it
//! only through KVM memory slots of `slot_size` bytes each, as Firecracker does: a slot is
//! registered when the first block in it is plugged and removed when its last plugged block
//! is unplugged (or on UNPLUG_ALL). Removing comes before the `madvise(MADV_DONTNEED)` of
//! the unplugged blocks, so the guest can never fault a just-discarded page back in through
//! a stale slot; blocks unplugged from a slot that keeps other plugged blocks stay mapped to
//! the guest (the slot is the host's unit of protection) but their pages are given back.

use super::request::BlockState;
use crate::metrics::METRICS;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Registers and removes KVM memory slots (the VM's `KVM_SET_USER_MEMORY_REGION`; a
/// stand-in in unit tests).
pub trait MemorySlots: Send {
    /// Registers slot `slot` as `size` bytes of guest memory at `guest_addr`, backed by the
    /// host's `host_addr`; `size` 0 removes the slot.
    ///
    /// # Safety
    /// `[host_addr, host_addr + size)` must stay mapped, readable and writable, for as long
    /// as the slot is registered or the VM exists, and nothing may hold a Rust reference into
    /// it (the guest writes it at any time).
    unsafe fn set_slot(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
    ) -> Result<(), String>;
}

/// Why the region could not be set up.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RegionError {
    #[error("the hot-plug region [{addr:#x}, +{size:#x}) is not one mapping of guest memory")]
    NotMapped { addr: u64, size: u64 },
    #[error("the hot-plug region's sizes do not divide (size {size:#x}, slot {slot:#x}, block {block:#x})")]
    Geometry { size: u64, slot: u64, block: u64 },
}

/// Why a plug could not be done (the blocks stay unplugged).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlugError {
    #[error("KVM refused memory slot {slot}: {reason}")]
    Slot { slot: u32, reason: String },
}

/// The hot-plug region's host side.
pub struct HotplugRegion {
    addr: u64,
    size: u64,
    block: u64,
    slot_size: u64,
    /// Host address of the region's first byte, inside `mem`'s mapping.
    host: u64,
    /// One bit per block.
    plugged: Vec<u64>,
    plugged_blocks: u64,
    /// Per slot: registered with KVM.
    registered: Vec<bool>,
    /// KVM slot number of the region's first slot.
    first_slot: u32,
    /// `None` until the VM exists (and in unit tests that need no KVM).
    slots: Option<Box<dyn MemorySlots>>,
    /// Keeps the mapping alive for as long as a slot may refer to it (declared after
    /// `slots`, so dropped after the VM descriptor it holds).
    _mem: GuestMemoryMmap,
}

impl std::fmt::Debug for HotplugRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotplugRegion")
            .field("addr", &self.addr)
            .field("size", &self.size)
            .field("plugged_blocks", &self.plugged_blocks)
            .finish_non_exhaustive()
    }
}

impl HotplugRegion {
    /// The region `[addr, addr + size)` of `mem` (one mapping), in blocks of `block` bytes
    /// and KVM slots of `slot_size` bytes, every block unplugged and no slot registered.
    pub fn new(
        mem: &GuestMemoryMmap,
        addr: u64,
        size: u64,
        block: u64,
        slot_size: u64,
    ) -> Result<HotplugRegion, RegionError> {
        let divides = block.is_power_of_two()
            && slot_size >= block
            && slot_size.is_multiple_of(block)
            && size >= slot_size
            && size.is_multiple_of(slot_size);
        if !divides {
            return Err(RegionError::Geometry {
                size,
                slot: slot_size,
                block,
            });
        }
        let not_mapped = RegionError::NotMapped { addr, size };
        let len = usize::try_from(size).map_err(|_| not_mapped.clone())?;
        // One region holds the whole range (get_slice refuses a range over two).
        mem.get_slice(GuestAddress(addr), len)
            .map_err(|_| not_mapped.clone())?;
        let host = mem
            .get_host_address(GuestAddress(addr))
            .map_err(|_| not_mapped.clone())? as u64;
        let blocks = size / block;
        let words = usize::try_from(blocks.div_ceil(64)).map_err(|_| not_mapped.clone())?;
        let slots = usize::try_from(size / slot_size).map_err(|_| not_mapped)?;
        Ok(HotplugRegion {
            addr,
            size,
            block,
            slot_size,
            host,
            plugged: vec![0; words],
            plugged_blocks: 0,
            registered: vec![false; slots],
            first_slot: 0,
            slots: None,
            _mem: mem.clone(),
        })
    }

    /// From now on, slots are registered through `slots`, numbered from `first_slot`.
    pub fn set_slots(&mut self, slots: Box<dyn MemorySlots>, first_slot: u32) {
        self.slots = Some(slots);
        self.first_slot = first_slot;
    }

    pub fn addr(&self) -> u64 {
        self.addr
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn block_size(&self) -> u64 {
        self.block
    }

    pub fn slot_size(&self) -> u64 {
        self.slot_size
    }

    /// How many KVM slots the region has.
    pub fn slot_count(&self) -> usize {
        self.registered.len()
    }

    pub fn plugged_bytes(&self) -> u64 {
        self.plugged_blocks * self.block
    }

    /// Whether slot `index` (from 0) is registered with KVM.
    pub fn slot_registered(&self, index: usize) -> bool {
        self.registered.get(index).copied().unwrap_or(false)
    }

    fn is_plugged(&self, block: u64) -> bool {
        let (w, b) = ((block / 64) as usize, block % 64);
        self.plugged.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    fn set(&mut self, block: u64, on: bool) {
        let (w, b) = ((block / 64) as usize, block % 64);
        if let Some(word) = self.plugged.get_mut(w) {
            let was = *word & (1 << b) != 0;
            if on {
                *word |= 1 << b;
            } else {
                *word &= !(1 << b);
            }
            match (was, on) {
                (false, true) => self.plugged_blocks += 1,
                (true, false) => self.plugged_blocks -= 1,
                _ => {}
            }
        }
    }

    /// The state of blocks `[first, first + count)` (checked by the caller to be inside
    /// the region).
    pub fn state(&self, first: u64, count: u64) -> BlockState {
        let plugged = (first..first + count)
            .filter(|&b| self.is_plugged(b))
            .count() as u64;
        match plugged {
            0 => BlockState::Unplugged,
            n if n == count => BlockState::Plugged,
            _ => BlockState::Mixed,
        }
    }

    fn blocks_per_slot(&self) -> u64 {
        self.slot_size / self.block
    }

    /// The slots (indices from 0) blocks `[first, first + count)` touch.
    fn slots_of(&self, first: u64, count: u64) -> std::ops::Range<usize> {
        let per = self.blocks_per_slot();
        let index = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let lo = index(first / per);
        let hi = index((first + count).div_ceil(per));
        lo.min(self.registered.len())..hi.min(self.registered.len())
    }

    /// Registers (`on`) or removes slot `index` with KVM, if it is not so already.
    fn set_slot(&mut self, index: usize, on: bool) -> Result<(), PlugError> {
        if self.registered.get(index).copied() == Some(on) || index >= self.registered.len() {
            return Ok(());
        }
        let offset = index as u64 * self.slot_size;
        // The VM has room for first_slot + every slot (checked when the slots were given).
        let Some(slot) = u32::try_from(index)
            .ok()
            .and_then(|i| self.first_slot.checked_add(i))
        else {
            METRICS.memory_hotplug.slot_fails.inc();
            return Err(PlugError::Slot {
                slot: u32::MAX,
                reason: format!("slot index {index} is past KVM's slot numbers"),
            });
        };
        if let Some(kvm) = &self.slots {
            let size = if on { self.slot_size } else { 0 };
            // SAFETY: [host + offset, + slot_size) lies inside the region's mapping, which
            // `_mem` keeps mapped (read/write, private anonymous) for as long as this
            // HotplugRegion, and so the VM descriptor in `slots`, exists; Rust code only
            // reaches guest memory through vm-memory's volatile accessors.
            let done = unsafe { kvm.set_slot(slot, self.addr + offset, size, self.host + offset) };
            if let Err(reason) = done {
                METRICS.memory_hotplug.slot_fails.inc();
                return Err(PlugError::Slot { slot, reason });
            }
        }
        if on {
            METRICS.memory_hotplug.slots_added.inc();
        } else {
            METRICS.memory_hotplug.slots_removed.inc();
        }
        if let Some(r) = self.registered.get_mut(index) {
            *r = on;
        }
        Ok(())
    }

    /// Plugs blocks `[first, first + count)` (checked by the caller: inside the region, all
    /// unplugged) and registers the slots they are in. On a refusal nothing changes.
    pub fn plug(&mut self, first: u64, count: u64) -> Result<(), PlugError> {
        let slots = self.slots_of(first, count);
        let newly: Vec<usize> = slots
            .clone()
            .filter(|&s| !self.slot_registered(s))
            .collect();
        for (done, &s) in newly.iter().enumerate() {
            if let Err(e) = self.set_slot(s, true) {
                for &undo in &newly[..done] {
                    let _ = self.set_slot(undo, false);
                }
                return Err(e);
            }
        }
        for b in first..first + count {
            self.set(b, true);
        }
        Ok(())
    }

    /// The plugged-block bitmap (block `b` is bit `b % 64` of word `b / 64`).
    pub fn plugged_bitmap(&self) -> &[u64] {
        &self.plugged
    }

    /// A snapshot's plugged blocks into this region (nothing plugged yet): `bitmap` (of
    /// this region's length, checked by the caller) becomes the plugged set and exactly
    /// the slots holding a plugged block are registered. On a refusal nothing stays
    /// registered and nothing is plugged.
    pub fn restore_plugged(&mut self, bitmap: &[u64]) -> Result<(), PlugError> {
        let per = self.blocks_per_slot();
        let blocks = self.size / self.block;
        let mut plugged = vec![0u64; self.plugged.len()];
        let mut count = 0u64;
        for (w, (dst, &src)) in plugged.iter_mut().zip(bitmap).enumerate() {
            // Only bits of the region's blocks.
            let first = w as u64 * 64;
            let valid = match blocks.saturating_sub(first) {
                n if n >= 64 => u64::MAX,
                n => (1u64 << n) - 1,
            };
            *dst = src & valid;
            count += u64::from(dst.count_ones());
        }
        self.plugged = plugged;
        self.plugged_blocks = count;
        let holding: Vec<usize> = (0..self.registered.len())
            .filter(|&s| self.state(s as u64 * per, per) != BlockState::Unplugged)
            .collect();
        for (done, &s) in holding.iter().enumerate() {
            if let Err(e) = self.set_slot(s, true) {
                for &undo in &holding[..done] {
                    let _ = self.set_slot(undo, false);
                }
                self.plugged.fill(0);
                self.plugged_blocks = 0;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unplugs blocks `[first, first + count)` (checked by the caller: inside the region):
    /// removes each slot left without a plugged block, then gives the blocks' pages back to
    /// the host. Returns the number of bytes whose discard failed.
    pub fn unplug(&mut self, first: u64, count: u64) -> u64 {
        for b in first..first + count {
            self.set(b, false);
        }
        let per = self.blocks_per_slot();
        for s in self.slots_of(first, count) {
            let start = s as u64 * per;
            if self.state(start, per) == BlockState::Unplugged {
                // A removal KVM refuses leaves the slot registered; it is counted and
                // retried at the next unplug. The pages are given back all the same.
                let _ = self.set_slot(s, false);
            }
        }
        self.discard(first * self.block, count * self.block)
    }

    /// UNPLUG_ALL: every block unplugged, every slot removed, the whole region given back.
    pub fn unplug_all(&mut self) -> u64 {
        self.plugged.fill(0);
        self.plugged_blocks = 0;
        for s in 0..self.registered.len() {
            let _ = self.set_slot(s, false);
        }
        self.discard(0, self.size)
    }

    /// `madvise(MADV_DONTNEED)` on `[offset, offset + len)` of the region; returns the bytes
    /// that could not be given back.
    fn discard(&self, offset: u64, len: u64) -> u64 {
        let (Ok(n), true) = (
            usize::try_from(len),
            offset.saturating_add(len) <= self.size,
        ) else {
            return len;
        };
        // SAFETY: [host + offset, + len) lies inside the region's anonymous private mapping,
        // kept alive by `_mem`. MADV_DONTNEED only replaces its pages with zero-fill-on-demand
        // pages; nothing holds a Rust reference into guest memory (vm-memory accesses it
        // with volatile copies), so no Rust value changes under a reference.
        let rc = unsafe {
            libc::madvise(
                (self.host + offset) as *mut libc::c_void,
                n,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            0
        } else {
            METRICS.memory_hotplug.unplug_discard_fails.inc();
            len
        }
    }
}
