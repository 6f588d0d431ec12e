//! The instance record `<state>/instances/<id>/` (the host directory, [`super::host_dir`]):
//! whose it is, and the removal of the jail it stands for — so that nothing a worker started
//! is forgotten, whatever killed the worker, the jailer or the VMM, and whenever.
//!
//! - **Owner.** Every worker holds `<state>/workers/<tag>.lock` (`flock`) for its whole life;
//!   `tag` is `<pid>-<8 random hex digits>`, and every instance id ends with it
//!   (`<function>-<n>-<tag>`). A record whose owner's lock can be taken belongs to a worker
//!   that is gone: the kernel drops an `flock` with its process, whatever killed it, and a
//!   successor with the same pid (PID 1 of a container) has another tag. Workers in other
//!   PID namespaces sharing the state directory see each other's locks too.
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
use crate::sync::lock;
use crate::sys::{FileLock, SysError};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The marker of a record whose jail could not be removed when its instance stopped.
const STOPPED: &str = "stopped";
/// How many times one removal runs `jailer cleanup` before it gives up (until the next
/// sweep).
const CLEANUP_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read /dev/urandom for the worker's tag: {0}")]
    Random(std::io::Error),
    #[error(transparent)]
    Lock(#[from] SysError),
    #[error("the worker lock {0} is held by another process")]
    Held(PathBuf),
}

/// This worker, as its instance records name it: held for the worker's life. Dropping it
/// removes the lock file (the worker is gone: its records are anyone's to sweep).
pub struct Owner {
    tag: String,
    path: PathBuf,
    _lock: FileLock,
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Removed while still locked (the lock goes with `_lock`, dropped after this).
        let _ = std::fs::remove_file(&self.path);
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Owner({})", self.tag)
    }
}

fn workers_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("workers")
}

fn lock_path(state_dir: &Path, tag: &str) -> PathBuf {
    workers_dir(state_dir).join(format!("{tag}.lock"))
}

impl Owner {
    /// Takes a fresh tag and its lock in `state_dir`.
    pub fn acquire(state_dir: &Path) -> Result<Owner, OwnerError> {
        let dir = workers_dir(state_dir);
        std::fs::create_dir_all(&dir).map_err(|source| OwnerError::Dir {
            path: dir.clone(),
            source,
        })?;
        let mut random = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .map_err(OwnerError::Random)?;
        let tag = format!("{}-{:08x}", std::process::id(), u32::from_ne_bytes(random));
        let path = lock_path(state_dir, &tag);
        match FileLock::acquire(&path, false)? {
            Some(lock) => Ok(Owner {
                tag,
                path,
                _lock: lock,
            }),
            None => Err(OwnerError::Held(path)),
        }
    }

    /// `<pid>-<8 hex digits>`: the end of every instance id of this worker.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

/// The owner's tag at the end of instance id `id`, if it has one.
pub fn tag_of(id: &str) -> Option<&str> {
    let mut parts = id.rsplitn(3, '-');
    let hex = parts.next()?;
    let pid = parts.next()?;
    parts.next()?;
    let ok = hex.len() == 8
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| &id[id.len() - hex.len() - pid.len() - 1..])
}

/// Whether the worker with `tag` still runs (its lock is held).
fn owner_alive(state_dir: &Path, tag: &str) -> bool {
    let path = lock_path(state_dir, tag);
    if !path.exists() {
        return false;
    }
    // Held by a live worker: `None`; an error (cannot tell): assume alive.
    !matches!(FileLock::acquire(&path, false), Ok(Some(_)))
}

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
        Some(tag) => !owner_alive(&cfg.state_dir, tag),
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
                eprintln!("kiln: removed the instance record {}", record.display());
            }
            Ok(found) => eprintln!(
                "kiln: removed the jail of stale instance {id} ({}) and its record",
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
    remove_dead_owner_locks(cfg);
    left
}

/// At the worker's end: removes its lock file unless a record of its own is left (then the
/// file stays until the worker exits, and the next sweep after that takes the record over).
pub fn release(cfg: &InstanceConfig) {
    let tag = cfg.owner.tag();
    let own_left = std::fs::read_dir(cfg.state_dir.join("instances")).is_ok_and(|r| {
        r.flatten()
            .any(|e| tag_of(&e.file_name().to_string_lossy()) == Some(tag))
    });
    if !own_left {
        let _ = std::fs::remove_file(lock_path(&cfg.state_dir, tag));
    }
}

/// Removes the lock files of gone workers that no record names any more.
fn remove_dead_owner_locks(cfg: &InstanceConfig) {
    let dir = workers_dir(&cfg.state_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let records: Vec<String> = std::fs::read_dir(cfg.state_dir.join("instances"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(tag) = name.strip_suffix(".lock") else {
            continue;
        };
        if tag == cfg.owner.tag() || records.iter().any(|r| tag_of(r) == Some(tag)) {
            continue;
        }
        // Held while it is removed: no worker can have this tag any more.
        if let Ok(Some(_held)) = FileLock::acquire(&e.path(), false) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_tag_ends_every_id() {
        assert_eq!(tag_of("echo-7-1234-0a1b2c3d"), Some("1234-0a1b2c3d"));
        assert_eq!(tag_of("my-fn-7-1-ffffffff"), Some("1-ffffffff"));
        assert_eq!(tag_of("echo-7-1234"), None);
        assert_eq!(tag_of("echo-7-x234-0a1b2c3d"), None);
        assert_eq!(tag_of("echo-7-1234-0a1b2c3"), None);
        assert_eq!(tag_of("1234-0a1b2c3d"), None);
    }
}
