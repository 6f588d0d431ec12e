//! Snapshot start: a function whose manifest has `"snapshot_start": true` is booted once,
//! snapshotted as soon as its guest said Hello (initialised, waiting for its first event),
//! and every cold instance after that is restored from the snapshot instead of booted.
//!
//! **Where.** `<state>/snapshots/<worker tag>/<function>/<generation>/`, root-only (0700;
//! a worker's are removed by the sweep of any worker on the state directory once it is
//! gone, [`super::owner`]): `key` (32
//! random bytes, made by the worker for this function's build; the snapshot is
//! authenticated with it, docs/api.md "Snapshots") and `files/` (`vm.snap`, `vm.mem`).
//! Never shared across functions: each function (and each build of it) has its own
//! snapshot and its own key, so one function's VMM cannot forge another's snapshot. A new
//! build of the function retires the older generations' directories.
//!
//! **Making it** (once per build, serialized per function): a template instance is started
//! like any other, except that its jail also gets `files/` read-write (owned by its uid) at
//! `/snapshot`, where its tenant profile lets it create and truncate files (Landlock `rw`;
//! a writable bind alone only lets it write files that exist), and the key read-only at
//! `/snapshot.key`, and its VMM serves its API
//! (`--api-sock /run/api.sock --snapshot-key-file /snapshot.key`). Once its guest said Hello
//! the worker pauses it and creates a full snapshot into `/snapshot/`, then stops it; the
//! files become root's, read-only (0444 inside the 0700 directory: only the jails they are
//! bound into can read them).
//!
//! **Restoring.** A cold instance's jail gets the two files and the key read-only; its VMM
//! starts with only its API; the worker loads the snapshot (`File` backend, resumed). The
//! restored vsock device resets the guest's old connection, the guest's runtime connects
//! again to the worker's listener of this new instance and says Hello.

use super::api;
use super::config::InstanceConfig;
use super::error::InstanceError;
use super::jail::{Jail, StopMode};
use super::Instance;
use crate::function::Function;
use crate::sync::lock;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where the snapshot appears inside a jail.
pub(super) const JAIL_DIR: &str = "/snapshot";
pub(super) const JAIL_STATE: &str = "/snapshot/vm.snap";
pub(super) const JAIL_MEM: &str = "/snapshot/vm.mem";
pub(super) const JAIL_KEY: &str = "/snapshot.key";

/// A function build's snapshot: its host paths.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    pub dir: PathBuf,
    pub files: PathBuf,
    pub state: PathBuf,
    pub mem: PathBuf,
    pub key: PathBuf,
}

impl SnapshotFiles {
    fn of(cfg: &InstanceConfig, function: &Function) -> SnapshotFiles {
        let dir = snapshots_of_this_worker(cfg)
            .join(&function.name)
            .join(function.generation.to_string());
        let files = dir.join("files");
        SnapshotFiles {
            state: files.join("vm.snap"),
            mem: files.join("vm.mem"),
            key: dir.join("key"),
            files,
            dir,
        }
    }

    /// Made completely (the marker is written last).
    fn ready(&self) -> bool {
        self.dir.join("ready").is_file()
    }
}

/// `<state>/snapshots/<worker tag>/`: generations count from 1 in each worker process, so
/// each worker keeps its own.
fn snapshots_of_this_worker(cfg: &InstanceConfig) -> PathBuf {
    cfg.state_dir.join("snapshots").join(cfg.owner.tag())
}

/// Removes the snapshots of workers that are gone (their lock is free or removed; a
/// directory named by a bare pid, an older worker's, when that pid is gone).
pub(super) fn sweep_stale(cfg: &InstanceConfig) {
    let Ok(entries) = std::fs::read_dir(cfg.state_dir.join("snapshots")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == cfg.owner.tag() {
            continue;
        }
        let gone = match name.parse::<i32>() {
            Ok(_) => !Path::new("/proc").join(&name).exists(),
            Err(_) => !super::owner::alive(&cfg.state_dir, &name),
        };
        if !gone {
            continue;
        }
        match kiln_hostfs::remove_tree(&e.path()) {
            Ok(()) => eprintln!(
                "kiln: removed the snapshots of worker {name}, which is gone ({})",
                e.path().display()
            ),
            Err(err) => eprintln!("kiln: snapshots of gone worker {name}: {err}"),
        }
    }
}

fn snapshot_err(what: &str, detail: impl std::fmt::Display) -> InstanceError {
    InstanceError::Snapshot(format!("{what}: {detail}"))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> InstanceError + '_ {
    move |e| snapshot_err(&path.display().to_string(), e)
}

/// The lock that serializes making one function's snapshot.
fn function_lock(name: &str) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    let map = LOCKS.get_or_init(Mutex::default);
    lock(map).entry(name.to_string()).or_default().clone()
}

/// The snapshot of `function`'s current build, made now (through a template instance)
/// if there is none yet.
pub(super) fn ensure(
    cfg: &Arc<InstanceConfig>,
    function: &Arc<Function>,
) -> Result<SnapshotFiles, InstanceError> {
    let files = SnapshotFiles::of(cfg, function);
    let guard = function_lock(&function.name);
    let _held = lock(&guard);
    if files.ready() {
        return Ok(files);
    }
    // Older builds' snapshots (and a half-made one of this build) go.
    if let Some(parent) = files.dir.parent() {
        let _ = std::fs::remove_dir_all(parent);
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        private_dir(parent)?;
    }
    std::fs::create_dir(&files.dir).map_err(io_err(&files.dir))?;
    private_dir(&files.dir)?;
    std::fs::create_dir(&files.files).map_err(io_err(&files.files))?;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(io_err(Path::new("/dev/urandom")))?;
    write_new(&files.key, &key, 0o444)?;
    let mut template = Instance::start_template(cfg, function, &files)?;
    let made = create(&mut template.jail, cfg.start_timeout);
    template.jail.stop(StopMode::Kill);
    made?;
    for f in [&files.state, &files.mem] {
        std::os::unix::fs::chown(f, Some(0), Some(0)).map_err(io_err(f))?;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o444)).map_err(io_err(f))?;
    }
    std::os::unix::fs::chown(&files.files, Some(0), Some(0)).map_err(io_err(&files.files))?;
    std::fs::set_permissions(&files.files, std::fs::Permissions::from_mode(0o555))
        .map_err(io_err(&files.files))?;
    write_new(&files.dir.join("ready"), b"", 0o400)?;
    Ok(files)
}

fn private_dir(dir: &Path) -> Result<(), InstanceError> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstanceError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(io_err(path))
}

/// Pauses the template and snapshots it into its `/snapshot` (authenticated).
fn create(jail: &mut Jail, timeout: Duration) -> Result<(), InstanceError> {
    let deadline = Instant::now() + timeout;
    let sock = jail.api_socket();
    api::request(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, deadline)
        .map_err(|e| snapshot_err("create", e))?;
    let body = serde_json::json!({
        "snapshot_type": "Full", "snapshot_path": JAIL_STATE, "mem_file_path": JAIL_MEM,
    });
    api::request(
        &sock,
        "PUT",
        "/snapshot/create",
        &body.to_string(),
        deadline,
    )
    .map_err(|e| snapshot_err("create", e))
}

/// Loads the snapshot into the just-started VMM of `jail` and resumes it.
pub(super) fn restore(
    jail: &mut Jail,
    started: Instant,
    deadline: Instant,
) -> Result<(), InstanceError> {
    match jail.wait_api(started, deadline) {
        Err(api::ApiError::Exited) => return Err(InstanceError::Exited(jail.exit_message())),
        Err(e) => return Err(snapshot_err("restore", e)),
        // The requests below go on connections of their own.
        Ok(_connection) => {}
    }
    let body = serde_json::json!({
        "snapshot_path": JAIL_STATE,
        "mem_backend": {"backend_type": "File", "backend_path": JAIL_MEM},
        "resume_vm": true,
    });
    api::request(
        &jail.api_socket(),
        "PUT",
        "/snapshot/load",
        &body.to_string(),
        deadline,
    )
    .map_err(|e| snapshot_err("restore", e))
}
