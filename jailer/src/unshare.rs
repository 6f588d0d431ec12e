//! The jail process's own namespaces, after the split: it joins the jail's network
//! namespace (prepared on the host side by `network/`) or, without one, unshares an empty
//! network namespace of its own (unless `--share-host-netns`), then unshares mount, IPC, UTS
//! and cgroup namespaces and names its host after the jail id. It is already in the jail's
//! cgroups, so the new cgroup namespace is rooted at them. The PID namespace is made by the
//! keeper (`supervise/`), since only children enter a new one.

use std::io;
use std::os::fd::OwnedFd;

use nix::sched::{unshare, CloneFlags};

use crate::network::{self, NetworkError};

#[derive(Debug, thiserror::Error)]
pub enum UnshareError {
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("unshare(mount, IPC, UTS, cgroup [and network] namespaces): {0}")]
    Unshare(#[source] io::Error),
    #[error("--id {id}: sethostname: {source}")]
    Hostname { id: String, source: io::Error },
}

/// The namespaces every jail gets.
const JAIL_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWNS
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWCGROUP);

/// Enters the jail's namespaces (the process is single-threaded): `netns` when the host side
/// prepared one, else a new empty one when `private_net`.
pub fn enter(id: &str, netns: Option<&OwnedFd>, private_net: bool) -> Result<(), UnshareError> {
    let mut flags = JAIL_NAMESPACES;
    match netns {
        Some(ns) => network::join(ns, "of the jail")?,
        None if private_net => flags |= CloneFlags::CLONE_NEWNET,
        None => {}
    }
    unshare(flags).map_err(|e| UnshareError::Unshare(e.into()))?;
    nix::unistd::sethostname(id).map_err(|e| UnshareError::Hostname {
        id: id.to_owned(),
        source: e.into(),
    })
}
