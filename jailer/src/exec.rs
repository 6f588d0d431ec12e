//! Exec of the VMM copy inside the jail (after seccomp), with an empty environment (but for
//! the host CPUID, `host_cpuid.rs`) and Firecracker's jailer arguments:
//! `/<exec-name> --id ID --start-time-us T --start-time-cpu-us C --parent-cpu-time-us P
//! [arguments after --]`.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;

use nix::time::ClockId;

use crate::clock::{now_us, Clock};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("VMM argument {arg:?} contains a NUL byte")]
    Nul { arg: String },
    #[error("execve {path}: {source}")]
    Exec { path: String, source: io::Error },
}

/// A ready-to-exec command line, built before seccomp is installed (after it, only
/// `execve`'s two small pointer arrays are allocated).
pub struct VmmCommand {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
}

fn c(arg: &[u8]) -> Result<CString, ExecError> {
    CString::new(arg).map_err(|_| ExecError::Nul {
        arg: String::from_utf8_lossy(arg).into_owned(),
    })
}

impl VmmCommand {
    pub fn new(
        exec_name: &str,
        id: &str,
        clock: &Clock,
        extra: &[OsString],
    ) -> Result<Self, ExecError> {
        let path = c(format!("/{exec_name}").as_bytes())?;
        let cpu = now_us(ClockId::CLOCK_PROCESS_CPUTIME_ID);
        let mut argv = vec![path.clone()];
        for (flag, value) in [
            ("--id", id.to_owned()),
            ("--start-time-us", clock.start_us.to_string()),
            ("--start-time-cpu-us", cpu.to_string()),
            ("--parent-cpu-time-us", clock.parent_cpu_us.to_string()),
        ] {
            argv.push(c(flag.as_bytes())?);
            argv.push(c(value.as_bytes())?);
        }
        for a in extra {
            argv.push(c(a.as_bytes())?);
        }
        Ok(VmmCommand {
            path,
            argv,
            env: Vec::new(),
        })
    }

    /// Adds `name=value` to the VMM's environment (empty otherwise).
    pub fn env(&mut self, name: &str, value: &str) -> Result<(), ExecError> {
        self.env.push(c(format!("{name}={value}").as_bytes())?);
        Ok(())
    }

    pub fn args(&self) -> Vec<String> {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// Replaces this process; returns only on failure.
    pub fn exec(&self) -> ExecError {
        let Err(errno) = nix::unistd::execve(&self.path, &self.argv, &self.env);
        ExecError::Exec {
            path: self.path.to_string_lossy().into_owned(),
            source: errno.into(),
        }
    }
}
