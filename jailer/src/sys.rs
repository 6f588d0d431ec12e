//! Small helpers shared by the steps: the return-code conversion of the raw `libc` calls
//! that nix has no wrapper for (each module names its own), `renameat2`, `chown` with an error that
//! names the file (the jail's root and its device nodes are handed to the jail's uid:gid),
//! and the mount points of `/proc/self/mountinfo`.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// `renameat2(from, to, flags)` relative to the working directory, as a raw system call:
/// nix offers it only with glibc, and the musl Rust links has no wrapper for it.
pub fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> Result<(), nix::errno::Errno> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| nix::errno::Errno::EINVAL)
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call; renameat2 only
    // reads them; the other arguments are plain integers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    nix::errno::Errno::result(rc).map(drop)
}

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

/// The mount points in `/proc/self/mountinfo` text (field 5, octal escapes decoded).
pub fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
}

fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        let info = "36 31 0:33 / /srv/j/vm/a\\040b/root/run rw - tmpfs tmpfs rw\n\
                    37 31 0:34 / /sys rw - sysfs sysfs rw\n";
        let points: Vec<PathBuf> = mount_points(info).collect();
        assert_eq!(
            points,
            [
                PathBuf::from("/srv/j/vm/a b/root/run"),
                PathBuf::from("/sys")
            ]
        );
        assert_eq!(unescape("a\\134b\\0"), PathBuf::from("a\\b\\0"));
    }
}
