//! The jailer's input parsers as a library, so that the fuzz targets (`fuzz/`) can drive them
//! exactly as the `jailer` binary does: [`args`] (the command line, with the tenant profile's
//! validation), [`profile`] (the `--profile` file) and [`seccomp`] (the jail-level
//! `--seccomp-policy` loader); and [`nftables`], the netlink encoder of the jail's firewall,
//! whose decoder of the kernel's answers is fuzzed. Everything else lives in the binary
//! (`main.rs`).

pub mod args;
pub mod nftables;
pub mod profile;
pub mod seccomp;
