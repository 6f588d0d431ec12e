//! The jail directory `<base>/<exec-name>/<id>`: how it comes to exist with its journal
//! already in it, how an orchestrator's pre-created one is adopted, and how it goes away —
//! each in steps a SIGKILL at any instant leaves recognisable.
//!
//! **Birth.** The jailer makes the *claim* `<base>/<exec-name>/.<id>.jailer` (`mkdir`:
//! exclusive, so two jailers never set up the same id at once), writes the journal in it
//! (naming the jailer's own process), then renames the claim to `<id>`
//! (`renameat2(RENAME_NOREPLACE)`: atomic, never over an existing entry). So there is never a
//! jail directory without its journal; a SIGKILL before the rename leaves a claim, which its
//! name marks as the jailer's: removed once no live jailer holds it ([`settle_claim`]).
//!
//! **An existing `<id>`.** With a journal it is a jail: refused while alive, else the caller
//! removes it and installs the claim again. Without one it is the orchestrator's (Firecracker
//! creates the jail's root "unless the path already exists", and orchestrators stage the
//! kernel and disks in it): checked ([`adopt`]) and adopted — the journal, marked `adopted`,
//! is renamed into it. Nothing that was there is removed later, only what the jailer made.
//!
//! **Death** ([`remove`]): everything in it but the journal goes (the bounded remover), then
//! the directory is renamed to `.<id>.removed` — marked by its name again — and removed. In an
//! adopted directory only the entries the jailer made go, then the journal.

mod adopt;

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;

pub use adopt::AdoptError;

use crate::args::Config;
use crate::state::{JailState, Journal, ProcessRecord, StateError, STATE_FILE, STATE_TMP};

/// A claim without a journal younger than this may belong to a jailer that is about to write
/// one (it does right after its `mkdir`); an older one was left by a jailer killed in between.
const CLAIM_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum JailDirError {
    #[error("creating {path}: {source}")]
    Mkdir { path: PathBuf, source: io::Error },
    #[error("--id {id}: another jailer (pids {pids:?}) is setting up this jail ({path})")]
    Busy {
        id: String,
        path: PathBuf,
        pids: Vec<i32>,
    },
    #[error("--id {id}: {path} is not a directory; refusing to use or remove it")]
    NotADirectory { id: String, path: PathBuf },
    #[error("renaming {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        source: kiln_hostfs::RemoveError,
    },
    #[error(transparent)]
    Adopt(#[from] AdoptError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// `<exec_dir>/.<id>.jailer`: a jail directory being born (ids have no dots, so no jail
/// directory can have this name).
pub fn claim_path(exec_dir: &Path, id: &str) -> PathBuf {
    exec_dir.join(format!(".{id}.jailer"))
}

/// `<exec_dir>/.<id>.removed`: a jail directory being removed.
pub fn removed_path(exec_dir: &Path, id: &str) -> PathBuf {
    exec_dir.join(format!(".{id}.removed"))
}

/// `mkdir` with an explicit mode (the umask is 077); `Ok(false)` when it already exists.
pub fn mkdir(path: &Path, mode: u32) -> Result<bool, JailDirError> {
    let err = |source| JailDirError::Mkdir {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::create_dir(path) {
        Ok(()) => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(err(e)),
    }
}

fn rename_noreplace(from: &Path, to: &Path) -> Result<(), Errno> {
    crate::sys::renameat2(from, to, libc::RENAME_NOREPLACE)
}

/// Makes the chroot base if it does not exist (`/srv/jailer` on a fresh host), as
/// Firecracker's jailer does; it is never removed. The argument parser resolved it, canonical,
/// without making it: it must still be that path (no symbolic link planted meanwhile).
fn make_base(base: &Path) -> Result<(), JailDirError> {
    let err = |source| JailDirError::Mkdir {
        path: base.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(base).map_err(err)?;
    match std::fs::canonicalize(base).map_err(err)? == base {
        true => Ok(()),
        false => Err(err(io::Error::other(
            "it changed while the jailer started (a symbolic link on its way)",
        ))),
    }
}

/// A claim holding the journal of a jail to be.
#[derive(Debug)]
pub struct Claim {
    path: PathBuf,
    journal: Journal,
}

/// What [`Claim::install`] found.
pub enum Installed {
    /// The claim is now the jail directory.
    Done(Journal),
    /// `<id>` exists and holds this jail state (alive or stale: the caller decides).
    Jail(Claim, Box<JailState>),
    /// `<id>` exists without a journal: the orchestrator's directory.
    Foreign(Claim),
}

/// Makes the claim of jail `config.id` with its journal; waits (up to `wait`) for another
/// jailer setting up the same id, and removes the claim of one that died.
pub fn claim(config: &Config, wait: Duration) -> Result<Claim, JailDirError> {
    let exec_dir = config.chroot_base.join(&config.exec_name);
    let jail_dir = config.jail_dir();
    let path = claim_path(&exec_dir, &config.id);
    let deadline = Instant::now() + wait;
    make_base(&config.chroot_base)?;
    loop {
        let exec_dir_created = mkdir(&exec_dir, 0o755)?;
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let left = deadline.saturating_duration_since(Instant::now());
                settle_claim(&path, &jail_dir, &config.id, left)?;
                continue;
            }
            // The exec directory vanished (another jail's cleanup removed it): again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(JailDirError::Mkdir { path, source }),
        }
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        let state = JailState {
            id: config.id.clone(),
            jail_dir: jail_dir.clone(),
            exec_dir: exec_dir.clone(),
            exec_dir_created,
            // Intent: the jailer mounts it (cleanup skips it while it is not a mount).
            run_tmpfs: Some(config.chroot_dir().join("run")),
            processes: ProcessRecord::of("jailer", me).into_iter().collect(),
            ..Default::default()
        };
        return match Journal::create_in(&path, state) {
            Ok(journal) => Ok(Claim { path, journal }),
            Err(e) => {
                // Nothing else was made: the claim goes (and the exec directory, if this
                // made it and it is empty).
                let _ = kiln_hostfs::remove_tree(&path);
                if exec_dir_created {
                    let _ = std::fs::remove_dir(&exec_dir);
                }
                Err(e.into())
            }
        };
    }
}

impl Claim {
    /// Renames the claim to the jail directory, unless something is there already.
    pub fn install(mut self) -> Result<Installed, JailDirError> {
        let jail_dir = self.journal.state.jail_dir.clone();
        match rename_noreplace(&self.path, &jail_dir) {
            Ok(()) => {
                self.journal.moved_to(&jail_dir);
                return Ok(Installed::Done(self.journal));
            }
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => {}
            Err(e) => {
                let e = JailDirError::Rename {
                    from: self.path.clone(),
                    to: jail_dir,
                    source: e.into(),
                };
                self.abandon();
                return Err(e);
            }
        }
        let is_dir = std::fs::symlink_metadata(&jail_dir).is_ok_and(|m| m.is_dir());
        if !is_dir {
            let id = self.journal.state.id.clone();
            self.abandon();
            return Err(JailDirError::NotADirectory { id, path: jail_dir });
        }
        match Journal::load(&jail_dir, &self.journal.state.id) {
            Ok(Some(state)) => Ok(Installed::Jail(self, Box::new(state))),
            Ok(None) => Ok(Installed::Foreign(self)),
            Err(e) => {
                self.abandon();
                Err(e.into())
            }
        }
    }

    /// Adopts the orchestrator's directory `<id>` (checked first): the journal, marked
    /// adopted, moves into it.
    pub fn adopt(mut self, config: &Config) -> Result<Journal, JailDirError> {
        let jail_dir = config.jail_dir();
        if let Err(e) = adopt::check(&jail_dir, config) {
            self.abandon();
            return Err(e.into());
        }
        if let Err(e) = self.journal.record(|s| s.adopted = true) {
            self.abandon();
            return Err(e.into());
        }
        let from = self.path.join(STATE_FILE);
        let to = jail_dir.join(STATE_FILE);
        if let Err(e) = rename_noreplace(&from, &to) {
            let e = JailDirError::Rename {
                from,
                to,
                source: e.into(),
            };
            self.abandon();
            return Err(e);
        }
        self.journal.moved_to(&jail_dir);
        // Only a stale temporary file can be left in it; a kill before this leaves an empty
        // claim, which the next jailer or `jailer cleanup` removes.
        let _ = kiln_hostfs::remove_tree(&self.path);
        Ok(self.journal)
    }

    /// Gives the claim up (nothing was made but the claim and its journal).
    pub fn abandon(self) {
        let _ = kiln_hostfs::remove_tree(&self.path);
        if self.journal.state.exec_dir_created {
            let _ = std::fs::remove_dir(&self.journal.state.exec_dir);
        }
    }
}

/// Resolves an existing claim `path` of jail `id`: returns once it is gone (removed here if
/// the jailer that made it is dead), or fails with [`JailDirError::Busy`] when its jailer is
/// still alive after `wait`.
pub fn settle_claim(
    path: &Path,
    jail_dir: &Path,
    id: &str,
    wait: Duration,
) -> Result<(), JailDirError> {
    let deadline = Instant::now() + wait;
    loop {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(JailDirError::Mkdir {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        if !meta.is_dir() {
            return Err(JailDirError::NotADirectory {
                id: id.to_owned(),
                path: path.to_path_buf(),
            });
        }
        let live = match Journal::load_from(path, jail_dir, id) {
            Ok(Some(state)) => state
                .processes
                .iter()
                .filter(|p| p.is_alive())
                .map(|p| p.pid)
                .collect(),
            // No journal yet: its jailer writes one right after the mkdir.
            Ok(None) => match age(&meta) < CLAIM_GRACE {
                true => vec![0],
                false => Vec::new(),
            },
            // A journal is written whole and renamed: a corrupt one is from no live jailer.
            Err(StateError::Parse { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        if live.is_empty() {
            return remove_tree(path);
        }
        if Instant::now() >= deadline {
            return Err(JailDirError::Busy {
                id: id.to_owned(),
                path: path.to_path_buf(),
                pids: live.into_iter().filter(|p| *p > 0).collect(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long ago the directory was last changed.
fn age(meta: &std::fs::Metadata) -> Duration {
    let changed = SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(meta.ctime()).unwrap_or(0),
            u32::try_from(meta.ctime_nsec()).unwrap_or(0),
        );
    SystemTime::now()
        .duration_since(changed)
        .unwrap_or(Duration::ZERO)
}

fn remove_tree(path: &Path) -> Result<(), JailDirError> {
    kiln_hostfs::remove_tree(path).map_err(|source| JailDirError::Remove {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes the jail directory of `state`: everything the jail made in it, and then, when
/// `with_journal` (nothing else of the jail is left), the journal — with the directory
/// itself unless it was adopted. Removing what is already gone is not an error.
pub fn remove(state: &JailState, with_journal: bool) -> Result<(), String> {
    let dir = &state.jail_dir;
    let mut failures = Vec::new();
    if state.adopted {
        for entry in state.made.iter().rev() {
            if let Err(e) = kiln_hostfs::remove_tree(entry) {
                failures.push(e.to_string());
            }
        }
    } else {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("listing {}: {e}", dir.display())),
        };
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
    }
    if !failures.is_empty() {
        return Err(failures.join("; "));
    }
    if !with_journal {
        return Ok(());
    }
    if state.adopted {
        for name in [STATE_TMP, STATE_FILE] {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing {}: {e}", dir.join(name).display())),
            }
        }
        return Ok(());
    }
    // Renamed first, so that a kill before the last step leaves a directory marked by its
    // name, not one without a journal that would look like someone else's.
    let removed = removed_path(&state.exec_dir, &state.id);
    remove_removed(&state.exec_dir, &state.id)?;
    match std::fs::rename(dir, &removed) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("renaming {}: {e}", dir.display())),
    }
    kiln_hostfs::remove_tree(&removed).map_err(|e| e.to_string())
}

/// Removes what a killed removal of jail `id` left (`.<id>.removed`: at most a journal).
pub fn remove_removed(exec_dir: &Path, id: &str) -> Result<(), String> {
    kiln_hostfs::remove_tree(&removed_path(exec_dir, id)).map_err(|e| e.to_string())
}
