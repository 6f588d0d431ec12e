//! The jail's `/dev`, right after pivot_root: a small tmpfs holding only `/dev/kvm`,
//! `/dev/net/tun`, `/dev/urandom` (and `/dev/userfaultfd` with `--userfaultfd`), each owned
//! by the jail's uid:gid with mode 0600, then made read-only so nothing else can appear.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, Mode, SFlag};

use crate::sys::{chown, ChownError};

#[derive(Debug, thiserror::Error)]
pub enum DeviceNodeError {
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
    #[error(transparent)]
    Chown(#[from] ChownError),
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
pub fn userfaultfd_minor() -> Result<u32, DeviceNodeError> {
    let misc = std::fs::read_to_string("/proc/misc").map_err(DeviceNodeError::ProcMisc)?;
    parse_misc(&misc, "userfaultfd").ok_or(DeviceNodeError::NoUserfaultfd)
}

fn parse_misc(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let minor = f.next()?.parse().ok()?;
        (f.next()? == name).then_some(minor)
    })
}

/// Creates the jail's `/dev` (the process is already inside the jail).
pub fn create(uid: u32, gid: u32, userfaultfd_minor: Option<u32>) -> Result<(), DeviceNodeError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        "/dev",
        Some("tmpfs"),
        flags,
        Some("mode=755,size=16k,nr_inodes=16"),
    )
    .map_err(|e| DeviceNodeError::Mount(e.into()))?;
    let net = Path::new("/dev/net");
    let mkdir_err = |source| DeviceNodeError::Mkdir {
        path: net.to_path_buf(),
        source,
    };
    std::fs::create_dir(net).map_err(mkdir_err)?;
    std::fs::set_permissions(net, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(mkdir_err)?;
    let mut nodes = vec![KVM, TUN, URANDOM];
    if let Some(minor) = userfaultfd_minor {
        nodes.push((USERFAULTFD, MISC_MAJOR, minor));
    }
    for (path, major, minor) in nodes {
        mknod(Path::new(path), major, minor, uid, gid)?;
    }
    // A remount of the tmpfs superblock with the same flags plus read-only.
    mount(
        None::<&str>,
        "/dev",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
        None::<&str>,
    )
    .map_err(|e| DeviceNodeError::Remount(e.into()))
}

/// A character device node with mode 0600, owned by uid:gid.
fn mknod(path: &Path, major: u32, minor: u32, uid: u32, gid: u32) -> Result<(), DeviceNodeError> {
    let dev = makedev(u64::from(major), u64::from(minor));
    nix::sys::stat::mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), dev).map_err(
        |e| DeviceNodeError::Mknod {
            path: path.to_path_buf(),
            major,
            minor,
            source: e.into(),
        },
    )?;
    Ok(chown(path, None, uid, gid)?)
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
