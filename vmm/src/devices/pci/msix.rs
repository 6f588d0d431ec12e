//! MSI-X (PCI 3.0, section 6.8.2): a function's vector table and pending bit array, and
//! the delivery of its interrupts through irqfds on KVM MSI routes.
//!
//! Each vector has a GSI (from [`super::platform::MSI_GSI_START`]) with an irqfd; a
//! vector's table entry becomes its GSI's MSI route once its address is one of the local
//! APICs' (0xfee00000-0xfeefffff): another address (a hostile or broken guest) gets no
//! route, and is counted. Masking is done here, not in KVM: a masked vector (or a masked
//! function) sets its pending bit instead of writing the irqfd, and unmasking it delivers
//! what was pending.
//!
//! The table is guest input: accesses are 4 or 8 bytes, aligned, inside the table or the
//! PBA; anything else is refused (reads see zeros) and the caller counts it.

use super::persist::{MsixEntryState, MsixState, PciStateError};
use super::platform::{MsiMessage, Platform};
use crate::metrics::METRICS;
use crate::sync::lock;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// [`ENTRY_SIZE`] as an index.
const ENTRY_BYTES: usize = 16;
/// Capability id of MSI-X.
pub const CAP_ID: u8 = 0x11;
/// Bytes of one table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Message Control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message Control: function mask.
pub const CONTROL_MASK: u16 = 1 << 14;
/// Vector Control: the entry is masked.
const VECTOR_MASKED: u32 = 1;
/// Where x86 MSI writes go: the local APICs' window.
const MSI_WINDOW: std::ops::RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    addr: u64,
    data: u32,
    control: u32,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            addr: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

struct Table {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
}

/// One function's MSI-X vectors: shared by its transport (table and capability writes on
/// a vCPU thread) and its device (interrupts, on the VMM thread).
pub struct MsixVectors {
    table: Mutex<Table>,
    /// One per vector, each registered with KVM as the irqfd of `gsis[i]`.
    irqfds: Vec<EventFd>,
    gsis: Vec<u32>,
    platform: Arc<dyn Platform>,
}

impl MsixVectors {
    /// `irqfds[i]` raises `gsis[i]`; both have one entry per vector.
    pub fn new(irqfds: Vec<EventFd>, gsis: Vec<u32>, platform: Arc<dyn Platform>) -> Self {
        let n = irqfds.len().min(gsis.len());
        MsixVectors {
            table: Mutex::new(Table {
                entries: vec![Entry::default(); n],
                pending: vec![false; n],
                enabled: false,
                function_masked: false,
            }),
            irqfds,
            gsis,
            platform,
        }
    }

    pub fn count(&self) -> usize {
        lock(&self.table).entries.len()
    }

    /// The irqfds and their GSIs, for the builder to register with KVM.
    pub fn irqfds(&self) -> impl Iterator<Item = (&EventFd, u32)> {
        self.irqfds.iter().zip(self.gsis.iter().copied())
    }

    /// Raises `vector`: delivered, held pending, or dropped (MSI-X off, no such vector).
    pub fn fire(&self, vector: u16) {
        let mut t = lock(&self.table);
        let i = usize::from(vector);
        let Some(entry) = t.entries.get(i).copied() else {
            METRICS.pci.msix_dropped.inc();
            return;
        };
        if !t.enabled {
            METRICS.pci.msix_dropped.inc();
            return;
        }
        if t.function_masked || entry.control & VECTOR_MASKED != 0 {
            if let Some(p) = t.pending.get_mut(i) {
                *p = true;
            }
            METRICS.pci.msix_pending.inc();
            return;
        }
        drop(t);
        self.deliver(i, entry);
    }

    fn deliver(&self, i: usize, entry: Entry) {
        if !MSI_WINDOW.contains(&entry.addr) {
            METRICS.pci.msix_dropped.inc();
            return;
        }
        if let Some(fd) = self.irqfds.get(i) {
            if fd.write(1).is_err() {
                METRICS.virtio.interrupt_fails.inc();
            }
        }
    }

    /// The capability's Message Control changed (enable, function mask).
    pub fn set_control(&self, control: u16) {
        let mut t = lock(&self.table);
        t.enabled = control & CONTROL_ENABLE != 0;
        t.function_masked = control & CONTROL_MASK != 0;
        self.flush_pending(t);
    }

    /// Delivers what became unmasked and was pending.
    fn flush_pending(&self, mut t: std::sync::MutexGuard<'_, Table>) {
        if !t.enabled || t.function_masked {
            return;
        }
        let mut due = Vec::new();
        let Table {
            entries, pending, ..
        } = &mut *t;
        for (i, (e, p)) in entries.iter().zip(pending.iter_mut()).enumerate() {
            if *p && e.control & VECTOR_MASKED == 0 {
                *p = false;
                due.push((i, *e));
            }
        }
        drop(t);
        for (i, e) in due {
            self.deliver(i, e);
        }
    }

    /// Reads the table at `offset` (from its start); false when refused.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) -> bool {
        let t = lock(&self.table);
        let Some((i, field)) = table_slot(offset, data.len(), t.entries.len()) else {
            data.fill(0);
            return false;
        };
        let Some(e) = t.entries.get(i) else {
            data.fill(0);
            return false;
        };
        let words = [
            (e.addr & 0xffff_ffff) as u32,
            (e.addr >> 32) as u32,
            e.data,
            e.control,
        ];
        let mut bytes = [0u8; 16];
        for (k, w) in words.iter().enumerate() {
            bytes[k * 4..k * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        data.copy_from_slice(&bytes[field..field + data.len()]);
        true
    }

    /// Writes the table at `offset`; false when refused. A changed address or data
    /// re-routes the vector's GSI; unmasking delivers a pending interrupt.
    pub fn write_table(&self, offset: u64, data: &[u8]) -> bool {
        let mut t = lock(&self.table);
        let Some((i, field)) = table_slot(offset, data.len(), t.entries.len()) else {
            return false;
        };
        let Some(e) = t.entries.get_mut(i) else {
            return false;
        };
        let before = *e;
        for (k, &b) in data.iter().enumerate() {
            let at = field + k;
            let shift = (at % 4) * 8;
            match at / 4 {
                0 => e.addr = (e.addr & !(0xff << shift)) | (u64::from(b) << shift),
                1 => e.addr = (e.addr & !(0xff << (shift + 32))) | (u64::from(b) << (shift + 32)),
                2 => e.data = (e.data & !(0xff << shift)) | (u32::from(b) << shift),
                _ => e.control = (e.control & !(0xff << shift)) | (u32::from(b) << shift),
            }
        }
        // Only the mask bit of Vector Control is defined.
        e.control &= VECTOR_MASKED;
        let after = *e;
        if (after.addr, after.data) != (before.addr, before.data) {
            self.route(i, after);
        }
        if before.control & VECTOR_MASKED != 0 && after.control & VECTOR_MASKED == 0 {
            self.flush_pending(t);
        }
        true
    }

    fn route(&self, i: usize, e: Entry) {
        let Some(&gsi) = self.gsis.get(i) else {
            return;
        };
        let msg = if MSI_WINDOW.contains(&e.addr) {
            Some(MsiMessage {
                address: e.addr,
                data: e.data,
            })
        } else {
            if e.addr != 0 {
                METRICS.pci.msix_bad_addresses.inc();
            }
            None
        };
        // Counted by the platform; the vector then delivers nothing.
        let _ = self.platform.set_msi_route(gsi, msg);
    }

    /// Reads the pending bit array at `offset`; false when refused.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) -> bool {
        let t = lock(&self.table);
        let words = t.pending.len().div_ceil(64).max(1);
        let ok = matches!(data.len(), 4 | 8)
            && offset.is_multiple_of(data.len() as u64)
            && offset
                .checked_add(data.len() as u64)
                .is_some_and(|end| end <= words as u64 * 8);
        let start = usize::try_from(offset).ok().filter(|_| ok);
        let Some(start) = start else {
            data.fill(0);
            return false;
        };
        let mut bits = vec![0u8; words * 8];
        for (i, &p) in t.pending.iter().enumerate() {
            if p {
                bits[i / 8] |= 1 << (i % 8);
            }
        }
        data.copy_from_slice(&bits[start..start + data.len()]);
        true
    }
}

impl MsixVectors {
    /// The table and the pending bits (a snapshot; enable and function mask are in
    /// configuration space).
    pub fn save_state(&self) -> MsixState {
        let t = lock(&self.table);
        let entries = t
            .entries
            .iter()
            .zip(&t.pending)
            .map(|(e, &pending)| MsixEntryState {
                addr: e.addr,
                data: e.data,
                masked: e.control & VECTOR_MASKED != 0,
                pending,
            })
            .collect();
        MsixState { entries }
    }

    /// Loads `s` into these vectors (freshly built, with as many entries) under the
    /// capability's Message Control `control`, and routes each vector whose address is the
    /// local APICs' as the guest's writes had. A pending bit stays pending until the guest
    /// unmasks its vector; nothing is delivered here.
    pub fn restore_state(&self, s: &MsixState, control: u16) -> Result<(), PciStateError> {
        let mut t = lock(&self.table);
        if s.entries.len() != t.entries.len() {
            return Err(PciStateError::VectorCount {
                saved: s.entries.len(),
                here: t.entries.len(),
            });
        }
        let Table {
            entries,
            pending,
            enabled,
            function_masked,
        } = &mut *t;
        for (saved, (e, p)) in s.entries.iter().zip(entries.iter_mut().zip(pending)) {
            *e = Entry {
                addr: saved.addr,
                data: saved.data,
                control: if saved.masked { VECTOR_MASKED } else { 0 },
            };
            *p = saved.pending;
        }
        *enabled = control & CONTROL_ENABLE != 0;
        *function_masked = control & CONTROL_MASK != 0;
        let routed: Vec<(usize, Entry)> = entries
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, e)| MSI_WINDOW.contains(&e.addr))
            .collect();
        drop(t);
        for (vector, e) in routed {
            let Some(&gsi) = self.gsis.get(vector) else {
                continue;
            };
            let msg = MsiMessage {
                address: e.addr,
                data: e.data,
            };
            self.platform
                .set_msi_route(gsi, Some(msg))
                .map_err(|source| PciStateError::Route { vector, source })?;
        }
        Ok(())
    }
}

/// The entry and byte within it of a 4- or 8-byte aligned access at `offset` in a table
/// of `count` entries.
fn table_slot(offset: u64, len: usize, count: usize) -> Option<(usize, usize)> {
    if !matches!(len, 4 | 8) || !offset.is_multiple_of(len as u64) {
        return None;
    }
    let i = usize::try_from(offset / ENTRY_SIZE).ok()?;
    let field = usize::try_from(offset % ENTRY_SIZE).ok()?;
    (i < count && field + len <= ENTRY_BYTES).then_some((i, field))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
