//! Starting the jailer: its command line (`--cleanup-on-exit --new-pid-ns --new-netns`, a
//! unique `--id` and uid, the host directory's files bound into the jail, the VMM's flags
//! after `--`), and the one long-lived thread every jailer is spawned from.

use super::config::InstanceConfig;
use super::host_dir::{
    JAIL_CONFIG, JAIL_IMAGE, JAIL_INITRD, JAIL_VSOCK_DIR, PRIVATE_IMAGE, PRIVATE_INITRD, PROFILE,
    VM_CONFIG, VSOCK_DIR,
};
use super::snapshot::{Launch, JAIL_API_SOCK, JAIL_DIR, JAIL_KEY, JAIL_MEM, JAIL_STATE};
use crate::sync::lock;
use crate::sys;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};

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
/// the VMM with its API).
pub(super) fn jailer_command(
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
        .arg(host_dir.join(PROFILE))
        .arg("--bind-ro");
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
        .arg(bind(&host_dir.join(VM_CONFIG), JAIL_CONFIG))
        .arg("--bind-rw")
        .arg(bind(&host_dir.join(VSOCK_DIR), JAIL_VSOCK_DIR));
    match launch {
        Launch::Boot => {
            cmd.arg("--")
                .args(["--config-file", JAIL_CONFIG, "--no-api"]);
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
pub(super) fn spawn_from_worker_thread(cmd: Command) -> std::io::Result<Child> {
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
