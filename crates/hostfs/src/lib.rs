//! Host files whose content and kind Kiln does not control, handled under one set of bounds
//! by every binary that touches them:
//!
//! - [`input`]: the small input files a caller names (the jailer's `--profile` and
//!   `--seccomp-policy`, the VMM's `--config-file` and `--seccomp-filter`).

pub mod input;

pub use input::{read_bytes, read_text, InputError};
