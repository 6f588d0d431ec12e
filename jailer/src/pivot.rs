//! The jail process makes the chroot directory its `/`.
//!
//! In the jail's new mount namespace: every mount is made private (nothing propagates back
//! to the host), the jail root is bind-mounted on itself, each `--bind-*` and `/run` get
//! their own bind mounts (nosuid, nodev, noexec; read-only for `--bind-ro`), then
//! `pivot_root(".", ".")` stacks the old root on the new one and `umount2(MNT_DETACH)`
//! detaches it — no `old_root` directory is needed or left. Finally `/` itself is remounted
//! read-only, nosuid, nodev: the VMM can write only to `/run` and to `--bind-rw` targets.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::args::Bind;
use crate::chroot::jail_to_host;

#[derive(Debug, thiserror::Error)]
pub enum PivotError {
    #[error("making all mounts private: {0}")]
    Private(#[source] io::Error),
    #[error("bind-mounting {source_path} on {target}: {source}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        source: io::Error,
    },
    #[error("setting the flags of the bind mount {target}: {source}")]
    Remount { target: PathBuf, source: io::Error },
    #[error("chdir {path}: {source}")]
    Chdir { path: PathBuf, source: io::Error },
    #[error("pivot_root into {path}: {source}")]
    PivotRoot { path: PathBuf, source: io::Error },
    #[error("detaching the old root: {0}")]
    DetachOldRoot(#[source] io::Error),
}

/// No file system type and no data: bind mounts, remounts and propagation changes.
const NONE: Option<&str> = None;

fn bind(source_path: &Path, target: &Path) -> Result<(), PivotError> {
    mount(Some(source_path), target, NONE, MsFlags::MS_BIND, NONE).map_err(|e| PivotError::Bind {
        source_path: source_path.to_path_buf(),
        target: target.to_path_buf(),
        source: e.into(),
    })
}

/// Changes only the flags of the bind mount at `target`.
fn remount(target: &Path, flags: MsFlags) -> Result<(), PivotError> {
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags;
    mount(NONE, target, NONE, flags, NONE).map_err(|e| PivotError::Remount {
        target: target.to_path_buf(),
        source: e.into(),
    })
}

fn chdir(path: &Path) -> Result<(), PivotError> {
    nix::unistd::chdir(path).map_err(|e| PivotError::Chdir {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Makes `root` the process's `/`; `binds` are mounted into it first.
pub fn into_jail(root: &Path, binds: &[Bind]) -> Result<(), PivotError> {
    let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    mount(NONE, "/", NONE, private, NONE).map_err(|e| PivotError::Private(e.into()))?;

    // pivot_root needs the new root to be a mount point.
    bind(root, root)?;
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for b in binds {
        let target = jail_to_host(root, &b.jail);
        bind(&b.host, &target)?;
        let ro = if b.writable {
            MsFlags::empty()
        } else {
            MsFlags::MS_RDONLY
        };
        remount(&target, hardened | ro)?;
    }
    let run = root.join("run");
    bind(&run, &run)?;
    remount(&run, hardened)?;

    chdir(root)?;
    // pivot_root(".", ".") puts the old root on top of the new one at "/".
    nix::unistd::pivot_root(".", ".").map_err(|e| PivotError::PivotRoot {
        path: root.to_path_buf(),
        source: e.into(),
    })?;
    // "." is the stacked old root: MNT_DETACH detaches it and every mount below it.
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| PivotError::DetachOldRoot(e.into()))?;
    chdir(Path::new("/"))?;
    remount(
        Path::new("/"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )
}
