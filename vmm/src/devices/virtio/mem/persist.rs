//! Snapshots of the virtio-mem device: its geometry, the host's request, the usable region
//! and the plugged-block bitmap (format v1.4 on, its own section of the state file: see
//! [`crate::persist::state`]). The queue and the transport are saved with the other virtio
//! transports; the plugged blocks' contents are in the memory file, after the RAM.
//!
//! Everything read back is checked against the restored configuration before any of it
//! reaches the device or KVM ([`VirtioMemState::check`]): a file that disagrees (another
//! size, a bitmap of another length, a plugged block outside the usable region) is refused
//! naming what differs.

use super::region::PlugError;
use super::VirtioMem;
use crate::devices::virtio::QueuePosition;
use crate::snapshot::{CodecError, Decoder, Encoder, Persist};

/// The most bitmap words a state may hold: a region ending below 2^46 (the builder's limit)
/// in 2 MiB blocks (the smallest) is 2^25 blocks, 2^19 words (4 MiB of state).
pub const MAX_BITMAP_WORDS: usize = 1 << 19;

/// The device's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VirtioMemState {
    /// Guest-physical address of the region.
    pub addr: u64,
    /// Bytes of the region (`total_size_mib`).
    pub total: u64,
    /// Bytes of a block.
    pub block: u64,
    /// Bytes of a KVM slot.
    pub slot: u64,
    /// The host's `requested_size`, in bytes.
    pub requested: u64,
    /// The usable region's size, in bytes.
    pub usable: u64,
    /// One bit per block, 64 blocks a word (block `b` is bit `b % 64` of word `b / 64`).
    pub plugged: Vec<u64>,
}

/// Why a saved virtio-mem state cannot be the state of the configured device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VirtioMemStateError {
    #[error("the snapshot's hot-plug region is at {saved:#x}, the device's at {here:#x}")]
    Addr { saved: u64, here: u64 },
    #[error("the snapshot's hot-plug {what} is {saved:#x} bytes, the configuration's (memory-hotplug) {here:#x}")]
    Size {
        what: &'static str,
        saved: u64,
        here: u64,
    },
    #[error("the snapshot's hot-plug bitmap has {saved} words, {here} blocks need {need}")]
    BitmapLength { saved: usize, here: u64, need: u64 },
    #[error("the snapshot's hot-plug bitmap marks block {block} plugged, past the region's {blocks} blocks")]
    PastRegion { block: u64, blocks: u64 },
    #[error("the snapshot's hot-plug usable region ({usable:#x} bytes) is not whole slots of the region ({total:#x} bytes)")]
    Usable { usable: u64, total: u64 },
    #[error("the snapshot's hot-plug requested size ({requested:#x} bytes) is not whole blocks of the region ({total:#x} bytes)")]
    Requested { requested: u64, total: u64 },
    #[error("the snapshot's hot-plug bitmap marks block {block} plugged, outside the usable region ({usable:#x} bytes)")]
    OutsideUsable { block: u64, usable: u64 },
    #[error("restoring the plugged blocks: {0}")]
    Slot(#[from] PlugError),
}

impl VirtioMemState {
    /// The plugged blocks, in order.
    pub fn plugged_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.plugged.iter().enumerate().flat_map(|(w, &word)| {
            (0..64u64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w as u64 * 64 + b)
        })
    }

    /// The runs of blocks (first block, count) whose plugged state is `plugged`, in order,
    /// over the region's blocks.
    pub fn runs(&self, plugged: bool) -> Vec<(u64, u64)> {
        let blocks = self.total / self.block.max(1);
        let is = |b: u64| {
            let word = self.plugged.get((b / 64) as usize).copied().unwrap_or(0);
            (word & (1 << (b % 64)) != 0) == plugged
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        for b in 0..blocks {
            if !is(b) {
                continue;
            }
            match out.last_mut() {
                Some((first, n)) if *first + *n == b => *n += 1,
                _ => out.push((b, 1)),
            }
        }
        out
    }

    /// Checks this state against the device's geometry (`addr`, and `total`, `block`,
    /// `slot` from the configuration): same sizes, a bitmap of one bit per block and no
    /// more, a usable region of whole slots, a request of whole blocks, every plugged block
    /// inside the usable region.
    pub fn check(
        &self,
        addr: u64,
        total: u64,
        block: u64,
        slot: u64,
    ) -> Result<(), VirtioMemStateError> {
        if self.addr != addr {
            return Err(VirtioMemStateError::Addr {
                saved: self.addr,
                here: addr,
            });
        }
        for (what, saved, here) in [
            ("region size", self.total, total),
            ("block size", self.block, block),
            ("slot size", self.slot, slot),
        ] {
            if saved != here {
                return Err(VirtioMemStateError::Size { what, saved, here });
            }
        }
        // The configuration was validated: block and slot are non-zero and divide total.
        let blocks = total / block.max(1);
        let need = blocks.div_ceil(64);
        if self.plugged.len() as u64 != need {
            return Err(VirtioMemStateError::BitmapLength {
                saved: self.plugged.len(),
                here: blocks,
                need,
            });
        }
        if self.usable > total || !self.usable.is_multiple_of(slot.max(1)) {
            return Err(VirtioMemStateError::Usable {
                usable: self.usable,
                total,
            });
        }
        if self.requested > total || !self.requested.is_multiple_of(block.max(1)) {
            return Err(VirtioMemStateError::Requested {
                requested: self.requested,
                total,
            });
        }
        let usable_blocks = self.usable / block.max(1);
        for b in self.plugged_blocks() {
            if b >= blocks {
                return Err(VirtioMemStateError::PastRegion { block: b, blocks });
            }
            if b >= usable_blocks {
                return Err(VirtioMemStateError::OutsideUsable {
                    block: b,
                    usable: self.usable,
                });
            }
        }
        Ok(())
    }
}

impl Persist for VirtioMemState {
    fn encode(&self, e: &mut Encoder) {
        for v in [
            self.addr,
            self.total,
            self.block,
            self.slot,
            self.requested,
            self.usable,
        ] {
            e.u64(v);
        }
        e.count(self.plugged.len());
        for w in &self.plugged {
            e.u64(*w);
        }
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        let addr = d.u64("hot-plug region address")?;
        let total = d.u64("hot-plug region size")?;
        let block = d.u64("hot-plug block size")?;
        let slot = d.u64("hot-plug slot size")?;
        let requested = d.u64("hot-plug requested size")?;
        let usable = d.u64("hot-plug usable size")?;
        // Bounded, and by the input left: a hostile count allocates nothing it does not hold.
        let n = d.count("hot-plug bitmap", MAX_BITMAP_WORDS, 8)?;
        let mut plugged = Vec::with_capacity(n);
        for _ in 0..n {
            plugged.push(d.u64("hot-plug bitmap word")?);
        }
        Ok(VirtioMemState {
            addr,
            total,
            block,
            slot,
            requested,
            usable,
            plugged,
        })
    }
}

impl VirtioMem {
    /// Where the started device's queue is (the transport saves it and restarts the device
    /// there).
    pub(super) fn positions(&self) -> Vec<QueuePosition> {
        self.active
            .iter()
            .map(|a| QueuePosition::of(&a.queue))
            .collect()
    }

    /// The device's state (the VM paused).
    pub fn save_state(&self) -> VirtioMemState {
        VirtioMemState {
            addr: self.region.addr(),
            total: self.region.size(),
            block: self.region.block_size(),
            slot: self.region.slot_size(),
            requested: self.requested,
            usable: self.usable,
            plugged: self.region.plugged_bitmap().to_vec(),
        }
    }

    /// Loads `s` into this freshly built device (nothing plugged yet, its slots given):
    /// checked against the device's geometry first, then the request, the usable region
    /// and the plugged blocks, whose KVM slots are registered (exactly those holding a
    /// plugged block). The blocks' contents are the caller's (the memory file).
    pub fn restore_state(&mut self, s: &VirtioMemState) -> Result<(), VirtioMemStateError> {
        s.check(
            self.region.addr(),
            self.region.size(),
            self.region.block_size(),
            self.region.slot_size(),
        )?;
        self.region.restore_plugged(&s.plugged)?;
        self.requested = s.requested;
        self.usable = s.usable;
        Ok(())
    }
}
