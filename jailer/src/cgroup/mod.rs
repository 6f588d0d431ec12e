//! The jail's cgroups, written straight to cgroupfs (cgroups-rs would bring ~180
//! crates of async and D-Bus code into the jailer).
//!
//! The host may have cgroup v1 hierarchies, a v2 hierarchy, or both ("hybrid": v1
//! controllers plus a cgroup2 mount holding the rest). [`plan`] decides, per controller,
//! which hierarchy its limits go to and which cgroup directories the jail gets:
//! `<mount>/[<jailer's own cgroup>/]<parent-cgroup>/<id>`. [`Plan::apply`] creates them,
//! writes every limit, then moves the jailer into them — all before any fork, so every
//! process of the jail is in its cgroups before it touches guest memory.
//!
//! All paths go through a [`Host`] whose root is `/` on a real host and a temporary
//! directory in unit tests, where a fake cgroupfs tree stands in for the kernel (the only way
//! to test v2 on a v1 host).

mod detect;
mod location;
mod settings;
mod v1;
mod v2;

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use detect::detect;
pub use location::Location;
use settings::{huge_page_sizes, typed};

use crate::args::{CgroupConfig, CgroupVersion};
use crate::clock::Clock;
#[cfg(test)]
use crate::state::Journal;
use crate::state::{CgroupRecord, StateError};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {source}")]
    HostFile { path: PathBuf, source: io::Error },
    #[error("the jailer's own cgroup {path:?} in hierarchy {hierarchy} is outside the mounted hierarchy")]
    OwnCgroup { hierarchy: String, path: String },
    #[error("--cgroup-version {version}: no such hierarchy is mounted (see /proc/self/mountinfo)")]
    NoHierarchy { version: &'static str },
    #[error(
        "{origin}: controller {controller:?} is not available in cgroup {version} on this host"
    )]
    ControllerUnavailable {
        origin: String,
        controller: String,
        version: &'static str,
    },
    #[error("creating cgroup {path}: {source}")]
    Mkdir { path: PathBuf, source: io::Error },
    #[error("{origin}: writing {value:?} to {path}: {source}")]
    Write {
        origin: String,
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: empty, and so is every parent up to the hierarchy root")]
    Inherit { path: PathBuf },
    #[error("moving pid {pid} into {path}: {source}")]
    Attach {
        path: PathBuf,
        pid: u32,
        source: io::Error,
    },
    #[error("enabling controller {controller} in {path}: {source} (a v2 cgroup that holds processes cannot delegate domain controllers; use a --parent-cgroup without processes)")]
    Delegate {
        path: PathBuf,
        controller: String,
        source: io::Error,
    },
    #[error("removing cgroup {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("processes {pids:?} are still in cgroup {path}")]
    Busy { path: PathBuf, pids: Vec<u32> },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Where cgroupfs is: the real host, or a fake tree for tests.
#[derive(Debug, Clone)]
pub struct Host {
    /// Prefix of every absolute path (`/` on a real host).
    pub root: PathBuf,
    /// Text of /proc/self/mountinfo.
    pub mountinfo: String,
    /// Text of /proc/self/cgroup.
    pub self_cgroup: String,
    /// A fake tree: control files are created on write instead of having to exist.
    pub fake: bool,
}

impl Host {
    pub fn real() -> Result<Self, CgroupError> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|source| CgroupError::HostFile {
                path: PathBuf::from(p),
                source,
            })
        };
        Ok(Host {
            root: PathBuf::from("/"),
            mountinfo: read("/proc/self/mountinfo")?,
            self_cgroup: read("/proc/self/cgroup")?,
            fake: false,
        })
    }

    /// An absolute host path under this host's root.
    pub fn at(&self, abs: &Path) -> PathBuf {
        self.root.join(abs.strip_prefix("/").unwrap_or(abs))
    }
}

/// One cgroup directory of the jail, in one hierarchy.
pub trait Cgroup: std::fmt::Debug {
    /// Where it is.
    fn location(&self) -> &Location;
    /// The jail's cgroup directory.
    fn dir(&self) -> &Path {
        self.location().dir()
    }
    /// The jailer's own cgroup directory in this hierarchy.
    fn origin(&self) -> &Path {
        self.location().origin()
    }
    /// A fake tree (unit tests).
    fn fake(&self) -> bool {
        self.location().fake()
    }
    /// Creates the directory and missing parents, readying each for the controllers in
    /// `controllers`; returns the directories created, top-down.
    fn create(&self, controllers: &BTreeSet<String>) -> Result<Vec<PathBuf>, CgroupError>;
    /// Writes one control file of the jail's cgroup.
    fn write(&self, origin: &str, file: &str, value: &str) -> Result<(), CgroupError> {
        write_file(self.dir(), file, value, origin, self.fake())
    }
    /// The file that moves the calling process in (see [`attach_self`]).
    fn attach_file(&self) -> &'static str;
    /// The jail's first process is born in it rather than the jailer moving in (v2).
    fn joined_at_fork(&self) -> bool {
        false
    }
    /// Moves the calling thread (v1: `tasks`) into the jail's cgroup: the main thread, which
    /// forks every process of the jail.
    fn attach_self(&self) -> Result<(), CgroupError> {
        let path = self.dir().join(self.attach_file());
        attach(path, "0", std::process::id(), self.fake())
    }
}

/// One control-file write of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Index into [`Plan::groups`].
    pub group: usize,
    pub file: String,
    pub value: String,
    /// The flag or profile field it came from, for errors.
    pub origin: String,
    /// Skip silently when the file does not exist (`memory.swap.max` without swap
    /// accounting).
    pub optional: bool,
}

/// The step [`Plan::apply`]'s parts belong to in `--timing`.
const STEP: &str = "3 cgroups";

/// What [`Plan::apply`] will do.
#[derive(Debug)]
pub struct Plan {
    pub groups: Vec<Box<dyn Cgroup>>,
    pub settings: Vec<Setting>,
    /// Controllers each group needs (v2: delegated through `cgroup.subtree_control`).
    pub controllers: Vec<BTreeSet<String>>,
}

/// Decides the jail's cgroup directories and the writes to make in them.
pub fn plan(host: &Host, config: &CgroupConfig, id: &str) -> Result<Plan, CgroupError> {
    let layout = detect(host)?;
    let wanted = typed(config, &huge_page_sizes(host));
    let use_v1 = match config.version {
        CgroupVersion::V1 => {
            if layout.v1.is_empty() {
                return Err(CgroupError::NoHierarchy { version: "1" });
            }
            true
        }
        CgroupVersion::V2 => false,
        CgroupVersion::Auto => !layout.v1.is_empty(),
    };
    if !use_v1 && layout.v2.is_none() {
        return Err(CgroupError::NoHierarchy {
            version: if config.version == CgroupVersion::V2 {
                "2"
            } else {
                "auto"
            },
        });
    }
    let allow_v2 = config.version != CgroupVersion::V1;
    let rel = |own: &Path| -> PathBuf {
        let base = if config.relative {
            own.to_path_buf()
        } else {
            PathBuf::new()
        };
        base.join(&config.parent).join(id)
    };

    let mut plan = Plan {
        groups: Vec::new(),
        settings: Vec::new(),
        controllers: Vec::new(),
    };
    // v1 groups are keyed by mount point (cpu and cpuacct may share one).
    let mut v1_index: Vec<(PathBuf, usize)> = Vec::new();
    let mut v2_index: Option<usize> = None;
    let mut v1_group = |plan: &mut Plan, controller: &str| -> Option<usize> {
        let h = layout.v1.get(controller)?;
        if let Some((_, i)) = v1_index.iter().find(|(m, _)| *m == h.mount) {
            return Some(*i);
        }
        let has_cpuset = layout.v1.get("cpuset").is_some_and(|c| c.mount == h.mount);
        let at = Location::new(
            h.mount.clone(),
            h.mount.join(&h.own),
            rel(&h.own),
            host.fake,
        );
        plan.groups
            .push(Box::new(v1::V1Cgroup::new(at, has_cpuset)));
        plan.controllers.push(BTreeSet::new());
        let i = plan.groups.len() - 1;
        v1_index.push((h.mount.clone(), i));
        Some(i)
    };
    let mut v2_group = |plan: &mut Plan| -> Option<usize> {
        if let Some(i) = v2_index {
            return Some(i);
        }
        let h = layout.v2.as_ref()?;
        let at = Location::new(
            h.mount.clone(),
            h.mount.join(&h.own),
            rel(&h.own),
            host.fake,
        );
        plan.groups.push(Box::new(v2::V2Cgroup::new(at)));
        plan.controllers.push(BTreeSet::new());
        let i = plan.groups.len() - 1;
        v2_index = Some(i);
        Some(i)
    };

    for w in wanted {
        let routed = if use_v1 {
            match v1_group(&mut plan, &w.controller) {
                Some(i) => Some((i, true)),
                None if allow_v2 && layout.v2_controllers.contains(&w.controller) => {
                    v2_group(&mut plan).map(|i| (i, false))
                }
                None => None,
            }
        } else if layout.v2_controllers.contains(&w.controller) {
            v2_group(&mut plan).map(|i| (i, false))
        } else {
            None
        };
        let Some((group, is_v1)) = routed else {
            if !w.required {
                continue;
            }
            return Err(CgroupError::ControllerUnavailable {
                origin: w.origin,
                controller: w.controller,
                version: if use_v1 { "v1" } else { "v2" },
            });
        };
        if let Some(set) = plan.controllers.get_mut(group) {
            set.insert(w.controller.clone());
        }
        for (file, value, optional) in if is_v1 { w.v1 } else { w.v2 } {
            plan.settings.push(Setting {
                group,
                file,
                value,
                origin: w.origin.clone(),
                optional,
            });
        }
    }
    // Always give the jail a cgroup, even without limits: it is how cleanup finds and
    // kills every process of the jail. The pids hierarchy on v1, the v2 group otherwise.
    if use_v1 {
        if layout.v1.contains_key("pids") {
            v1_group(&mut plan, "pids");
        } else if let Some((c, _)) = layout.v1.iter().next() {
            let c = c.clone();
            v1_group(&mut plan, &c);
        }
    } else {
        v2_group(&mut plan);
    }
    Ok(plan)
}

/// The cgroup the jail's first process is born in (`clone3(CLONE_INTO_CGROUP)`): its
/// directory, and a descriptor of it for clone3.
#[derive(Debug)]
pub struct ForkInto {
    pub dir: PathBuf,
    pub fd: OwnedFd,
}

impl ForkInto {
    /// The calling process joins it itself (when the jailer becomes the VMM: no fork).
    pub fn join_self(&self) -> Result<(), CgroupError> {
        attach_self(&self.dir)
    }
}

impl Plan {
    /// Creates the groups, writes every setting, then moves this thread into every group
    /// but the one the jail's first process is born in, which it returns: [`Plan::intent`]
    /// journaled, [`Plan::create`], the directories made journaled ([`mark_done`]),
    /// [`Plan::configure`]. The tests' composition of the parts: the jailer journals the
    /// intent with its other intents, and the groups made with its next write (`main.rs`).
    #[cfg(test)]
    pub fn apply(
        &self,
        journal: &mut Journal,
        clock: &mut Clock,
    ) -> Result<Option<ForkInto>, CgroupError> {
        let intent = self.intent()?;
        let first = journal.state.cgroups.len();
        journal.record(|s| s.cgroups.extend(intent))?;
        clock.part(STEP, "journal");
        let made = self.create(clock)?;
        journal.record(|s| mark_done(s.cgroups.get_mut(first..).unwrap_or_default(), made))?;
        clock.part(STEP, "journal");
        self.configure(clock)
    }

    /// Intent first: every group's directory and the levels missing now, to be journaled
    /// before any is made (the jail's own must not exist: one that does is someone else's,
    /// refused here, never journaled, never removed). Removing a level that was missing
    /// here but made by someone else since only happens once it is empty.
    pub fn intent(&self) -> Result<Vec<CgroupRecord>, CgroupError> {
        let mut intent = Vec::new();
        for group in &self.groups {
            if std::fs::symlink_metadata(group.dir()).is_ok() {
                return Err(CgroupError::Mkdir {
                    path: group.dir().to_path_buf(),
                    source: io::Error::from(io::ErrorKind::AlreadyExists),
                });
            }
            intent.push(CgroupRecord {
                dir: group.dir().to_path_buf(),
                origin: group.origin().to_path_buf(),
                created: group.location().missing(),
                done: false,
            });
        }
        Ok(intent)
    }

    /// Creates every group (its intent journaled); returns, per group, the directories this
    /// call made, top-down (for [`mark_done`]). Each is timed with `--timing`
    /// (`3 cgroups › mkdir HIERARCHY`).
    pub fn create(&self, clock: &mut Clock) -> Result<Vec<Vec<PathBuf>>, CgroupError> {
        let mut made = Vec::new();
        for (group, controllers) in self.groups.iter().zip(&self.controllers) {
            made.push(group.create(controllers)?);
            clock.part(STEP, &format!("mkdir {}", group.location().hierarchy()));
        }
        Ok(made)
    }

    /// Writes every setting, then moves the calling thread into every group but the one the
    /// jail's first process is born in, which it returns. Each part is timed with
    /// `--timing` (`3 cgroups › write FILE`, `› join HIERARCHY`).
    pub fn configure(&self, clock: &mut Clock) -> Result<Option<ForkInto>, CgroupError> {
        for s in &self.settings {
            let Some(group) = self.groups.get(s.group) else {
                continue;
            };
            if s.optional && !group.fake() && !group.dir().join(&s.file).exists() {
                continue;
            }
            group.write(&s.origin, &s.file, &s.value)?;
            clock.part(STEP, &format!("write {}", s.file));
        }
        let mut fork_into = None;
        for group in &self.groups {
            if !group.joined_at_fork() {
                group.attach_self()?;
                clock.part(STEP, &format!("join {}", group.location().hierarchy()));
                continue;
            }
            let dir = group.dir().to_path_buf();
            let fd = std::fs::File::options()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(&dir)
                .map_err(|source| CgroupError::Read {
                    path: dir.clone(),
                    source,
                })?;
            fork_into = Some(ForkInto { dir, fd: fd.into() });
        }
        Ok(fork_into)
    }
}

/// The groups' records once [`Plan::create`] made them: `created` says exactly which
/// directories this jail made.
pub fn mark_done(records: &mut [CgroupRecord], made: Vec<Vec<PathBuf>>) {
    for (record, created) in records.iter_mut().zip(made) {
        record.created = created;
        record.done = true;
    }
}

// ---------------------------------------------------------------------------------------
// File helpers shared by v1 and v2, and the record-based operations used by cleanup.

pub(crate) fn write_file(
    dir: &Path,
    file: &str,
    value: &str,
    origin: &str,
    fake: bool,
) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(fake)
        .truncate(fake)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    result.map_err(|source| CgroupError::Write {
        origin: origin.to_owned(),
        path,
        value: value.to_owned(),
        source,
    })
}

/// Removes a cgroup directory made by this run (a fake tree's directories hold files).
pub(crate) fn rmdir(dir: &Path, fake: bool) {
    let _ = if fake {
        std::fs::remove_dir_all(dir)
    } else {
        std::fs::remove_dir(dir)
    };
}

pub(crate) fn read_file(path: &Path) -> Result<String, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn attach(path: PathBuf, value: &str, pid: u32, fake: bool) -> Result<(), CgroupError> {
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(fake)
        .append(fake)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{value}\n").as_bytes()));
    result.map_err(|source| CgroupError::Attach { path, pid, source })
}

/// Moves the calling process into `dir`. On v1, writing "0" to `tasks` moves the calling
/// thread without the global thread-group lock a `cgroup.procs` write takes (an RCU grace
/// period: ~0.3 to 5 ms here): the jailer's main thread, which forks every process of the
/// jail (the host side's other threads, `main.rs`, have ended before any fork). v2 has no
/// `tasks`; there "0" goes to `cgroup.procs`.
fn attach_self(dir: &Path) -> Result<(), CgroupError> {
    let tasks = dir.join("tasks");
    let file = if tasks.exists() {
        tasks
    } else {
        dir.join("cgroup.procs")
    };
    attach(file, "0", std::process::id(), false)
}

/// Processes in a cgroup (as seen from this process's PID namespace); a cgroup that is gone
/// holds none.
pub fn procs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::Read { path, source }),
    }
}

/// Moves `pid` back to the jailer's original cgroup (so that the jail's can be removed).
/// A process that is already gone is not an error.
pub fn evacuate(record: &CgroupRecord, pid: u32) -> Result<(), CgroupError> {
    let result = if pid == std::process::id() {
        attach_self(&record.origin)
    } else {
        attach(
            record.origin.join("cgroup.procs"),
            &pid.to_string(),
            pid,
            false,
        )
    };
    match result {
        Err(CgroupError::Attach { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
            Ok(())
        }
        other => other,
    }
}

/// Removes the jail's cgroup directory, then the parents it created when they are empty.
/// Idempotent: what is already gone is skipped. A group that holds no process but is still
/// busy keeps tasks that have exited and are not reaped yet (a cgroup v2 group stays busy
/// until its dead tasks are released): retried until `deadline`.
pub fn remove(record: &CgroupRecord, deadline: std::time::Instant) -> Result<(), CgroupError> {
    loop {
        match std::fs::remove_dir(&record.dir) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(source) => {
                let pids = procs(&record.dir).unwrap_or_default();
                if !pids.is_empty() {
                    return Err(CgroupError::Busy {
                        path: record.dir.clone(),
                        pids,
                    });
                }
                let busy = source.raw_os_error() == Some(libc::EBUSY);
                if !busy || std::time::Instant::now() >= deadline {
                    return Err(CgroupError::Remove {
                        path: record.dir.clone(),
                        source,
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    remove_parents(record);
    Ok(())
}

/// Removes the parent levels of the jail's cgroup, bottom-up, that this jail made or that
/// carry [`location::MADE_BY_A_JAILER`] (made by another jail, which may have ended while
/// this one still used them), as long as each is empty: shared with other jails, a level
/// only goes with the last of them. It stops at the first level that stays, and never
/// touches the jailer's own cgroup or its ancestors.
fn remove_parents(record: &CgroupRecord) {
    let mut level = record.dir.parent();
    while let Some(dir) = level {
        let ours = record.created.iter().any(|c| c == dir) || location::made_by_a_jailer(dir);
        if !ours || record.origin.starts_with(dir) {
            return;
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => return,
        }
        level = dir.parent();
    }
}

#[cfg(test)]
mod tests;
