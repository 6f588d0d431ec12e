//! MMDS, the microVM metadata service: a JSON document the orchestrator puts into the VMM
//! (`PUT`/`PATCH`/`GET /mmds`, `--metadata`) for the guest to read over HTTP at a
//! link-local address, on the network interfaces `mmds-config` names.
//!
//! - [`store`]: the data store ([`MmdsStore`]): the document, its size limit, JSON merge
//!   patches, and the lookup of a path in JSON or IMDS (text) form;
//! - [`token`]: V2's session tokens (stateless, keyed per VMM process);
//! - [`http`]: the guest's HTTP requests and their responses;
//! - [`stack`]: the network endpoint a network interface hands the guest's MMDS frames to
//!   (ARP, IPv4, TCP), and which gives it the replies.
//!
//! The store is shared ([`SharedMmds`]) by the API's controller (which writes it) and the
//! network devices that answer the guest (which read it); both run on the VMM thread, so
//! the lock is never contended.

pub mod http;
pub mod stack;
pub mod store;
pub mod token;

pub use stack::MmdsStack;
pub use store::{MmdsStore, MmdsVersion, OutputFormat, StoreError, DEFAULT_SIZE_LIMIT};

use std::sync::{Arc, Mutex};

/// The data store as the controller and the network devices share it.
pub type SharedMmds = Arc<Mutex<MmdsStore>>;

/// A new shared store limited to `size_limit` bytes.
pub fn shared(size_limit: usize) -> SharedMmds {
    Arc::new(Mutex::new(MmdsStore::new(size_limit)))
}
