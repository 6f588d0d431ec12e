//! Host files whose content and kind Kiln does not control, handled under one set of bounds
//! by every binary that touches them:
//!
//! - [`input`]: the small input files a caller names (the jailer's `--profile` and
//!   `--seccomp-policy`, the VMM's `--config-file` and `--seccomp-filter`), and files named
//!   relative to a directory a tenant fills (a function's `exec`), read without following
//!   links;
//! - [`image`]: the image files a caller names that the VMM keeps open (kernel, initrd,
//!   drive backing files).

pub mod image;
pub mod input;

pub use image::{open_regular, ImageError};
pub use input::{read_beneath, read_bytes, read_text, InputError};
