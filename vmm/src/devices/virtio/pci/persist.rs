//! Snapshots of the virtio devices on PCI: per function, what the PCI layer keeps
//! ([`crate::devices::pci::persist`]: configuration space, MSI-X table and pending bits)
//! and the vectors the driver assigned ([`VirtioPciState`]); the common configuration's
//! state machine (status, features, queue select, each queue's size, enable and
//! addresses, the configuration generation) is the register file's, saved as a
//! virtio-mmio transport's ([`TransportState`], in the state file's list of virtio
//! devices). The bus ([`PciBusState`]) adds the address register and the host bridge.
//!
//! A restore checks everything against the rebuilt function before use: the number of
//! functions and queues, the read-only configuration bytes (another kind of device is
//! refused), each vector index against the table, BARs against the PCI window. Then the
//! MSI routes of the programmed vectors are set, and each BAR decodes (with its queues'
//! ioeventfds) where the guest left it.

use super::{PciHandles, VirtioPciFunction, NO_VECTOR};
use crate::devices::pci::config::ConfigState;
use crate::devices::pci::persist::{MsixState, PciStateError, RootState};
use crate::devices::virtio::mmio::persist::{TransportState, TransportStateError};
use crate::snapshot::{CodecError, Decoder, Encoder, Persist};
use crate::sync::lock;
use std::sync::atomic::Ordering;

/// Most functions on bus 0 (slots 1 to 31).
const MAX_FUNCTIONS: usize = 31;
/// Most queues of a device (as the transport's state allows).
const MAX_QUEUES: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciFunctionStateError {
    #[error("the snapshot has {saved} PCI functions and {transports} virtio transports, this microVM has {here} virtio devices on PCI")]
    FunctionCount {
        saved: usize,
        transports: usize,
        here: usize,
    },
    #[error("the snapshot's PCI bus: {0}")]
    Bus(PciStateError),
    #[error("virtio device {id} (PCI slot {slot}): {source}")]
    Pci {
        id: String,
        slot: usize,
        source: PciStateError,
    },
    #[error("virtio device {id} (PCI slot {slot}): the snapshot assigns MSI-X vector {vector} to {what}, beyond its table of {count} vectors")]
    Vector {
        id: String,
        slot: usize,
        what: String,
        vector: u16,
        count: usize,
    },
    #[error("virtio device {id} (PCI slot {slot}): the snapshot has MSI-X vectors for {saved} queues, the device has {here}")]
    QueueVectors {
        id: String,
        slot: usize,
        saved: usize,
        here: usize,
    },
    #[error(transparent)]
    Transport(#[from] TransportStateError),
}

/// One virtio function's PCI state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioPciState {
    pub config: ConfigState,
    pub msix: MsixState,
    /// The configuration change's vector ([`NO_VECTOR`]: none).
    pub config_vector: u16,
    /// Each queue's vector.
    pub queue_vectors: Vec<u16>,
}

/// The PCI bus of a microVM started with `--enable-pci`: its own state and one
/// [`VirtioPciState`] per function, in slot order (the order of the virtio devices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciBusState {
    pub root: RootState,
    pub functions: Vec<VirtioPciState>,
}

impl VirtioPciFunction {
    /// The function's state and its register file's (the VM paused).
    pub fn save_state(&self) -> Result<(VirtioPciState, TransportState), TransportStateError> {
        let transport = self.core.save_state()?;
        let state = VirtioPciState {
            config: self.config.save_state(),
            msix: self.vectors.msix.save_state(),
            config_vector: self.vectors.config.load(Ordering::SeqCst),
            queue_vectors: self
                .vectors
                .queues
                .iter()
                .map(|v| v.load(Ordering::SeqCst))
                .collect(),
        };
        Ok((state, transport))
    }

    /// Loads `s` and `t` into this freshly built function in `slot` (its BAR not decoding
    /// yet: the bus accepts it once every function is restored).
    fn restore_state(
        &mut self,
        slot: usize,
        s: &VirtioPciState,
        t: &TransportState,
    ) -> Result<(), PciFunctionStateError> {
        let id = self.core.device_id();
        let here = self.vectors.queues.len();
        if s.queue_vectors.len() != here {
            return Err(PciFunctionStateError::QueueVectors {
                id,
                slot,
                saved: s.queue_vectors.len(),
                here,
            });
        }
        let count = self.vectors.msix.count();
        let named = std::iter::once(("the configuration change".to_string(), s.config_vector))
            .chain(
                s.queue_vectors
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (format!("queue {i}"), v)),
            );
        for (what, vector) in named {
            if vector != NO_VECTOR && usize::from(vector) >= count {
                return Err(PciFunctionStateError::Vector {
                    id,
                    slot,
                    what,
                    vector,
                    count,
                });
            }
        }
        let pci = |source| PciFunctionStateError::Pci {
            id: id.clone(),
            slot,
            source,
        };
        self.config
            .restore_state(&s.config)
            .map_err(|e| pci(e.into()))?;
        let control = self.config.u16_at(self.msix_cap + 2);
        self.vectors
            .msix
            .restore_state(&s.msix, control)
            .map_err(pci)?;
        self.vectors.config.store(s.config_vector, Ordering::SeqCst);
        for (slot, &v) in self.vectors.queues.iter().zip(&s.queue_vectors) {
            slot.store(v, Ordering::SeqCst);
        }
        self.core.restore_state(t)?;
        Ok(())
    }
}

/// The bus's state and every function's, with their register files' in slot order.
pub fn save_bus(h: &PciHandles) -> Result<(PciBusState, Vec<TransportState>), TransportStateError> {
    let root = lock(&h.root).save_state();
    let mut functions = Vec::with_capacity(h.functions.len());
    let mut transports = Vec::with_capacity(h.functions.len());
    for f in &h.functions {
        let (s, t) = lock(f).save_state()?;
        functions.push(s);
        transports.push(t);
    }
    Ok((PciBusState { root, functions }, transports))
}

/// Loads `s` (and the functions' register files, `transports`) into the freshly built bus
/// of `h`, then lets every BAR decode where the guest left it.
pub fn restore_bus(
    h: &PciHandles,
    s: &PciBusState,
    transports: &[TransportState],
) -> Result<(), PciFunctionStateError> {
    let here = h.functions.len();
    if s.functions.len() != here || transports.len() != here {
        return Err(PciFunctionStateError::FunctionCount {
            saved: s.functions.len(),
            transports: transports.len(),
            here,
        });
    }
    lock(&h.root)
        .restore_state(&s.root)
        .map_err(PciFunctionStateError::Bus)?;
    for (i, ((f, saved), t)) in h
        .functions
        .iter()
        .zip(&s.functions)
        .zip(transports)
        .enumerate()
    {
        lock(f).restore_state(i + 1, saved, t)?;
    }
    lock(&h.root).accept_restored_bars();
    Ok(())
}

impl Persist for VirtioPciState {
    fn encode(&self, e: &mut Encoder) {
        e.put(&self.config);
        e.put(&self.msix);
        e.u16(self.config_vector);
        e.count(self.queue_vectors.len());
        for &v in &self.queue_vectors {
            e.u16(v);
        }
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        let config = d.get()?;
        let msix = d.get()?;
        let config_vector = d.u16("virtio-pci configuration vector")?;
        let n = d.count("virtio-pci queue vectors", MAX_QUEUES, 2)?;
        let mut queue_vectors = Vec::with_capacity(n);
        for _ in 0..n {
            queue_vectors.push(d.u16("virtio-pci queue vector")?);
        }
        Ok(VirtioPciState {
            config,
            msix,
            config_vector,
            queue_vectors,
        })
    }
}

impl Persist for PciBusState {
    fn encode(&self, e: &mut Encoder) {
        e.put(&self.root);
        e.list(&self.functions);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(PciBusState {
            root: d.get()?,
            functions: d.list("PCI functions", MAX_FUNCTIONS, 256 + 4 + 2 + 4)?,
        })
    }
}
