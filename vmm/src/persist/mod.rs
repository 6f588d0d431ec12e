//! Snapshots of a microVM (Firecracker's `PUT /snapshot/create` and `PUT /snapshot/load`):
//! from a paused microVM to a state file and a memory file, and from them to a new microVM
//! in another VMM process, possibly in another jail.
//!
//! - [`create`]: saving a paused microVM (full or diff);
//! - [`load`]: restoring one, paused, on a VMM not configured yet;
//! - [`state`]: what the state file holds and its consistency checks;
//! - [`memory_file`]: writing, hashing and reading the memory file;
//! - [`uffd`]: the `Uffd` memory backend (and the page-fault handler's side of it).
//!
//! The file format itself (envelope, encoding, MAC) is [`crate::snapshot`]; each part of
//! the state is saved and restored by its owner (`vstate::vcpu_state`, `vstate::vm_state`,
//! each device's `persist` module). docs/api.md ("Snapshots") describes the API and the
//! guarantees.

pub mod create;
pub mod load;
pub mod memory_file;
pub mod state;
pub mod uffd;

pub use create::{create_snapshot, CreateError, Created};
pub use load::{load_snapshot, LoadError, Loaded};

use crate::snapshot::format::{self, FormatError, Version, MAX_FILE};
use std::path::Path;

/// Why `--describe-snapshot` could not say.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error("cannot read {path:?}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path:?}: {source}")]
    Format { path: String, source: FormatError },
}

/// The format version of the state file at `path` (`--describe-snapshot`; nothing is
/// verified beyond the header).
pub fn describe(path: &Path) -> Result<Version, DescribeError> {
    let bytes =
        kiln_hostfs::read_bytes(path, MAX_FILE as u64).map_err(|e| DescribeError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    format::describe(&bytes)
        .map(|h| h.version)
        .map_err(|source| DescribeError::Format {
            path: path.display().to_string(),
            source,
        })
}
