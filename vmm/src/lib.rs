//! Kiln's VMM: one process runs exactly one KVM microVM.
//!
//! - [`resources`]: the microVM's typed configuration, shared by the config file and the API.

pub mod resources;
