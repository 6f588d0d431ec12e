//! The jail's journal: every host resource the jailer creates (the jail directory, its
//! `/run` tmpfs, cgroups, network namespace, taps, firewall tables) and every process of the
//! jail, recorded in `<base>/<exec-name>/<id>/jail.json` (outside the jail's root, root
//! only). Undo on a failed set-up, `--cleanup-on-exit` and `jailer cleanup` all work from
//! this record, so nothing the jailer made is forgotten.
//!
//! **Intent first.** Each object is recorded *before* it is made (its intent), then made,
//! then, where it matters, marked done: a SIGKILL at any instant leaves at most objects the
//! journal names, and removing one that was never made is not an error. Where the jailer
//! cannot know in advance what it will make (the cgroup levels that do not exist yet), it
//! records what is missing before creating it and what it did create afterwards. The journal
//! is written whole to a temporary file exchanged with the old one: it is always complete.
//!
//! **The journal is the marker.** It is written first, in a directory whose very name says it
//! is the jailer's (`jail_dir`: the claim `.<id>.jailer`), before that directory becomes the
//! jail directory (an atomic rename). So a jail directory holding a journal is the jailer's,
//! and one without is someone else's (an orchestrator's pre-created directory): never
//! removed.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "jail.json";
/// Where [`Journal::persist`] writes before the rename (removed with the jail).
pub const STATE_TMP: &str = "jail.json.tmp";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("writing the jail state {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("reading the jail state {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("jail state {path} is corrupt: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("jail state {path} does not belong to this jail ({what}); refusing to act on it")]
    Foreign { path: PathBuf, what: String },
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailState {
    pub id: String,
    /// `<base>/<exec-name>/<id>` (removed with everything below it, unless `adopted`).
    pub jail_dir: PathBuf,
    /// `<base>/<exec-name>`, and whether this jail created it (then it is removed when empty).
    pub exec_dir: PathBuf,
    pub exec_dir_created: bool,
    /// The jail directory existed before the jailer (made by the orchestrator, maybe with
    /// files staged in `root/`): only what the jailer made in it ([`JailState::made`]) is
    /// removed, the directory and the orchestrator's files stay.
    #[serde(default)]
    pub adopted: bool,
    /// In an adopted directory: the entries the jailer makes (`root` itself if it was
    /// missing, the VMM copy, the pid file, `run`, `dev`, bind targets and their missing
    /// parents), recorded before any is made, removed in reverse order.
    #[serde(default)]
    pub made: Vec<PathBuf>,
    /// `<jail_dir>/root/run`, recorded before the jail's tmpfs is mounted on it.
    pub run_tmpfs: Option<PathBuf>,
    pub cgroups: Vec<CgroupRecord>,
    pub netns: Option<NetnsRecord>,
    pub processes: Vec<ProcessRecord>,
    /// The set-up is done: every process of the jail is recorded (written with the last
    /// one). A journal that is not complete belongs to a jailer killed or failed midway.
    #[serde(default)]
    pub complete: bool,
}

/// One cgroup directory of the jail (one per hierarchy used).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupRecord {
    /// The jail's cgroup directory.
    pub dir: PathBuf,
    /// The jailer's own cgroup in that hierarchy (where its processes go back before rmdir).
    pub origin: PathBuf,
    /// Directories the jailer created, top-down (`dir` last): removed bottom-up, the shared
    /// parents only when empty. Before `done`: the levels that were missing, which it is
    /// about to create.
    pub created: Vec<PathBuf>,
    /// The directories exist and `created` lists exactly those this jail made.
    #[serde(default)]
    pub done: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetnsRecord {
    /// The namespace file (`--netns PATH`, or `/run/netns/<id>`).
    pub path: PathBuf,
    /// The jailer creates the file (and bind-mounts a new namespace on it when `mounted`).
    pub created: bool,
    pub mounted: bool,
    /// Taps the jailer created in it.
    pub taps: Vec<String>,
    /// The nftables table (`inet`: the egress firewall) the jailer installed in it.
    pub table: Option<String>,
    /// The nftables table (`netdev`: the taps' guest filters) the jailer installed in it.
    pub tap_table: Option<String>,
}

/// A process of the jail; `start_time` (field 22 of /proc/PID/stat) tells a live process
/// from a later one that reused the pid.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessRecord {
    pub role: String,
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessRecord {
    pub fn of(role: &str, pid: i32) -> Option<Self> {
        process_start_time(pid).map(|start_time| ProcessRecord {
            role: role.to_owned(),
            pid,
            start_time,
        })
    }

    /// The recorded process still runs (not a zombie, same start time).
    pub fn is_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

/// The journal shared by the threads of the host-side set-up (`main.rs`: the network is set
/// up on a thread of its own while the main thread makes the root and the cgroups): every
/// change is made, and written, under one lock, so that each write is whole and none is
/// lost.
pub struct SharedJournal<'a>(Mutex<&'a mut Journal>);

impl<'a> SharedJournal<'a> {
    pub fn new(journal: &'a mut Journal) -> Self {
        SharedJournal(Mutex::new(journal))
    }

    fn lock(&self) -> MutexGuard<'_, &'a mut Journal> {
        // A thread that panicked holding the lock left the state whole: it is only changed
        // by the closures below, which cannot panic halfway through a write.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Journal::record`] under the lock.
    pub fn record(&self, change: impl FnOnce(&mut JailState)) -> Result<(), StateError> {
        self.lock().record(change)
    }

    /// Changes the state without writing it: it goes out with the next write. Only for a
    /// change that narrows a record to what was really made (a kill before the next write
    /// leaves the wider intent, whose removal skips what does not exist or is not empty).
    pub fn note(&self, change: impl FnOnce(&mut JailState)) {
        change(&mut self.lock().state);
    }
}

/// The journal: the state plus where it is persisted.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    pub state: JailState,
}

impl Journal {
    /// Starts the journal in `dir` (the jail directory, or its claim before the rename).
    pub fn create_in(dir: &Path, state: JailState) -> Result<Self, StateError> {
        let journal = Journal {
            path: dir.join(STATE_FILE),
            state,
        };
        journal.persist()?;
        Ok(journal)
    }

    /// Starts the journal of a jail whose directory was just created.
    #[cfg(test)]
    pub fn create(state: JailState) -> Result<Self, StateError> {
        let dir = state.jail_dir.clone();
        Self::create_in(&dir, state)
    }

    /// The directory holding the journal was renamed to `dir`, or the file moved into it.
    pub fn moved_to(&mut self, dir: &Path) {
        self.path = dir.join(STATE_FILE);
    }

    /// Changes the state and writes it out (atomically: temporary file + rename).
    pub fn record(&mut self, change: impl FnOnce(&mut JailState)) -> Result<(), StateError> {
        change(&mut self.state);
        self.persist()
    }

    /// Records process `pid` unless it is recorded already (`complete`: the last one).
    pub fn record_process(
        &mut self,
        role: &str,
        pid: i32,
        complete: bool,
    ) -> Result<(), StateError> {
        self.record_processes(&[(role, pid)], complete)
    }

    /// Records the processes `(role, pid)` not recorded already, in one write
    /// (`complete`: they are the last ones).
    pub fn record_processes(
        &mut self,
        processes: &[(&str, i32)],
        complete: bool,
    ) -> Result<(), StateError> {
        let new: Vec<ProcessRecord> = processes
            .iter()
            .filter_map(|&(role, pid)| ProcessRecord::of(role, pid))
            .filter(|r| {
                !self
                    .state
                    .processes
                    .iter()
                    .any(|p| p.pid == r.pid && p.start_time == r.start_time)
            })
            .collect();
        if new.is_empty() && self.state.complete == complete {
            return Ok(());
        }
        self.record(|s| {
            s.processes.extend(new);
            s.complete |= complete;
        })
    }

    /// Writes the state out whole: a new temporary file, exchanged with the journal
    /// (`renameat2(RENAME_EXCHANGE)`), then the old one (now under the temporary name)
    /// unlinked. A kill at any instant leaves the journal complete, old or new.
    ///
    /// Not a plain `rename` over the journal: ext4 (`auto_da_alloc`, the default) flushes a
    /// file renamed over another to the disk first, for durability across a power loss that
    /// the journal does not need (it records a running set-up, which a reboot ends anyway):
    /// 0.1 to 0.3 ms per write on the development host's discard-mounted disk, with five
    /// writes on the start-up path. An exchange is not a replacement and waits for nothing.
    /// The first write (no journal yet) and a filesystem without exchange rename plainly.
    fn persist(&self) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        let text =
            serde_json::to_string_pretty(&self.state).map_err(|e| err(io::Error::other(e)))?;
        let tmp = self.path.with_file_name(STATE_TMP);
        let open = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
        };
        let mut f = match open() {
            // Left by a jailer killed between its exchange and its unlink.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&tmp).map_err(err)?;
                open()
            }
            other => other,
        }
        .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        drop(f);
        match crate::sys::renameat2(&tmp, &self.path, libc::RENAME_EXCHANGE) {
            // The journal is written: a temporary file left is removed by the next write.
            Ok(()) => {
                let _ = std::fs::remove_file(&tmp);
                Ok(())
            }
            Err(Errno::ENOENT | Errno::EINVAL) => std::fs::rename(&tmp, &self.path).map_err(err),
            Err(e) => Err(err(e.into())),
        }
    }

    /// Reads the state of jail `id` in `jail_dir`; `None` when there is no state file. The
    /// state must name that jail and only paths it can own (it drives removals).
    pub fn load(jail_dir: &Path, id: &str) -> Result<Option<JailState>, StateError> {
        Self::load_from(jail_dir, jail_dir, id)
    }

    /// As [`Journal::load`], from the journal in `dir` of the jail whose directory is (or is
    /// to be) `jail_dir` (a claim's journal names the directory it becomes).
    pub fn load_from(
        dir: &Path,
        jail_dir: &Path,
        id: &str,
    ) -> Result<Option<JailState>, StateError> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let state: JailState = serde_json::from_str(&text).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
        state
            .check(jail_dir, id)
            .map_err(|what| StateError::Foreign { path, what })?;
        Ok(Some(state))
    }
}

fn clean(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

impl JailState {
    /// The state names jail `id` in `jail_dir`, and every path in it is one the jail could
    /// have created: entries it made lie in its root, its cgroup directories end with the
    /// id, created parents are ancestors, a created network namespace is `/run/netns/<id>`.
    fn check(&self, jail_dir: &Path, id: &str) -> Result<(), String> {
        if self.id != id {
            return Err(format!("id {:?}", self.id));
        }
        if self.jail_dir != jail_dir || Some(self.exec_dir.as_path()) != jail_dir.parent() {
            return Err(format!("directory {}", self.jail_dir.display()));
        }
        let root = jail_dir.join("root");
        if let Some(run) = &self.run_tmpfs {
            if *run != root.join("run") {
                return Err(format!("/run mount {}", run.display()));
            }
        }
        if let Some(m) = self
            .made
            .iter()
            .find(|m| !clean(m) || !m.starts_with(&root))
        {
            return Err(format!("entry {}", m.display()));
        }
        for c in &self.cgroups {
            let ok = clean(&c.dir)
                && clean(&c.origin)
                && c.dir.file_name().is_some_and(|n| n == id)
                && c.created
                    .iter()
                    .all(|p| clean(p) && p.parent().is_some() && c.dir.starts_with(p));
            if !ok {
                return Err(format!("cgroup {}", c.dir.display()));
            }
        }
        if let Some(n) = &self.netns {
            let own = Path::new("/run/netns").join(id);
            let tap_ok = n
                .taps
                .iter()
                .all(|t| !t.is_empty() && t.len() <= 15 && !t.contains('/'));
            let own_table =
                |t: &Option<String>| t.as_ref().is_none_or(|t| *t == format!("kiln-{id}"));
            let table_ok = own_table(&n.table) && own_table(&n.tap_table);
            if (n.created && n.path != own) || !clean(&n.path) || !tap_ok || !table_ok {
                return Err(format!("network namespace {}", n.path.display()));
            }
        }
        Ok(())
    }
}

/// Start time (clock ticks since boot) of a running, non-zombie process.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; fields after the
    // last ')' start with field 3 (state); starttime is field 22.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_parsing() {
        let stat = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 10";
        assert_eq!(parse_start_time(stat), Some(12345));
        let zombie = "42 (x) Z 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 10";
        assert_eq!(parse_start_time(zombie), None);
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_process_is_alive() {
        let me = ProcessRecord::of("test", std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let other = ProcessRecord {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
    }

    /// A journal for jail `a` in `dir`.
    fn new_journal(dir: &Path) -> Journal {
        Journal::create(JailState {
            id: "a".into(),
            jail_dir: dir.to_path_buf(),
            exec_dir: dir.parent().unwrap().to_path_buf(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn journal_round_trip() {
        let scratch = kiln_tests::ScratchDir::new("kiln-state");
        let dir = scratch.path().to_path_buf();
        let mut j = new_journal(&dir);
        j.record(|s| s.exec_dir_created = true).unwrap();
        j.record(|s| s.run_tmpfs = Some(dir.join("root/run")))
            .unwrap();
        let back = Journal::load(&dir, "a").unwrap().unwrap();
        assert_eq!(back, j.state);
        // A mount anywhere else is refused (cleanup unmounts it).
        j.record(|s| s.run_tmpfs = Some(PathBuf::from("/proc")))
            .unwrap();
        let e = Journal::load(&dir, "a").unwrap_err().to_string();
        assert!(e.contains("/run mount /proc"), "{e}");
        j.record(|s| s.run_tmpfs = None).unwrap();
        // A state naming another jail, or paths it cannot own, is refused.
        assert!(Journal::load(&dir, "b").is_err());
        j.record(|s| {
            s.cgroups.push(CgroupRecord {
                dir: PathBuf::from("/etc"),
                origin: PathBuf::from("/"),
                created: vec![PathBuf::from("/etc")],
                done: true,
            })
        })
        .unwrap();
        let e = Journal::load(&dir, "a").unwrap_err().to_string();
        assert!(e.contains("cgroup /etc"), "{e}");
        j.record(|s| {
            s.cgroups.clear();
            s.netns = Some(NetnsRecord {
                path: PathBuf::from("/run/netns/other"),
                created: true,
                ..Default::default()
            })
        })
        .unwrap();
        assert!(Journal::load(&dir, "a").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(Journal::load(&dir, "a").unwrap(), None);
    }

    #[test]
    fn entries_made_in_an_adopted_directory_stay_in_its_root() {
        let scratch = kiln_tests::ScratchDir::new("kiln-state-made");
        let dir = scratch.path().to_path_buf();
        let mut j = Journal::create(JailState {
            id: "a".into(),
            jail_dir: dir.clone(),
            exec_dir: dir.parent().unwrap().to_path_buf(),
            adopted: true,
            made: vec![dir.join("root/run"), dir.join("root/vmm")],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(Journal::load(&dir, "a").unwrap().unwrap(), j.state);
        for bad in [dir.join("jail.json"), PathBuf::from("/etc/passwd")] {
            j.record(|s| s.made = vec![bad.clone()]).unwrap();
            let e = Journal::load(&dir, "a").unwrap_err().to_string();
            assert!(e.contains(&format!("entry {}", bad.display())), "{e}");
        }
        // A claim's journal names the directory it is to become.
        let claim = dir
            .parent()
            .unwrap()
            .join(format!(".a-{}.jailer", std::process::id()));
        std::fs::create_dir_all(&claim).unwrap();
        j.record(|s| s.made.clear()).unwrap();
        let moved = Journal::create_in(&claim, j.state.clone()).unwrap();
        assert_eq!(
            Journal::load_from(&claim, &dir, "a").unwrap().unwrap(),
            moved.state
        );
        assert!(
            Journal::load(&claim, "a").is_err(),
            "not the claim's own directory"
        );
        std::fs::remove_dir_all(&claim).unwrap();
    }

    #[test]
    fn a_process_is_recorded_once_and_the_last_one_completes_the_journal() {
        let scratch = kiln_tests::ScratchDir::new("kiln-state-proc");
        let dir = scratch.path().to_path_buf();
        let mut j = new_journal(&dir);
        let me = std::process::id() as i32;
        j.record_process("jailer", me, false).unwrap();
        j.record_process("vmm", me, false).unwrap();
        assert_eq!(j.state.processes.len(), 1);
        assert!(!j.state.complete);
        j.record_process("vmm", me, true).unwrap();
        let back = Journal::load(&dir, "a").unwrap().unwrap();
        assert_eq!(back.processes.len(), 1);
        assert!(back.complete);
    }

    #[test]
    fn processes_recorded_together_are_all_journaled_with_the_complete_mark() {
        let scratch = kiln_tests::ScratchDir::new("kiln-state-procs");
        let dir = scratch.path().to_path_buf();
        let mut j = new_journal(&dir);
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let pid = child.id() as i32;
        j.record_processes(&[("init", pid), ("vmm", me)], true)
            .unwrap();
        let back = Journal::load(&dir, "a").unwrap().unwrap();
        let roles: Vec<(&str, i32)> = back
            .processes
            .iter()
            .map(|p| (p.role.as_str(), p.pid))
            .collect();
        assert_eq!(roles, [("init", pid), ("vmm", me)]);
        assert!(back.complete);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_write_leaves_no_temporary_file_and_replaces_a_stale_one() {
        let scratch = kiln_tests::ScratchDir::new("kiln-state-tmp");
        let dir = scratch.path().to_path_buf();
        let mut j = new_journal(&dir);
        j.record(|s| s.run_tmpfs = Some(dir.join("root/run")))
            .unwrap();
        assert!(!dir.join(STATE_TMP).exists());
        // What a jailer killed between its exchange and its unlink leaves.
        std::fs::write(dir.join(STATE_TMP), "stale").unwrap();
        j.record(|s| s.run_tmpfs = None).unwrap();
        assert!(!dir.join(STATE_TMP).exists());
        assert_eq!(Journal::load(&dir, "a").unwrap().unwrap(), j.state);
    }
}
