//! `jailer cleanup --id ID`, and the removal shared with `--cleanup-on-exit` and with the undo
//! of a failed set-up: everything recorded in the jail's journal is removed — the `/run`
//! tmpfs, the network namespace (or the taps and firewall tables made in a joined one),
//! cgroups, the jail directory — but never while a process of the jail is alive.
//!
//! The jail's root is a tree the jail wrote to: it is removed with the bounded remover
//! (`kiln_hostfs::remove_tree`: constant descriptors and stack, no link followed, never
//! into another mount). The journal goes last, and only when everything else is gone, so a
//! cleanup that failed or was interrupted can always be run again.

use std::io;
use std::path::{Path, PathBuf};

use crate::args::CleanupConfig;
use crate::cgroup;
use crate::network;
use crate::run_fs;
use crate::state::{JailState, Journal, StateError, STATE_FILE};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("--id {id}: no jail at {path}")]
    NoJail { id: String, path: PathBuf },
    #[error(
        "--id {id}: {path} has no jail state; remove it by hand once no jailer is setting it up"
    )]
    NoState { id: String, path: PathBuf },
    #[error("--id {id}: the jail is still alive (pids {pids:?}); stop the VMM first")]
    Live { id: String, pids: Vec<i32> },
    #[error("cleaning up jail {id}: {failures}")]
    Failed { id: String, failures: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// `jailer cleanup`.
pub fn run_command(config: &CleanupConfig) -> Result<(), CleanupError> {
    let dir = config.jail_dir();
    if !dir.exists() {
        return Err(CleanupError::NoJail {
            id: config.id.clone(),
            path: dir,
        });
    }
    let Some(state) = Journal::load(&dir, &config.id)? else {
        return Err(CleanupError::NoState {
            id: config.id.clone(),
            path: dir,
        });
    };
    let pids = live_pids(&state, &[]);
    if !pids.is_empty() {
        return Err(CleanupError::Live {
            id: config.id.clone(),
            pids,
        });
    }
    remove(&state)
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

/// Removes everything the journal records. Each step runs even when an earlier one failed;
/// the failures are reported together, and the journal (and the jail directory holding it)
/// stays until a cleanup succeeds. Removing what is already gone is not an error.
pub fn remove(state: &JailState) -> Result<(), CleanupError> {
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
        if let Err(e) = cgroup::remove(record) {
            failures.push(e.to_string());
        }
    }
    if let Err(e) = remove_jail_dir(&state.jail_dir, failures.is_empty()) {
        failures.push(e);
    }
    if failures.is_empty() && state.exec_dir_created {
        // Shared with other jails of the same VMM: only removed once empty.
        let _ = std::fs::remove_dir(&state.exec_dir);
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

/// Removes everything in the jail directory but the journal, then, when `with_journal` and
/// nothing was left, the journal and the directory.
fn remove_jail_dir(dir: &Path, with_journal: bool) -> Result<(), String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("listing {}: {e}", dir.display())),
    };
    let mut failures = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                failures.push(format!("listing {}: {e}", dir.display()));
                break;
            }
        };
        if entry.file_name() == STATE_FILE {
            continue;
        }
        if let Err(e) = kiln_hostfs::remove_tree(&entry.path()) {
            failures.push(e.to_string());
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("; "));
    }
    if !with_journal {
        return Ok(());
    }
    kiln_hostfs::remove_tree(&dir.join(STATE_FILE)).map_err(|e| e.to_string())?;
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", dir.display())),
    }
}
