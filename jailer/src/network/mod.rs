//! Host-side network set-up, before the split: the jail's network namespace, its taps and
//! its egress firewall, all journaled; and their removal (`cleanup.rs`).
//!
//! * `--netns PATH` joins an existing namespace (Firecracker's meaning).
//! * `--new-netns` creates one and pins it at `/run/netns/<id>` ([`namespace`]): a thread
//!   started right after the flags are parsed ([`start_early`]) unshares it, brings its
//!   loopback up (and loads its firewall when no tap filter must go with it) and ends; step 4
//!   bind-mounts it there.
//! * `--tap NAME` creates a persistent tap owned by the jail's uid:gid in that namespace
//!   ([`tap`]), so the VMM can attach to it without any capability.
//! * The egress firewall ([`firewall`]): an nftables table `inet kiln-<id>` in that namespace,
//!   and the guest filter at each tap ([`tap_filter`]): table `netdev kiln-<id>`, loaded in
//!   the same nf_tables transaction, sent over netlink by the jailer (`jailer::nftables`).
//!
//! The jail process joins the namespace later (`unshare.rs`) with the descriptor returned
//! by [`prepare`]. The netlink socket the firewall went through is returned open too: its
//! release waits for nf_tables' deferred clean-up of the transaction (an RCU grace period,
//! milliseconds), so it is closed off the start-up path (see [`HostNetwork`]).

mod firewall;
mod namespace;
mod tap;
mod tap_filter;

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

pub use namespace::join;

/// A `--new-netns` namespace being made ahead, unnamed ([`namespace::unnamed`]), on a
/// thread started as soon as the flags are parsed: the namespace's creation (the slowest
/// kernel work of the jail, ~0.7 ms here) and, when no tap filter needs the taps to exist
/// first, its egress firewall (~0.5 ms) overlap the rest of step 1 and step 2 instead of
/// following them. Both live in the namespace only, so they need no journal until
/// [`prepare`] pins it.
pub struct Early(std::thread::JoinHandle<Result<(OwnedFd, Option<Socket>), NetworkError>>);

/// Starts making the jail's namespace ahead, when the jail gets a new one.
pub fn start_early(config: &Config) -> Result<Option<Early>, NetworkError> {
    let net = &config.network;
    if !matches!(net.mode, NetnsMode::Create) {
        return Ok(None);
    }
    // The firewall too, unless the taps' guest filters must be loaded with it (their
    // chains hook the taps, made in step 4).
    let tap_filters = net.tap_filter && !net.taps.is_empty();
    let firewall = (net.firewall && !tap_filters)
        .then(|| (firewall::table_name(&config.id), net.egress.clone()));
    std::thread::Builder::new()
        .name("4 netns".into())
        .spawn(move || {
            let ns = namespace::unnamed()?;
            let socket = match firewall {
                Some((name, allow)) => firewall::load(&firewall::Tables {
                    name: &name,
                    firewall: true,
                    taps: &[],
                    allow: &allow,
                    replace: false,
                })?,
                None => None,
            };
            Ok((ns, socket))
        })
        .map(|t| Some(Early(t)))
        .map_err(NetworkError::EarlyThread)
}

use crate::args::{Config, NetnsMode};
use crate::clock::Clock;
use crate::state::{NetnsRecord, SharedJournal, StateError};
use jailer::nftables::{Family, NftError, Socket};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("--netns {path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("--netns {path}: not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("opening the jailer's own network namespace: {0}")]
    OwnNamespace(#[source] io::Error),
    #[error("setns into the network namespace {what}: {source}")]
    Setns { what: String, source: io::Error },
    #[error("--new-netns: creating {path}: {source}")]
    CreateFile { path: PathBuf, source: io::Error },
    #[error("--new-netns: unshare(CLONE_NEWNET): {0}")]
    Unshare(#[source] io::Error),
    #[error("--new-netns: starting the thread that makes the namespace: {0}")]
    EarlyThread(#[source] io::Error),
    #[error("--new-netns: the thread that made the namespace panicked")]
    EarlyPanicked,
    /// [`prepare`] called for a new namespace without [`start_early`]'s (a caller's bug).
    #[error("--new-netns: the namespace was not started ahead")]
    NotMadeAhead,
    #[error("--new-netns: bind-mounting the new namespace on {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("--tap {name}: {op}: {source}")]
    Tap {
        name: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("bringing up interface {name}: {source}")]
    LinkUp { name: String, source: io::Error },
    #[error("--firewall: {0}")]
    Firewall(#[from] NftError),
    #[error("removing the network namespace {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error(transparent)]
    State(#[from] StateError),
}

/// What the host-side network set-up leaves for the split.
#[derive(Debug, Default)]
pub struct HostNetwork {
    /// The namespace the jail process joins (`None`: it stays in the jailer's, or makes a
    /// private one itself).
    pub ns: Option<OwnedFd>,
    /// The socket the firewall was sent on, still open (close-on-exec). Whoever drops the
    /// last copy waits for nf_tables' deferred clean-up: the jail process's copy goes at
    /// its exec while the keeper (forked with a copy) still holds one, so the wait falls on
    /// the keeper, after the VMM runs.
    pub firewall: Option<Socket>,
}

/// The step these parts belong to in `--timing`.
pub const STEP: &str = "4 host network";

/// The network namespace record to journal before [`prepare`] makes anything (`None`:
/// nothing on the host side): the namespace (for `--new-netns` the file `/run/netns/<id>`,
/// refused here if it exists) and the tables to be loaded in it (removing a table that
/// was never loaded is no error).
pub fn intent(config: &Config) -> Result<Option<NetnsRecord>, NetworkError> {
    let net = &config.network;
    let table = firewall::table_name(&config.id);
    let tables = NetnsRecord {
        table: net.firewall.then(|| table.clone()),
        tap_table: (net.tap_filter && !net.taps.is_empty()).then(|| table.clone()),
        ..Default::default()
    };
    Ok(match &net.mode {
        // The private namespace is made by the jail process itself (`unshare.rs`).
        NetnsMode::Private | NetnsMode::Host => None,
        NetnsMode::Join(path) => Some(NetnsRecord {
            path: path.clone(),
            ..tables
        }),
        NetnsMode::Create => Some(NetnsRecord {
            path: namespace::reserve(&config.id)?,
            created: true,
            mounted: true,
            ..tables
        }),
    })
}

/// Prepares the jail's network namespace, its [`intent`] journaled: its descriptor to join
/// it with and the firewall's socket ([`HostNetwork`]). Runs on a thread of its own, beside
/// the main thread's steps 2 and 3 (`main.rs`): it only moves that thread between
/// namespaces, and writes the journal through the shared lock. Each part is timed with
/// `--timing`.
pub fn prepare(
    config: &Config,
    early: Option<Early>,
    journal: &SharedJournal,
    clock: &mut Clock,
) -> Result<HostNetwork, NetworkError> {
    let net = &config.network;
    let filtered: &[crate::args::Tap] = if net.tap_filter { &net.taps } else { &[] };
    let table = firewall::table_name(&config.id);
    let pinned_at = namespace::path_of(&config.id);
    // Its file first, before waiting for the namespace: the journal names it from step 2 on,
    // and removes it only once the jailer has made it.
    if matches!(net.mode, NetnsMode::Create) {
        namespace::claim(&pinned_at, journal)?;
    }
    let (ns, early_firewall) = match &net.mode {
        NetnsMode::Private | NetnsMode::Host => return Ok(HostNetwork::default()),
        NetnsMode::Join(path) => {
            let ns = namespace::open(path)?;
            clock.part(STEP, "1 namespace");
            (ns, None)
        }
        // Made ahead by [`start_early`] (with its loopback up, and maybe its firewall):
        // waited for, then pinned.
        NetnsMode::Create => {
            let Early(thread) = early.ok_or(NetworkError::NotMadeAhead)?;
            let (made, socket) = thread.join().map_err(|_| NetworkError::EarlyPanicked)??;
            let ns = namespace::pin_unnamed(&pinned_at, made)?;
            clock.part(
                STEP,
                match socket {
                    Some(_) => "1 namespace and firewall (made ahead, pinned)",
                    None => "1 namespace (made ahead, pinned)",
                },
            );
            (ns, socket)
        }
    };
    let firewall = namespace::within(&ns, "of the jail", || {
        for t in &net.taps {
            // Journaled once it exists (and before it is made persistent): an interface
            // that was already there is never recorded, so never removed.
            tap::create(&t.name, config.uid, config.gid, || {
                journal.record(|s| {
                    if let Some(n) = s.netns.as_mut() {
                        n.taps.push(t.name.clone());
                    }
                })?;
                Ok(())
            })?;
            clock.part(STEP, &format!("2 tap {}", t.name));
        }
        if early_firewall.is_some() {
            return Ok(early_firewall);
        }
        if net.firewall || !filtered.is_empty() {
            let socket = firewall::load(&firewall::Tables {
                name: &table,
                firewall: net.firewall,
                taps: filtered,
                allow: &net.egress,
                // A namespace made just now holds no table to replace.
                replace: !matches!(net.mode, NetnsMode::Create),
            })?;
            clock.part(STEP, "3 firewall");
            return Ok(socket);
        }
        Ok(None)
    })?;
    Ok(HostNetwork {
        ns: Some(ns),
        firewall,
    })
}

/// Removes what the jailer made: its taps and table (in a joined namespace), or the whole
/// namespace it created — unpinned, which takes its taps and tables with it when its last
/// user goes (deleting a tap first would fail while anyone still holds it open, and must
/// not leave the namespace's file behind). What is already gone is skipped.
pub fn remove(record: &NetnsRecord) -> Result<(), NetworkError> {
    if record.created {
        return namespace::unpin(&record.path);
    }
    let ns = match namespace::open(&record.path) {
        Ok(ns) => Some(ns),
        Err(NetworkError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
        // The file exists but holds no namespace (crash before the bind mount).
        Err(NetworkError::NotNetns { .. }) => None,
        Err(e) => return Err(e),
    };
    if let Some(ns) = &ns {
        namespace::within(ns, "of the jail", || {
            for name in &record.taps {
                tap::delete(name)?;
            }
            let mut families = Vec::new();
            if record.table.is_some() {
                families.push(Family::Inet);
            }
            if record.tap_table.is_some() {
                families.push(Family::Netdev);
            }
            if let Some(table) = record.table.as_ref().or(record.tap_table.as_ref()) {
                firewall::delete(table, &families)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
