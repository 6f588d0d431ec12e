//! The jail's `/run`: a tmpfs of its own, mounted on the host side at `<chroot>/run` (the
//! orchestrator reaches the VMM's sockets through it), `nosuid,nodev,noexec`, owned by the
//! jail's uid:gid, with the size and inode count of the profile's `run` section. Whatever the
//! jail writes there is bounded, lives in memory and is charged to the memory cgroup of the
//! jail process that writes it; unmounting it removes it at once, however deep a tree was
//! made in it. `chroot.rs` journals and mounts it, `cleanup.rs` unmounts it.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags, MsFlags};

use crate::args::Config;

#[derive(Debug, thiserror::Error)]
pub enum RunFsError {
    #[error("mounting the jail's /run tmpfs on {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("unmounting the jail's /run tmpfs {path}: {source}")]
    Unmount { path: PathBuf, source: io::Error },
}

/// Mounts the jail's `/run` tmpfs on `run`, owned by the jail's uid:gid.
pub fn mount(config: &Config, run: &Path) -> Result<(), RunFsError> {
    let options = format!(
        "size={},nr_inodes={},mode=0700,uid={},gid={}",
        config.run.size_bytes, config.run.inodes, config.uid, config.gid
    );
    nix::mount::mount(
        Some("tmpfs"),
        run,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(|e| RunFsError::Mount {
        path: run.to_path_buf(),
        source: e.into(),
    })
}

/// Unmounts the jail's `/run` tmpfs (detached: a host process still inside it does not keep
/// it in the mount table); one that is not mounted (any more) is skipped.
pub fn unmount(run: &Path) -> Result<(), RunFsError> {
    match umount2(run, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(RunFsError::Unmount {
            path: run.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Whether something is mounted on `run` (a line of /proc/self/mountinfo names it).
pub fn is_mounted(run: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let mounted = crate::sys::mount_points(&info).any(|p| p == run);
    mounted
}
