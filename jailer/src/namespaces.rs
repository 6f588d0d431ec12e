//! Step 4 (jail side): the jail process's own namespaces. It joins the jail's network
//! namespace (prepared by `netns.rs`), then unshares mount, IPC, UTS and cgroup namespaces
//! and names its host after the jail id. It is already in the jail's cgroups, so the new
//! cgroup namespace is rooted at them. The PID namespace is made by the supervisor
//! (`supervise.rs`), since only children enter a new one.

use std::io;
use std::os::fd::OwnedFd;

use crate::netns::{self, NetnsError};
use crate::sys::cvt;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("unshare(mount, IPC, UTS, cgroup namespaces): {0}")]
    Unshare(#[source] io::Error),
    #[error("--id {id}: sethostname: {source}")]
    Hostname { id: String, source: io::Error },
}

/// Flags of the namespaces every jail gets.
pub const JAIL_NAMESPACES: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWCGROUP;

pub fn enter(id: &str, netns: Option<&OwnedFd>) -> Result<(), NamespaceError> {
    if let Some(ns) = netns {
        netns::join(ns, "of the jail")?;
    }
    // SAFETY: unshare takes only flags; the process is single-threaded.
    cvt(unsafe { libc::unshare(JAIL_NAMESPACES) }).map_err(NamespaceError::Unshare)?;
    // SAFETY: the pointer and length describe `id`, which outlives the call; ids are at most
    // 64 bytes (HOST_NAME_MAX).
    cvt(unsafe { libc::sethostname(id.as_ptr().cast(), id.len()) }).map_err(|source| {
        NamespaceError::Hostname {
            id: id.to_owned(),
            source,
        }
    })?;
    Ok(())
}
