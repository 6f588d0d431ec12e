//! Network namespaces seen from the host: open one by path (checking that it is one), join
//! one, run code inside one and come back, create one pinned at `/run/netns/<id>` (where
//! `ip netns` finds it) and unpin it.
//!
//! Raw call: `ioctl(NS_GET_NSTYPE)` (nix has no wrapper for the nsfs ioctls).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::NetworkError;
use crate::state::{Journal, NetnsRecord};

pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Opens `path`, which must be a network namespace.
pub fn open(path: &Path) -> Result<OwnedFd, NetworkError> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| NetworkError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    // SAFETY: NS_GET_NSTYPE takes no argument (0 is passed, not whatever the variadic call
    // would find) and only reports the namespace type of the descriptor, which `file` keeps
    // open.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE, 0) };
    if kind != libc::CLONE_NEWNET {
        return Err(NetworkError::NotNetns {
            path: path.to_path_buf(),
        });
    }
    Ok(file.into())
}

fn own() -> Result<OwnedFd, NetworkError> {
    File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(NetworkError::OwnNamespace)
}

/// Joins a network namespace (the jail process joins the jail's with it too).
pub fn join(ns: &OwnedFd, what: &str) -> Result<(), NetworkError> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Setns {
        what: what.to_owned(),
        source: e.into(),
    })
}

/// Runs `f` inside the namespace `ns`, then returns to the jailer's own namespace (also on
/// error).
pub fn within<T>(
    ns: &OwnedFd,
    what: &str,
    f: impl FnOnce() -> Result<T, NetworkError>,
) -> Result<T, NetworkError> {
    let own = own()?;
    join(ns, what)?;
    let result = f();
    join(&own, "of the jailer")?;
    result
}

/// Creates `/run/netns/<id>` holding a new network namespace (journaled before the file is
/// made, with what `planned` says will be made in it: a file that exists already is
/// someone else's, refused and never journaled) and returns a descriptor of it; the jailer
/// stays in its own.
pub fn create(
    id: &str,
    journal: &mut Journal,
    planned: NetnsRecord,
) -> Result<OwnedFd, NetworkError> {
    let dir = Path::new(NETNS_RUN_DIR);
    let path = dir.join(id);
    let err = |source| NetworkError::CreateFile {
        path: path.clone(),
        source,
    };
    match std::fs::create_dir(dir) {
        // As `ip netns` makes it (the umask is 077).
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    if std::fs::symlink_metadata(&path).is_ok() {
        return Err(err(io::Error::from(io::ErrorKind::AlreadyExists)));
    }
    journal.record(|s| {
        s.netns = Some(NetnsRecord {
            path: path.clone(),
            created: true,
            mounted: true,
            ..planned
        })
    })?;
    let made = File::options()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path);
    if let Err(e) = made {
        // Made by someone else since the check: not the jail's to remove.
        let _ = journal.record(|s| s.netns = None);
        return Err(err(e));
    }
    let own = own()?;
    // Only this (single-threaded) process moves to the new namespace.
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Unshare(e.into()))?;
    let pinned = pin(&path);
    // Back to the jailer's namespace whatever happened: the jail joins it by descriptor.
    join(&own, "of the jailer")?;
    pinned?;
    open(&path)
}

/// Bind-mounts the calling thread's network namespace on `path`, which keeps it alive.
fn pin(path: &Path) -> Result<(), NetworkError> {
    mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| NetworkError::Mount {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Unmounts and removes a namespace file made by [`create`]; what is already gone is
/// skipped.
pub fn unpin(path: &Path) -> Result<(), NetworkError> {
    let err = |source| NetworkError::Remove {
        path: path.to_path_buf(),
        source,
    };
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) => {}
        // Not mounted (any more), or gone.
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(err(e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    Ok(())
}
