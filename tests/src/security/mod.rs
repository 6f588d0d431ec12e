//! The security suite's kit: real jails around `escape-probe` (tests/src/bin/escape-probe)
//! and reading what the probe reports ([`probe`]), the tenants whose jails they are
//! ([`tenant`]), the outside world the probe attacks ([`outside`]: a host process to signal,
//! listeners across a veth pair, an abstract unix socket, a file handle, a descriptor handed
//! in), frames a hostile guest writes to its tap ([`frames`]), and the summary table
//! ([`report`]).
//!
//! Used by `tests/tests/security_jail.rs` (the probe under the full default profile and
//! with each layer switched off), `security_tenants.rs` (two tenants side by side) and
//! `security_guest.rs` (hostile guests; only the table and report parts).

pub mod frames;
pub mod outside;
pub mod probe;
pub mod report;
pub mod tenant;
