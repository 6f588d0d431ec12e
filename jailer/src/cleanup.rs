//! `jailer cleanup --id ID`, and the removal shared with `--cleanup-on-exit` and with the undo
//! of a failed set-up: everything recorded in the jail's journal is removed — the `/run`
//! tmpfs, the network namespace (or the taps and firewall tables made in a joined one),
//! cgroups, the jail directory — but never while a process of the jail is alive.
//!
//! The journal records each object before it is made (`state`), so whatever a SIGKILL left
//! at any instant is in it, and removing an object that was never made is not an error.
//! `jailer cleanup` also finds what a jailer killed before or after the journal's directory
//! existed leaves (`jail_dir`: a claim `.<id>.jailer`, a `.<id>.removed`), waits (up to
//! `--wait-ms`) for processes of the jail that are still exiting, and ends by checking that
//! nothing is left: it succeeds only when the jail is gone, and otherwise says what remains.
//!
//! The jail's root is a tree the jail wrote to: it is removed with the bounded remover
//! (`kiln_hostfs::remove_tree`: constant descriptors and stack, no link followed, never
//! into another mount). The journal goes last, and only when everything else is gone, so a
//! cleanup that failed or was interrupted can always be run again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::args::CleanupConfig;
use crate::cgroup;
use crate::jail_dir::{self, JailDirError};
use crate::network;
use crate::run_fs;
use crate::state::{JailState, Journal, StateError};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("--id {id}: the jail is still alive (pids {pids:?}) after waiting {waited_ms} ms for it to exit; stop the VMM first")]
    Live {
        id: String,
        pids: Vec<i32>,
        waited_ms: u128,
    },
    #[error("cleaning up jail {id}: {failures}")]
    Failed { id: String, failures: String },
    #[error(transparent)]
    JailDir(#[from] JailDirError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What `jailer cleanup` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleaned {
    /// The jail was there and is gone.
    Removed,
    /// Nothing of the jail was there.
    Nothing,
    /// `<id>` exists without a journal: a directory the jailer did not make (or adopt),
    /// left alone.
    NotTheJailers(PathBuf),
}

/// `jailer cleanup`.
pub fn run_command(config: &CleanupConfig) -> Result<Cleaned, CleanupError> {
    let deadline = Instant::now() + config.wait;
    let exec_dir = config.chroot_base.join(&config.exec_name);
    let dir = config.jail_dir();
    let claim = jail_dir::claim_path(&exec_dir, &config.id);
    let removed = jail_dir::removed_path(&exec_dir, &config.id);
    let found = claim.exists() || removed.exists();
    // A jailer killed before its claim became the jail directory, or setting one up now.
    jail_dir::settle_claim(&claim, &dir, &config.id, config.wait)?;
    // A removal killed before its last step.
    jail_dir::remove_removed(&exec_dir, &config.id).map_err(|failures| CleanupError::Failed {
        id: config.id.clone(),
        failures,
    })?;
    match std::fs::symlink_metadata(&dir) {
        Err(_) => {}
        Ok(meta) if !meta.is_dir() => {
            return Err(JailDirError::NotADirectory {
                id: config.id.clone(),
                path: dir,
            }
            .into())
        }
        Ok(_) => return removed_by_journal(config, &dir, deadline),
    }
    wait_for_jailers(config, deadline)?;
    Ok(if found {
        Cleaned::Removed
    } else {
        Cleaned::Nothing
    })
}

/// The jail directory `dir` exists: removes the jail its journal records once no process
/// of it is alive (waiting until `deadline`). The journal is read again while it waits:
/// a jailer still setting up records its keepers as they start, and a keeper removing the
/// jail itself removes the journal last — then this waits for that keeper to finish.
fn removed_by_journal(
    config: &CleanupConfig,
    dir: &Path,
    deadline: Instant,
) -> Result<Cleaned, CleanupError> {
    let mut last: Option<JailState> = None;
    loop {
        let Some(state) = Journal::load(dir, &config.id)? else {
            let Some(last) = last else {
                wait_for_jailers(config, deadline)?;
                return Ok(match dir.exists() {
                    true => Cleaned::NotTheJailers(dir.to_path_buf()),
                    // Its last keeper finished removing it just now.
                    false => Cleaned::Removed,
                });
            };
            // Removed meanwhile by one of its processes (a supervisor, a guard).
            while !live_pids(&last, &[]).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let exec_dir = config.chroot_base.join(&config.exec_name);
            jail_dir::remove_removed(&exec_dir, &config.id).map_err(|failures| {
                CleanupError::Failed {
                    id: config.id.clone(),
                    failures,
                }
            })?;
            let left = left_behind(&last);
            if !left.is_empty() {
                return Err(CleanupError::Failed {
                    id: config.id.clone(),
                    failures: format!("still there: {}", left.join(", ")),
                });
            }
            return Ok(Cleaned::Removed);
        };
        let pids = live_pids(&state, &[]);
        if pids.is_empty() {
            remove(&state, deadline)?;
            return Ok(Cleaned::Removed);
        }
        if Instant::now() >= deadline {
            return Err(CleanupError::Live {
                id: config.id.clone(),
                pids,
                waited_ms: config.wait.as_millis(),
            });
        }
        last = Some(state);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (until `deadline`) for this jail's own jailer processes that no journal names any
/// more: a keeper (supervisor, daemon) that removed the jail itself removes its journal and
/// directory before it exits, so a cleanup that finds neither may run while it still does.
/// They are found by executable (this jailer's) and command line (`--id ID`, not a
/// `jailer cleanup`).
fn wait_for_jailers(config: &CleanupConfig, deadline: Instant) -> Result<(), CleanupError> {
    loop {
        let pids = jailer_processes(&config.id);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CleanupError::Live {
                id: config.id.clone(),
                pids,
                waited_ms: config.wait.as_millis(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Pids of processes running this jailer's executable for jail `id` (cleanups aside).
fn jailer_processes(id: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::fs::metadata("/proc/self/exe") else {
        return Vec::new();
    };
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if u32::try_from(pid).is_ok_and(|p| p == own) {
            continue;
        }
        let same_exe = std::fs::metadata(format!("/proc/{pid}/exe"))
            .is_ok_and(|m| m.dev() == me.dev() && m.ino() == me.ino());
        if !same_exe {
            continue;
        }
        // A zombie's command line reads empty: it is gone but for its exit status.
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        let names_id = args
            .windows(2)
            .any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
            || args
                .iter()
                .any(|a| a.strip_prefix(b"--id=") == Some(id.as_bytes()));
        let is_cleanup = args.get(1).is_some_and(|a| *a == b"cleanup");
        if names_id && !is_cleanup {
            found.push(pid);
        }
    }
    found
}

/// Processes of the jail still alive, `exclude` aside: the recorded ones and any process in
/// the jail's cgroups (which catches whatever they started).
pub fn live_pids(state: &JailState, exclude: &[i32]) -> Vec<i32> {
    let mut pids: Vec<i32> = state
        .processes
        .iter()
        .filter(|p| p.is_alive())
        .map(|p| p.pid)
        .collect();
    for record in &state.cgroups {
        for pid in cgroup::procs(&record.dir).unwrap_or_default() {
            if let Ok(pid) = i32::try_from(pid) {
                pids.push(pid);
            }
        }
    }
    pids.retain(|p| !exclude.contains(p));
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// How long a removal waits, by default, for the jail's exited tasks to be reaped before
/// their cgroups can go.
pub const REAP_WAIT: Duration = Duration::from_secs(2);

/// Removes everything the journal records. Each step runs even when an earlier one failed;
/// the failures are reported together, and the journal (and the jail directory holding it)
/// stays until a cleanup succeeds. Removing what is already gone is not an error. A cgroup
/// whose last tasks exited but are not reaped yet is retried until `deadline`. Ends with a
/// look at what is still there: anything is a failure, named.
pub fn remove(state: &JailState, deadline: Instant) -> Result<(), CleanupError> {
    let mut failures: Vec<String> = Vec::new();
    if let Some(run) = &state.run_tmpfs {
        if let Err(e) = run_fs::unmount(run) {
            failures.push(e.to_string());
        }
    }
    if let Some(record) = &state.netns {
        if let Err(e) = network::remove(record) {
            failures.push(e.to_string());
        }
    }
    for record in state.cgroups.iter().rev() {
        if let Err(e) = cgroup::remove(record, deadline) {
            failures.push(e.to_string());
        }
    }
    if let Err(e) = jail_dir::remove(state, failures.is_empty()) {
        failures.push(e);
    }
    if failures.is_empty() && state.exec_dir_created {
        // Shared with other jails of the same VMM: only removed once empty.
        let _ = std::fs::remove_dir(&state.exec_dir);
    }
    if failures.is_empty() {
        let left = left_behind(state);
        if !left.is_empty() {
            failures.push(format!("still there: {}", left.join(", ")));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CleanupError::Failed {
            id: state.id.clone(),
            failures: failures.join("; "),
        })
    }
}

/// What of the jail still exists after a removal that reported no failure.
fn left_behind(state: &JailState) -> Vec<String> {
    let mut left = Vec::new();
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    if let Some(run) = &state.run_tmpfs {
        if run_fs::is_mounted(run) {
            left.push(format!("the mount {}", run.display()));
        }
    }
    if let Some(n) = state.netns.as_ref().filter(|n| n.created) {
        if exists(&n.path) {
            left.push(n.path.display().to_string());
        }
    }
    for c in state.cgroups.iter().filter(|c| exists(&c.dir)) {
        left.push(format!("cgroup {}", c.dir.display()));
    }
    if state.adopted {
        left.extend(
            state
                .made
                .iter()
                .filter(|m| exists(m))
                .map(|m| m.display().to_string()),
        );
    } else if exists(&state.jail_dir) {
        left.push(state.jail_dir.display().to_string());
    }
    left
}
