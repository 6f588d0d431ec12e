//! The jailer's input parsers as a library, so that the fuzz targets (`fuzz/`) can drive them
//! exactly as the `jailer` binary does: [`args`] (the command line, with the tenant profile's
//! validation), [`profile`] (the `--profile` file) and [`seccomp`] (the jail-level
//! `--seccomp-policy` loader); and [`nftables`], the netlink encoder of the jail's firewall,
//! whose decoder of the kernel's answers is fuzzed. Everything else lives in the binary
//! (`main.rs`).

/// `eprintln!` that drops a message stderr cannot take (a pipe nobody reads any more)
/// instead of panicking: `kiln_argv::stderr`.
macro_rules! eprintln {
    ($($arg:tt)*) => {
        kiln_argv::stderr::line(format_args!($($arg)*))
    };
}

pub mod args;
pub mod nftables;
pub mod profile;
pub mod seccomp;
