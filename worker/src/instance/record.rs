//! The instance record `<state>/instances/<id>/` (the host directory, [`super::host_dir`]):
//! the removal of the jail it stands for — so that nothing a worker started is forgotten,
//! whatever killed the worker, the jailer or the VMM, and whenever.
//!
//! - **Owner** ([`super::owner`]): the worker whose tag ends the id; gone when its lock can
//!   be taken.
//! - **A jail that would not go.** When stopping an instance cannot remove its jail, its
//!   record stays with a `stopped` marker and the instance's uid stays leased (its lock held
//!   here, [`keep`]) until the jail is gone: no new instance gets that uid meanwhile. The
//!   owner retries; once the owner is gone, any worker does.
//! - **[`sweep`].** At start, every few seconds from the reaper, and at shutdown: records of
//!   gone workers and this worker's `stopped` ones get `jailer cleanup` (which waits for a
//!   jail whose processes are still exiting), retried, and are removed only once their jail
//!   is ([`remove_jail`] checks the jail directory, its claim and removal names, and the
//!   network namespace). The uid of a gone worker's record (the owner of its `vsock/`) is
//!   leased first and held until its jail is gone.

use super::config::InstanceConfig;
use super::owner::{self, tag_of};
use crate::sync::lock;
use crate::sys::FileLock;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The marker of a record whose jail could not be removed when its instance stopped.
const STOPPED: &str = "stopped";
/// The marker of a blank instance's record (no function assigned yet), and the file that
/// names the function an assigned blank instance belongs to.
const BLANK: &str = "blank";
const ASSIGNED: &str = "function";
/// How many times one removal runs `jailer cleanup` before it gives up (until the next
/// sweep).
const CLEANUP_ATTEMPTS: usize = 3;

/// uid locks of stopped instances whose jails are not gone yet, by instance id.
fn held() -> &'static Mutex<HashMap<String, FileLock>> {
    static HELD: OnceLock<Mutex<HashMap<String, FileLock>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Keeps the record `dir` of instance `id` for the sweep (its jail is not gone): marks it
/// stopped and holds its uid lease until then.
pub(super) fn keep(dir: &Path, id: &str, uid_lock: Option<FileLock>) {
    if let Err(e) = std::fs::write(dir.join(STOPPED), b"") {
        eprintln!(
            "kiln: instance {id}: cannot mark {} stopped: {e}",
            dir.display()
        );
    }
    if let Some(l) = uid_lock {
        lock(held()).insert(id.to_string(), l);
    }
}

/// Marks record `dir` as a blank instance's (swept like any other; the marker tells).
pub(super) fn mark_blank(dir: &Path) -> Result<(), super::InstanceError> {
    std::fs::write(dir.join(BLANK), b"").map_err(|source| super::InstanceError::HostDir {
        path: dir.join(BLANK),
        source,
    })
}

/// Marks the record `dir` of a blank instance as `function`'s from now on.
pub(super) fn mark_assigned(dir: &Path, function: &str) -> Result<(), super::InstanceError> {
    let err = |path: PathBuf| move |source| super::InstanceError::HostDir { path, source };
    std::fs::write(dir.join(ASSIGNED), function.as_bytes()).map_err(err(dir.join(ASSIGNED)))?;
    std::fs::remove_file(dir.join(BLANK)).map_err(err(dir.join(BLANK)))
}

/// `<chroot base>/<exec name>/<id>`: the jail of instance `id`.
pub(super) fn jail_dir(cfg: &InstanceConfig, id: &str) -> PathBuf {
    cfg.chroot_base.join(cfg.exec_name()).join(id)
}

/// What of jail `id` exists: its directory, the names the jailer gives it while it is being
/// made or removed, its network namespace. (Its cgroups and mounts go with its journal, which
/// is in the directory until everything else is gone.)
fn jail_leftovers(cfg: &InstanceConfig, id: &str) -> Vec<String> {
    let exec_dir = cfg.chroot_base.join(cfg.exec_name());
    [
        exec_dir.join(id),
        exec_dir.join(format!(".{id}.jailer")),
        exec_dir.join(format!(".{id}.removed")),
        Path::new("/run/netns").join(id),
    ]
    .into_iter()
    .filter(|p| std::fs::symlink_metadata(p).is_ok())
    .map(|p| p.display().to_string())
    .collect()
}

/// Removes jail `id` (`jailer cleanup`, which waits up to `wait` for its processes to exit,
/// retried) unless it is gone. Returns what was there; the error says what is left and why.
pub(super) fn remove_jail(
    cfg: &InstanceConfig,
    id: &str,
    wait: Duration,
) -> Result<Vec<String>, String> {
    let found = jail_leftovers(cfg, id);
    let mut last = String::new();
    for attempt in 0..CLEANUP_ATTEMPTS {
        if jail_leftovers(cfg, id).is_empty() {
            return Ok(found);
        }
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = jailer_cleanup(cfg, id, wait) {
            last = e;
        }
    }
    let left = jail_leftovers(cfg, id);
    if left.is_empty() {
        return Ok(found);
    }
    Err(format!(
        "jail {id} not removed after {CLEANUP_ATTEMPTS} attempts ({last}); still there: {}",
        left.join(", ")
    ))
}

/// `jailer cleanup` for jail `id`.
fn jailer_cleanup(cfg: &InstanceConfig, id: &str, wait: Duration) -> Result<(), String> {
    let out = Command::new(&cfg.jailer)
        .arg("cleanup")
        .arg("--id")
        .arg(id)
        .arg("--exec-file")
        .arg(&cfg.vmm)
        .arg("--chroot-base-dir")
        .arg(&cfg.chroot_base)
        .arg("--wait-ms")
        .arg(wait.as_millis().to_string())
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "jailer cleanup --id {id} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run jailer cleanup: {e}")),
    }
}

/// Whether this worker may sweep record `id` (`stopped`: it has the marker): its own stopped
/// ones, and any of a worker that is gone.
fn sweepable(cfg: &InstanceConfig, id: &str, stopped: bool) -> bool {
    match tag_of(id) {
        Some(tag) if tag == cfg.owner.tag() => stopped,
        Some(tag) => !owner::alive(&cfg.state_dir, tag),
        // An id without a tag (an older worker's, `<function>-<n>-<pid>`): its pid.
        None => id
            .rsplit('-')
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists()),
    }
}

/// Leases the uid of a gone worker's record (the owner of its `vsock/`) until its jail is
/// gone; `None` when it has none or the lease is held elsewhere.
fn lease_uid_of(cfg: &InstanceConfig, record: &Path) -> Option<FileLock> {
    let uid = std::fs::symlink_metadata(record.join("vsock")).ok()?.uid();
    let path = cfg.state_dir.join("uids").join(format!("{uid}.lock"));
    FileLock::acquire(&path, false).ok().flatten()
}

/// Sweeps the instance records this worker may sweep (see the module documentation);
/// `jailer cleanup` waits up to `wait` for a jail's processes. Returns how many records
/// are left for a later sweep.
pub fn sweep(cfg: &InstanceConfig, wait: Duration) -> usize {
    let dir = cfg.state_dir.join("instances");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut left = 0;
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let record = e.path();
        if !sweepable(cfg, &id, record.join(STOPPED).exists()) {
            continue;
        }
        let kind = if record.join(BLANK).exists() {
            "blank "
        } else {
            ""
        };
        let mut lease = lock(held()).remove(&id);
        if lease.is_none() {
            lease = lease_uid_of(cfg, &record);
        }
        let removed = remove_jail(cfg, &id, wait).and_then(|found| {
            kiln_hostfs::remove_tree(&record)
                .map(|()| found)
                .map_err(|e| e.to_string())
        });
        match removed {
            Ok(found) if found.is_empty() => {
                eprintln!(
                    "kiln: removed the {kind}instance record {}",
                    record.display()
                );
            }
            Ok(found) => eprintln!(
                "kiln: removed the jail of stale {kind}instance {id} ({}) and its record",
                found.join(", ")
            ),
            Err(err) => {
                left += 1;
                eprintln!("kiln: stale instance {id}: {err} (retried later)");
                if let Some(l) = lease {
                    lock(held()).insert(id, l);
                }
            }
        }
    }
    owner::remove_dead_locks(&cfg.state_dir, cfg.owner.tag(), &record_ids(cfg));
    left
}

/// The ids of the instance records in the state directory.
fn record_ids(cfg: &InstanceConfig) -> Vec<String> {
    std::fs::read_dir(cfg.state_dir.join("instances"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// At the worker's end: its lock file goes unless a record of its own is left.
pub fn release(cfg: &InstanceConfig) {
    owner::release(&cfg.state_dir, cfg.owner.tag(), &record_ids(cfg));
}
