//! Host files whose content and kind Kiln does not control, handled under one set of bounds
//! by every binary that touches them:
//!
//! - [`input`]: the small input files a caller names (the jailer's `--profile` and
//!   `--seccomp-policy`, the VMM's `--config-file` and `--seccomp-filter`), and files named
//!   relative to a directory a tenant fills (a function's `exec`), read without following
//!   links;
//! - [`image`]: the image files a caller names that the VMM keeps open (kernel, initrd,
//!   drive backing files);
//! - [`remove`]: removing a tree a jailed tenant could write to (the jailer's cleanup, the
//!   worker's instance directories), with constant descriptors and stack.

pub mod image;
pub mod input;
pub mod remove;

pub use image::{open_regular, ImageError};
pub use input::{read_beneath, read_bytes, read_open_file, read_text, InputError};
pub use remove::{remove_tree, RemoveError};
