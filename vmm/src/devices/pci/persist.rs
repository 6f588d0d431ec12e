//! Snapshots of the PCI bus: what the guest can change and a restored bus must show it
//! again, as the guest left it.
//!
//! - a function's configuration space ([`ConfigState`], kept by `config`: its 256 bytes; on
//!   restore the bytes the guest cannot write must be this function's, so a snapshot of
//!   another kind of device is refused, and BAR 0 must be aligned to its size);
//! - a function's MSI-X vectors ([`MsixState`]: each table entry's address, data, mask bit
//!   and pending bit; enable and function mask are in the capability's Message Control, in
//!   configuration space);
//! - the bus ([`RootState`]: the configuration address register and the host bridge's
//!   configuration space).
//!
//! The owners apply them: `ConfigSpace::restore_state`, `MsixVectors::restore_state`,
//! `PciRoot::restore_state` and `PciRoot::accept_restored_bars`, which registers each BAR's
//! ioeventfds where the guest left it (a BAR the guest left outside the window decodes
//! nothing, as at run time).

use super::config::{ConfigError, ConfigState};
use super::platform::PlatformError;
use crate::snapshot::{CodecError, Decoder, Encoder, Persist};

/// Most MSI-X vectors a saved function may have (a PCI function has at most 2048).
pub const MAX_VECTORS: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciStateError {
    #[error("the snapshot's configuration space: {0}")]
    Config(#[from] ConfigError),
    #[error("the snapshot has {saved} MSI-X vectors, this function has {here}")]
    VectorCount { saved: usize, here: usize },
    #[error("cannot route MSI-X vector {vector}: {source}")]
    Route {
        vector: usize,
        source: PlatformError,
    },
}

/// One MSI-X table entry and its pending bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsixEntryState {
    pub addr: u64,
    pub data: u32,
    pub masked: bool,
    pub pending: bool,
}

/// A function's MSI-X table and pending bits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MsixState {
    pub entries: Vec<MsixEntryState>,
}

/// The bus: the address register (0xCF8) and the host bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootState {
    pub address: u32,
    pub bridge: ConfigState,
}

impl Persist for MsixEntryState {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.addr);
        e.u32(self.data);
        e.bool(self.masked);
        e.bool(self.pending);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(MsixEntryState {
            addr: d.u64("MSI-X entry address")?,
            data: d.u32("MSI-X entry data")?,
            masked: d.bool("MSI-X entry mask")?,
            pending: d.bool("MSI-X pending bit")?,
        })
    }
}

impl Persist for MsixState {
    fn encode(&self, e: &mut Encoder) {
        e.list(&self.entries);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(MsixState {
            entries: d.list("MSI-X table", MAX_VECTORS, 14)?,
        })
    }
}

impl Persist for RootState {
    fn encode(&self, e: &mut Encoder) {
        e.u32(self.address);
        e.put(&self.bridge);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(RootState {
            address: d.u32("PCI configuration address")?,
            bridge: d.get()?,
        })
    }
}
