//! Small helpers shared by the steps: the return-code conversion of the raw `libc` calls
//! that nix has no wrapper for (each module names its own), and `chown` with an error that
//! names the file (the jail's root and its device nodes are handed to the jail's uid:gid).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Turns a libc return value (`-1` plus errno on failure) into a `Result`.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`cvt`] for calls that return a `long` (`syscall(2)`).
pub fn cvt_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("chown {path} to {uid}:{gid}: {source}")]
pub struct ChownError {
    path: PathBuf,
    uid: u32,
    gid: u32,
    source: io::Error,
}

/// Gives `path` to uid:gid: through `file` when it is open (fchown), else without following
/// a symbolic link (lchown).
pub fn chown(path: &Path, file: Option<&File>, uid: u32, gid: u32) -> Result<(), ChownError> {
    let result = match file {
        Some(f) => std::os::unix::fs::fchown(f, Some(uid), Some(gid)),
        None => std::os::unix::fs::lchown(path, Some(uid), Some(gid)),
    };
    result.map_err(|source| ChownError {
        path: path.to_path_buf(),
        uid,
        gid,
        source,
    })
}
