//! Step 5 (continued): the jail's `/dev` — a small tmpfs holding only `/dev/kvm`,
//! `/dev/net/tun`, `/dev/urandom` (and `/dev/userfaultfd` with `--userfaultfd`), each owned
//! by the jail's uid:gid with mode 0600, then made read-only so nothing else can appear.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use crate::sys::{cstr, cvt};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("mounting a tmpfs on /dev: {0}")]
    Mount(#[source] io::Error),
    #[error("remounting /dev read-only: {0}")]
    Remount(#[source] io::Error),
    #[error("mkdir {path}: {source}")]
    Mkdir { path: PathBuf, source: io::Error },
    #[error("mknod {path} (char {major}:{minor}): {source}")]
    Mknod {
        path: PathBuf,
        major: u32,
        minor: u32,
        source: io::Error,
    },
    #[error("chown {path} to {uid}:{gid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    #[error("--userfaultfd: reading /proc/misc: {0}")]
    ProcMisc(#[source] io::Error),
    #[error("--userfaultfd: the host has no userfaultfd device (not in /proc/misc)")]
    NoUserfaultfd,
}

/// Device numbers from Documentation/admin-guide/devices.txt.
const MISC_MAJOR: u32 = 10;
pub const KVM: (&str, u32, u32) = ("/dev/kvm", MISC_MAJOR, 232);
pub const TUN: (&str, u32, u32) = ("/dev/net/tun", MISC_MAJOR, 200);
pub const URANDOM: (&str, u32, u32) = ("/dev/urandom", 1, 9);
pub const USERFAULTFD: &str = "/dev/userfaultfd";

/// The dynamic minor of the userfaultfd misc device (read on the host, before pivot_root).
pub fn userfaultfd_minor() -> Result<u32, DeviceError> {
    let misc = std::fs::read_to_string("/proc/misc").map_err(DeviceError::ProcMisc)?;
    parse_misc(&misc, "userfaultfd").ok_or(DeviceError::NoUserfaultfd)
}

fn parse_misc(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let minor = f.next()?.parse().ok()?;
        (f.next()? == name).then_some(minor)
    })
}

fn c(path: &str) -> Result<CString, DeviceError> {
    cstr(path).map_err(DeviceError::Mount)
}

/// Creates the jail's `/dev` (the process is already inside the jail).
pub fn create(uid: u32, gid: u32, userfaultfd_minor: Option<u32>) -> Result<(), DeviceError> {
    let (tmpfs, dev) = (c("tmpfs")?, c("/dev")?);
    let data = c("mode=755,size=16k,nr_inodes=16")?;
    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    // SAFETY: NUL-terminated strings that outlive the call.
    cvt(unsafe {
        libc::mount(
            tmpfs.as_ptr(),
            dev.as_ptr(),
            tmpfs.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
    .map_err(DeviceError::Mount)?;
    std::fs::create_dir("/dev/net").map_err(|source| DeviceError::Mkdir {
        path: PathBuf::from("/dev/net"),
        source,
    })?;
    std::fs::set_permissions(
        "/dev/net",
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|source| DeviceError::Mkdir {
        path: PathBuf::from("/dev/net"),
        source,
    })?;
    let mut nodes = vec![KVM, TUN, URANDOM];
    if let Some(minor) = userfaultfd_minor {
        nodes.push((USERFAULTFD, MISC_MAJOR, minor));
    }
    for (path, major, minor) in nodes {
        mknod(Path::new(path), major, minor, uid, gid)?;
    }
    // SAFETY: as above; a remount of the tmpfs superblock with the same flags plus read-only.
    cvt(unsafe {
        libc::mount(
            std::ptr::null(),
            dev.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY | flags,
            std::ptr::null(),
        )
    })
    .map_err(DeviceError::Remount)?;
    Ok(())
}

fn mknod(path: &Path, major: u32, minor: u32, uid: u32, gid: u32) -> Result<(), DeviceError> {
    let p = crate::sys::cstring(path).map_err(DeviceError::Mount)?;
    // SAFETY: a NUL-terminated path that outlives the call; a character device node with
    // mode 0600.
    cvt(unsafe {
        libc::mknod(
            p.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(major, minor),
        )
    })
    .map_err(|source| DeviceError::Mknod {
        path: path.to_path_buf(),
        major,
        minor,
        source,
    })?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|source| DeviceError::Chown {
        path: path.to_path_buf(),
        uid,
        gid,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misc_minor() {
        let misc = "183 hw_random\n257 userfaultfd\n232 kvm\n";
        assert_eq!(parse_misc(misc, "userfaultfd"), Some(257));
        assert_eq!(parse_misc(misc, "kvm"), Some(232));
        assert_eq!(parse_misc(misc, "tun"), None);
    }
}
