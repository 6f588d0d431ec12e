//! A tenant of the security suite: its jails around a workspace binary (a chroot base, a
//! parent cgroup and a uid of its own), the profile and policy they run under, another
//! tenant's files beside them (the decoy), and how many jailed runs may go at a time.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};

use crate::{require_bin, require_root, unique_id};

/// A tenant's jail around `escape-probe`: a chroot base of its own, a parent cgroup under
/// the test's own cgroup, an unprivileged uid/gid. Jail ids are made per run (`id()`), so
/// runs of the same tenant may overlap.
pub struct Tenant {
    pub name: String,
    pub base: PathBuf,
    pub parent_cgroup: String,
    pub uid: u32,
    pub jailer: PathBuf,
    pub exec: PathBuf,
    runs: AtomicU32,
}

impl Tenant {
    /// A tenant running `exec` (a binary of the workspace: `escape-probe`, `vmm`).
    pub fn new(prefix: &str, exec: &str) -> Tenant {
        require_root();
        static NEXT_UID: AtomicU32 = AtomicU32::new(0);
        let name = unique_id(prefix);
        let base = std::env::temp_dir().join(format!("kiln-sec-{name}"));
        std::fs::create_dir_all(&base).expect("create the chroot base");
        let uid =
            52_000 + (std::process::id() % 500) * 20 + NEXT_UID.fetch_add(1, Ordering::Relaxed);
        Tenant {
            parent_cgroup: format!("ks-{name}"),
            name,
            base,
            uid,
            jailer: require_bin("jailer"),
            exec: require_bin(exec),
            runs: AtomicU32::new(0),
        }
    }

    /// The file name of the exec'd binary (the jail's `/<name>`).
    pub fn exec_name(&self) -> String {
        self.exec
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// A fresh jail id for one run.
    pub fn id(&self) -> String {
        format!(
            "{}-r{}",
            self.name,
            self.runs.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// `<base>/<exec-name>/<id>/root` on the host.
    pub fn chroot_dir(&self, id: &str) -> PathBuf {
        self.base.join(self.exec_name()).join(id).join("root")
    }

    /// The jailer with this tenant's identity and cgroup parent, `flags`, `--`, `args`.
    pub fn command(&self, id: &str, flags: &[String], args: &[String]) -> Command {
        let mut cmd = Command::new(&self.jailer);
        cmd.arg("--id")
            .arg(id)
            .arg("--exec-file")
            .arg(&self.exec)
            .args([
                "--uid",
                &self.uid.to_string(),
                "--gid",
                &self.uid.to_string(),
            ])
            .arg("--chroot-base-dir")
            .arg(&self.base)
            .args([
                "--parent-cgroup",
                &self.parent_cgroup,
                "--parent-cgroup-relative",
            ])
            .args(flags)
            .arg("--")
            .args(args);
        cmd
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        // Jails run with --cleanup-on-exit; a run killed at its deadline may leave one.
        if let Ok(entries) = std::fs::read_dir(self.base.join(self.exec_name())) {
            for e in entries.flatten() {
                let _ = Command::new(&self.jailer)
                    .arg("cleanup")
                    .arg("--id")
                    .arg(e.file_name())
                    .arg("--exec-file")
                    .arg(&self.exec)
                    .arg("--chroot-base-dir")
                    .arg(&self.base)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = kiln_hostfs::remove_tree(&self.base);
        // The parent cgroup the runs shared (each jail removes only what it created).
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        for line in own.lines() {
            let mut f = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            for c in controllers.split(',').filter(|c| !c.is_empty()) {
                let dir = Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(path.trim_start_matches('/'))
                    .join(&self.parent_cgroup);
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// The repository's tenant profile, `policies/tenant/default.json` (canonical: the jailer
/// refuses paths with `..`).
pub fn default_profile_path() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("policies")
        .join("tenant")
        .join("default.json");
    path.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A seccomp policy for the jailer that allows everything (`main` with no rule).
pub const ALLOW_ALL_POLICY: &str =
    r#"{"main": {"default_action": "allow", "filter_action": "kill_process", "filter": []}}"#;

/// Another tenant's files on the host, as a neighbour jail has them: `<base>/escape-probe/
/// <name>/root/run/` with a `secret` file and a listening `api.sock`. Its path is what the
/// probe tries to reach by name, its handle what it tries to open by handle, and a
/// descriptor of its `run` directory what a careless host process hands the probe.
pub struct Decoy {
    pub run_dir: PathBuf,
    pub secret: PathBuf,
    pub socket: PathBuf,
    _listener: UnixListener,
}

impl Decoy {
    pub fn new(tenant: &Tenant) -> Decoy {
        let run_dir = tenant
            .base
            .join(tenant.exec_name())
            .join(format!("decoy-{}", tenant.name))
            .join("root")
            .join("run");
        std::fs::create_dir_all(&run_dir).expect("decoy run dir");
        let secret = run_dir.join("secret");
        std::fs::write(&secret, "another tenant's secret\n").expect("decoy secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let socket = run_dir.join("api.sock");
        let listener = UnixListener::bind(&socket).expect("decoy api.sock");
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        Decoy {
            run_dir,
            secret,
            socket,
            _listener: listener,
        }
    }
}

/// At most `n` jailed runs at a time (the hosts have two cores, shared).
pub struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    pub fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            cv: Condvar::new(),
        }
    }

    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            while *free == 0 {
                free = self.cv.wait(free).unwrap_or_else(|p| p.into_inner());
            }
            *free -= 1;
        }
        let out = f();
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cv.notify_one();
        out
    }
}
