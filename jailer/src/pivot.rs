//! Step 5: make the chroot directory the jail's `/`.
//!
//! In the jail's new mount namespace: every mount is made private (nothing propagates back
//! to the host), the jail root is bind-mounted on itself, each `--bind-*` and `/run` get
//! their own bind mounts (nosuid, nodev, noexec; read-only for `--bind-ro`), then
//! `pivot_root(".", ".")` stacks the old root on the new one and `umount2(MNT_DETACH)`
//! detaches it — no `old_root` directory is needed or left. Finally `/` itself is remounted
//! read-only, nosuid, nodev: the VMM can write only to `/run` and to `--bind-rw` targets.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use crate::args::Bind;
use crate::chroot::jail_to_host;
use crate::sys::{cstr, cstring, cvt, cvt_long};

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
    #[error("path {path}: {source}")]
    Path { path: PathBuf, source: io::Error },
}

fn c(path: &Path) -> Result<CString, PivotError> {
    cstring(path).map_err(|source| PivotError::Path {
        path: path.to_path_buf(),
        source,
    })
}

fn bind(source_path: &Path, target: &Path) -> Result<(), PivotError> {
    let (s, t) = (c(source_path)?, c(target)?);
    // SAFETY: NUL-terminated paths that outlive the call; a bind mount takes no type/data.
    cvt(unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
    .map_err(|source| PivotError::Bind {
        source_path: source_path.to_path_buf(),
        target: target.to_path_buf(),
        source,
    })?;
    Ok(())
}

fn remount(target: &Path, flags: libc::c_ulong) -> Result<(), PivotError> {
    let t = c(target)?;
    // SAFETY: as in `bind`; MS_REMOUNT|MS_BIND changes only the flags of that one mount.
    cvt(unsafe {
        libc::mount(
            std::ptr::null(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | flags,
            std::ptr::null(),
        )
    })
    .map_err(|source| PivotError::Remount {
        target: target.to_path_buf(),
        source,
    })?;
    Ok(())
}

fn chdir(path: &Path) -> Result<(), PivotError> {
    let p = c(path)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    cvt(unsafe { libc::chdir(p.as_ptr()) }).map_err(|source| PivotError::Chdir {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Makes `root` the process's `/`; `binds` are mounted into it first.
pub fn into_jail(root: &Path, binds: &[Bind]) -> Result<(), PivotError> {
    let slash = cstr("/").map_err(|source| PivotError::Path {
        path: PathBuf::from("/"),
        source,
    })?;
    // SAFETY: "/" is NUL-terminated; changing propagation takes no source, type or data.
    cvt(unsafe {
        libc::mount(
            std::ptr::null(),
            slash.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
    .map_err(PivotError::Private)?;

    // pivot_root needs the new root to be a mount point.
    bind(root, root)?;
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for b in binds {
        let target = jail_to_host(root, &b.jail);
        bind(&b.host, &target)?;
        let ro = if b.writable { 0 } else { libc::MS_RDONLY };
        remount(&target, hardened | ro)?;
    }
    let run = root.join("run");
    bind(&run, &run)?;
    remount(&run, hardened)?;

    chdir(root)?;
    let dot = cstr(".").map_err(|source| PivotError::Path {
        path: PathBuf::from("."),
        source,
    })?;
    // SAFETY: pivot_root(".", ".") takes two NUL-terminated paths that outlive the call; it
    // puts the old root on top of the new one at "/".
    cvt_long(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) }).map_err(
        |source| PivotError::PivotRoot {
            path: root.to_path_buf(),
            source,
        },
    )?;
    // SAFETY: "." (the stacked old root) is NUL-terminated; MNT_DETACH detaches it and every
    // mount below it.
    cvt(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })
        .map_err(PivotError::DetachOldRoot)?;
    chdir(Path::new("/"))?;
    remount(
        Path::new("/"),
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
    )
}
