//! Network namespaces seen from the host: open one by path (checking that it is one), join
//! one, run code inside one and come back, make one unnamed, pin it at `/run/netns/<id>`
//! (where `ip netns` finds it) and unpin it. Each acts on the calling thread's namespace only: the
//! jailer sets its network up on a thread of its own (`main.rs`).
//!
//! Raw call: `ioctl(NS_GET_NSTYPE)` (nix has no wrapper for the nsfs ioctls).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::NetworkError;
use crate::state::SharedJournal;

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

/// `/run/netns/<id>`.
pub fn path_of(id: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(id)
}

/// Where [`pin_unnamed`] pins the namespace of jail `id`: `/run/netns/<id>` (made sure of the
/// directory, refused if the file exists: it is someone else's), to be journaled before
/// [`claim`] makes it.
pub fn reserve(id: &str) -> Result<PathBuf, NetworkError> {
    let dir = Path::new(NETNS_RUN_DIR);
    let path = path_of(id);
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
    Ok(path)
}

/// A new network namespace with its loopback up, made on a thread of its own before
/// anything is journaled: it has no name on the host, so it goes with its last descriptor
/// (or with the jailer, killed at any instant) and needs no journal until [`pin_unnamed`]
/// pins it. The thread that calls this is left in it: a dedicated thread, which ends after.
pub fn unnamed() -> Result<OwnedFd, NetworkError> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Unshare(e.into()))?;
    super::tap::link_up("lo")?;
    own()
}

/// Makes the file `path` ([`reserve`]d and journaled) that [`pin_unnamed`] pins the namespace on,
/// exclusively: from then on it is the jail's to remove, whatever fails next. A file made by
/// someone else since [`reserve`] is refused, and the journal forgets it.
pub fn claim(path: &Path, journal: &SharedJournal) -> Result<(), NetworkError> {
    let file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path);
    match file {
        Ok(_) => Ok(()),
        Err(source) => {
            // Made by someone else since the check: not the jail's to remove.
            let _ = journal.record(|s| s.netns = None);
            Err(NetworkError::CreateFile {
                path: path.to_path_buf(),
                source,
            })
        }
    }
}

/// Pins the new network namespace `made` (from [`unnamed`]) on the file `path`
/// ([`claim`]ed) and returns a descriptor of it.
pub fn pin_unnamed(path: &Path, made: OwnedFd) -> Result<OwnedFd, NetworkError> {
    pin(&format!("/proc/self/fd/{}", made.as_raw_fd()), path)?;
    open(path)
}

/// Bind-mounts the network namespace `source` (a `/proc` path of it) on `path`, which
/// keeps it alive.
fn pin(source: &str, path: &Path) -> Result<(), NetworkError> {
    mount(
        Some(source),
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

/// Unmounts and removes a namespace file made by [`pin_unnamed`]; what is already gone is
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
