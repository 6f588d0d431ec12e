//! The jail process makes the chroot directory its `/`.
//!
//! In the jail's new mount namespace: every mount is made private (nothing propagates back
//! to the host), the jail root is bind-mounted on itself with what is mounted below it (the
//! `/run` tmpfs the jailer mounted on the host side), each `--bind-*` gets its own bind
//! mount (nosuid, nodev, noexec; read-only for `--bind-ro`), then `pivot_root(".", ".")`
//! stacks the old root on the new one and `umount2(MNT_DETACH)` detaches it — no `old_root`
//! directory is needed or left. Then `/` itself is remounted read-only, nosuid, nodev: the
//! VMM can write only to `/run` and to `--bind-rw` targets.
//!
//! Last ([`chroot_in_place`], once `/dev` is made; not with `--userns`, whose own user
//! namespace must be created before): the whole tree is bind-mounted once more on top of
//! itself and the process chroots into that copy. Its root is then not the top of its mount
//! namespace's root, which is what the kernel calls "chrooted": such a process can never
//! create a user namespace (`unshare(CLONE_NEWUSER)` fails with EPERM) — a second layer
//! besides seccomp against the kernel surface a user namespace opens.

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
    #[error("chroot into the stacked root: {0}")]
    Chroot(#[source] io::Error),
}

/// No file system type and no data: bind mounts, remounts and propagation changes.
const NONE: Option<&str> = None;

fn bind_with(source_path: &Path, target: &Path, flags: MsFlags) -> Result<(), PivotError> {
    mount(Some(source_path), target, NONE, flags, NONE).map_err(|e| PivotError::Bind {
        source_path: source_path.to_path_buf(),
        target: target.to_path_buf(),
        source: e.into(),
    })
}

fn bind(source_path: &Path, target: &Path) -> Result<(), PivotError> {
    bind_with(source_path, target, MsFlags::MS_BIND)
}

/// A bind mount of `source_path` and every mount below it.
fn bind_tree(source_path: &Path, target: &Path) -> Result<(), PivotError> {
    bind_with(source_path, target, MsFlags::MS_BIND | MsFlags::MS_REC)
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

    // pivot_root needs the new root to be a mount point; MS_REC brings the /run tmpfs.
    bind_tree(root, root)?;
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

/// Bind-mounts the jail's whole tree on top of itself (the copy keeps every mount's flags)
/// and chroots into the copy (after pivot_root and `/dev`).
pub fn chroot_in_place() -> Result<(), PivotError> {
    let root = Path::new("/");
    bind_tree(root, root)?;
    // "/" now resolves to the copy on top.
    chdir(root)?;
    nix::unistd::chroot(".").map_err(|e| PivotError::Chroot(e.into()))?;
    chdir(root)
}
