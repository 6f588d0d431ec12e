//! Starting the jailer: its command line (`--cleanup-on-exit --new-pid-ns --new-netns`, a
//! unique `--id` and uid, the host directory's files bound into the jail, the VMM's flags
//! after `--`), and the one long-lived thread every jailer is spawned from.

use super::api::JAIL_API_SOCK;
use super::config::InstanceConfig;
use super::error::InstanceError;
use super::host_dir::{
    JAIL_CONFIG, JAIL_IMAGE, JAIL_INITRD, JAIL_VSOCK_DIR, PRIVATE_IMAGE, PRIVATE_INITRD, PROFILE,
    VM_CONFIG, VSOCK_DIR,
};
use super::jail::Jail;
use super::snapshot::{SnapshotFiles, JAIL_DIR, JAIL_KEY, JAIL_MEM, JAIL_STATE};
use super::uid;
use crate::sync::lock;
use crate::sys;
use std::ffi::OsString;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{mpsc, Mutex, OnceLock};

/// How a jail's VMM is started.
#[derive(Debug, Clone, Copy)]
pub(super) enum Launch<'a> {
    /// Booted from its config file, no API (every instance without snapshot start).
    Boot,
    /// Booted, with its API and the snapshot directory writable: the template.
    Template(&'a SnapshotFiles),
    /// Only its API, the snapshot read-only: restored by the worker.
    Restore(&'a SnapshotFiles),
    /// Only its API and the vsock directory, no function yet: a blank instance, configured
    /// and started through its API once a function is assigned to it (the image is staged
    /// into the jail's root then).
    Blank,
}

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// `<name>-<n>-<worker tag>`, at most 64 characters from [A-Za-z0-9-]: `name` is the
/// function's, or `blank` for a blank instance.
pub(super) fn instance_id(name: &str, n: u64, tag: &str) -> String {
    let suffix = format!("-{n}-{tag}");
    let room = 64usize.saturating_sub(suffix.len());
    let name: String = name
        .chars()
        .take(room)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{name}{suffix}")
}

/// Makes a jail: a new instance id (named after `name`), a uid lease, the host directory
/// (`prepare` makes it, given its path and the uid, and returns the vsock listener), the
/// jailer spawned and watched. From the moment the uid is leased, dropping the returned
/// [`Jail`] (or an error here) removes whatever was made of it.
pub(super) fn make_jail(
    cfg: &Arc<InstanceConfig>,
    name: &str,
    linux: bool,
    launch: Launch<'_>,
    prepare: impl FnOnce(&Path, u32) -> Result<UnixListener, InstanceError>,
) -> Result<(Jail, UnixListener), InstanceError> {
    let n = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
    let id = instance_id(name, n, cfg.owner.tag());
    let (uid, uid_lock) = uid::lease(cfg, n)?;
    let host_dir = cfg.state_dir.join("instances").join(&id);
    let mut jail = Jail::new(id.clone(), cfg.clone(), uid, uid_lock, host_dir.clone());
    let listener = prepare(&host_dir, uid)?;
    let cmd = jailer_command(cfg, &id, uid, &host_dir, linux, launch);
    let child = spawn_from_worker_thread(cmd).map_err(|source| InstanceError::Spawn {
        path: cfg.jailer.clone(),
        source,
    })?;
    jail.attach(child).map_err(InstanceError::Watch)?;
    Ok((jail, listener))
}

/// `HOST:JAIL`, a `--bind-ro`/`--bind-rw` value.
fn bind(host: &Path, jail: &str) -> OsString {
    let mut s = host.as_os_str().to_os_string();
    s.push(":");
    s.push(jail);
    s
}

/// The jailer's command line for instance `id` (uid = gid `uid`) whose files are in
/// `host_dir`; `linux`: the function is a Linux one (the shared kernel, its own initramfs);
/// `launch`: booted, or a snapshot's template or restore (the snapshot's files bound too,
/// the VMM with its API), or blank (only the vsock directory bound, the VMM with its API).
fn jailer_command(
    cfg: &InstanceConfig,
    id: &str,
    uid: u32,
    host_dir: &Path,
    linux: bool,
    launch: Launch<'_>,
) -> Command {
    let mut cmd = Command::new(&cfg.jailer);
    cmd.arg("--id")
        .arg(id)
        .arg("--exec-file")
        .arg(&cfg.vmm)
        .arg("--uid")
        .arg(uid.to_string())
        .arg("--gid")
        .arg(uid.to_string())
        .arg("--chroot-base-dir")
        .arg(&cfg.chroot_base)
        .args(["--new-pid-ns", "--new-netns", "--cleanup-on-exit"])
        .arg("--parent-cgroup-relative")
        .arg("--parent-cgroup")
        .arg(&cfg.parent_cgroup)
        .arg("--profile")
        .arg(host_dir.join(PROFILE));
    if !matches!(launch, Launch::Blank) {
        cmd.arg("--bind-ro");
        if linux {
            // The kernel is shared (read-only, the same for every tenant); the initramfs
            // with the function's code is the instance's own copy.
            cmd.arg(bind(&cfg.kernel, JAIL_IMAGE))
                .arg("--bind-ro")
                .arg(bind(&host_dir.join(PRIVATE_INITRD), JAIL_INITRD));
        } else {
            cmd.arg(bind(&host_dir.join(PRIVATE_IMAGE), JAIL_IMAGE));
        }
        cmd.arg("--bind-ro")
            .arg(bind(&host_dir.join(VM_CONFIG), JAIL_CONFIG));
    }
    cmd.arg("--bind-rw")
        .arg(bind(&host_dir.join(VSOCK_DIR), JAIL_VSOCK_DIR));
    match launch {
        Launch::Boot => {
            // A booted function image: its virtio set-up writes coalesced (fewer exits).
            cmd.arg("--")
                .args(["--config-file", JAIL_CONFIG, "--no-api", "--coalesce-mmio"]);
        }
        Launch::Template(files) => {
            cmd.arg("--bind-rw")
                .arg(bind(&files.files, JAIL_DIR))
                .arg("--bind-ro")
                .arg(bind(&files.key, JAIL_KEY))
                .arg("--")
                .args(["--config-file", JAIL_CONFIG, "--api-sock", JAIL_API_SOCK])
                .args(["--snapshot-key-file", JAIL_KEY]);
        }
        Launch::Restore(files) => {
            cmd.arg("--bind-ro")
                .arg(bind(&files.state, JAIL_STATE))
                .arg("--bind-ro")
                .arg(bind(&files.mem, JAIL_MEM))
                .arg("--bind-ro")
                .arg(bind(&files.key, JAIL_KEY))
                .arg("--")
                .args(["--api-sock", JAIL_API_SOCK, "--snapshot-key-file", JAIL_KEY]);
        }
        Launch::Blank => {
            // The KVM VM and its memory made as soon as `machine-config` is set; the
            // function image it boots later gets its virtio set-up writes coalesced.
            cmd.arg("--").args([
                "--api-sock",
                JAIL_API_SOCK,
                "--prepare-vm",
                "--coalesce-mmio",
            ]);
        }
    }
    cmd.arg("--boot-timer");
    if cfg.strict_io {
        cmd.arg("--strict-io");
    }
    cmd.args(&cfg.vmm_args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C reaches the worker only, which
        // then stops every instance in order.
        .process_group(0);
    let parent = sys::getpid();
    // SAFETY: the closure only makes async-signal-safe calls (see child_pre_exec) and
    // touches no memory shared with other threads.
    unsafe {
        cmd.pre_exec(move || sys::child_pre_exec(parent));
    }
    cmd
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Every jailer is spawned by one long-lived thread: the jailer gets SIGTERM when the thread
/// that forked it dies (PR_SET_PDEATHSIG), which then means "when the worker dies".
fn spawn_from_worker_thread(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let spawned = std::thread::Builder::new()
            .name("kiln-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            eprintln!("kiln: cannot start the spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    lock(tx)
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::tag_of;

    #[test]
    fn instance_ids_fit_the_jailer_and_name_their_worker() {
        let id = instance_id("echo", 7, "123-0a1b2c3d");
        assert_eq!(id, "echo-7-123-0a1b2c3d");
        assert_eq!(tag_of(&id), Some("123-0a1b2c3d"));
        let long = instance_id(&"f_".repeat(40), u64::MAX, "4194304-ffffffff");
        assert!(long.len() <= 64, "{long}");
        assert!(long.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_eq!(tag_of(&long), Some("4194304-ffffffff"));
    }
}
