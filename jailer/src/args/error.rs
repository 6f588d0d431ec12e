//! Why a command line or a tenant profile was refused. Every message names the flag or the
//! profile field and the value, on one line. Tokenizer errors (unknown flag, missing value,
//! a flag given twice, ...) are `kiln-argv`'s, passed through.

use std::path::PathBuf;

use kiln_argv::ArgvError;

use super::flags::MAX_ID_LEN;
use crate::profile::ProfileError;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error(transparent)]
    Argv(#[from] ArgvError),
    #[error(
        "--id {value:?}: an id is 1 to {MAX_ID_LEN} characters, each ASCII alphanumeric or '-'"
    )]
    InvalidId { value: String },
    #[error("{flag} {value:?}: {reason}")]
    InvalidPath {
        flag: String,
        value: String,
        reason: &'static str,
    },
    #[error("--{flag} {value:?}: {reason}")]
    InvalidValue {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("--{flag} {value}: the VMM must not run as root (root without capabilities can still open root-owned files)")]
    RootId { flag: &'static str, value: u32 },
    #[error("--cgroup {value:?}: {reason}")]
    InvalidCgroup { value: String, reason: &'static str },
    #[error("{field} {value:?}: {reason}")]
    InvalidEgress {
        field: String,
        value: String,
        reason: String,
    },
    #[error(
        "{field} {value:?}: unknown resource (expected no-file, fsize, memlock, nproc or core)"
    )]
    UnknownResource { field: String, value: String },
    #[error("--{flag}{} conflicts with --{other}", if value.is_empty() { String::new() } else { format!(" {value:?}") })]
    Conflict {
        flag: &'static str,
        value: String,
        other: &'static str,
    },
    #[error("--diagnose-without {value:?}: only in debug builds of the jailer (a diagnosis flag for the security suite, never for production)")]
    DiagnoseRelease { value: String },
    #[error("--tap {value:?} needs --netns or --new-netns (a tap is created in the jail's network namespace)")]
    TapWithoutNetns { value: String },
    #[error("--firewall on needs --netns or --new-netns (the host namespace is never filtered, and the default namespace has no interface)")]
    FirewallWithoutNetns,
    #[error("--exec-file {path}: no such file")]
    ExecFileMissing { path: PathBuf },
    #[error("--exec-file {path}: not a regular file")]
    ExecFileNotFile { path: PathBuf },
    #[error("--exec-file {path}: file name {name:?} is reserved in the jail or not UTF-8")]
    ExecFileName { path: PathBuf, name: String },
    #[error("--{flag} {path}: {source}")]
    Resolve {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: IoErrorEq,
    },
    #[error("--{flag} {path}: not a directory")]
    NotADirectory { flag: &'static str, path: PathBuf },
    #[error("--{flag} {path}: only regular files and directories can be bound")]
    BindType { flag: &'static str, path: PathBuf },
    #[error(transparent)]
    Profile(#[from] ProfileErrorEq),
}

/// `std::io::Error` wrapper so that `ArgsError` can be compared in tests (by kind).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IoErrorEq(pub std::io::Error);
impl PartialEq for IoErrorEq {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind()
    }
}
impl Eq for IoErrorEq {}

/// Same for profile errors (compared by message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProfileErrorEq(pub ProfileError);
impl PartialEq for ProfileErrorEq {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}
impl Eq for ProfileErrorEq {}
