//! Restore into a fresh jail: the tenant case. The counting tiny guest runs in jail A (the
//! real jailer with the default tenant profile, its own PID and network namespaces, a tap,
//! a snapshot key bind-mounted read-only, a writable directory for the snapshot); it is
//! paused and snapshotted (full, then a diff into the same memory file), all authenticated.
//! Each snapshot is then staged read-only into a new jail with its own id, uid, cgroups,
//! network namespace and tap, where a new VMM loads it through its API
//! (`network_overrides` points the interface at the new tap) and resumes it: the full one
//! with the `File` backend in jail B, the diff with the `Uffd` backend in jail C (the
//! example handler on the host, its socket in C's `/run`, the jail with `--userfaultfd`).
//! Both go on counting from where A stopped. A's tenant profile lets its VMM create the
//! snapshot's files in its writable directory (Landlock `rw`); a Uffd load in a jail
//! without `--userfaultfd` is refused naming the flag.
//!
//! Needs root, /dev/kvm, and the `jailer`, `vmm` and `kiln-uffd-handler` binaries.

mod api_common;
mod snapshot_common;

use api_common::read_response;
use kiln_tests::jail::Jail;
use kiln_tests::process::{spawn, stderr_reader};
use kiln_tests::security::tenant::default_profile_path;
use kiln_tests::{require_bin, require_kvm, tiny, KillOnDrop, ScratchDir};
use snapshot_common::{assert_continues, count_args, count_lines, create_body, load_body};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// A jailed VMM: its jailer process, its guest's output, its API socket on the host.
struct Jailed {
    jail: Jail,
    child: KillOnDrop,
    out: Arc<Mutex<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

fn tap(tag: &str) -> String {
    format!("ks{tag}{}", std::process::id() % 100_000)
}

impl Jailed {
    /// Starts `vmm` in `jail` under the tenant `profile` with the jailer `flags` (besides
    /// the common ones) and the VMM `args`.
    fn start(jail: Jail, tap: &str, profile: &Path, flags: &[String], args: &[&str]) -> Jailed {
        let mut all = vec![
            "--new-pid-ns".to_string(),
            "--cleanup-on-exit".into(),
            "--new-netns".into(),
            "--tap".into(),
            tap.into(),
            "--profile".into(),
            profile.display().to_string(),
        ];
        all.extend_from_slice(flags);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut child = spawn(
            jail.command_for(&require_bin("vmm"), &all, args)
                .stdin(Stdio::null()),
        );
        let mut stdout = child.stdout.take().expect("stdout");
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut b) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&b[..n]);
            }
        });
        let stderr = Some(stderr_reader(&mut child));
        let mut j = Jailed {
            jail,
            child: KillOnDrop::new(child),
            out,
            stderr,
        };
        let t = Instant::now();
        while UnixStream::connect(j.sock()).is_err() {
            if let Ok(Some(s)) = j.child.try_wait() {
                panic!(
                    "the jailed VMM ended ({s}) before its API answered\n{}",
                    j.stop()
                );
            }
            assert!(t.elapsed() < WAIT, "the jailed API never came up");
            std::thread::sleep(Duration::from_millis(5));
        }
        j
    }

    fn root(&self) -> PathBuf {
        self.jail.base.join("vmm").join(&self.jail.id).join("root")
    }

    fn sock(&self) -> PathBuf {
        self.root().join("run/api.sock")
    }

    fn serial(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = UnixStream::connect(self.sock()).expect("connect to the jailed API");
        s.set_read_timeout(Some(WAIT)).unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let (status, _, answer) = read_response(&mut s).expect("an answer");
        (status, answer)
    }

    fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, answer) = self.call(method, path, body);
        assert_eq!(status, 204, "{method} {path} {body}: {answer}");
    }

    fn wait_counts(&self, n: usize) {
        let t = Instant::now();
        while count_lines(&self.serial()) < n {
            assert!(
                t.elapsed() < WAIT,
                "{n} count lines not reached:\n{}",
                self.serial()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM to the jailer's VMM (through the jailer) and its stderr.
    fn stop(mut self) -> String {
        // SAFETY: kill with our own child's pid and SIGTERM only sends a signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && t.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

#[test]
fn a_snapshot_restores_into_fresh_jails_and_counts_on() {
    require_kvm();
    let a_jail = Jail::new("snja");
    // The snapshot's files live outside every jail's base directory, which is removed
    // with its jail.
    let scratch = ScratchDir::new("kiln-snap-jail");
    let base = scratch.path().to_path_buf();
    // What A's jail gets: the guest, its config, the key, a directory for the snapshot.
    let key = base.join("key");
    std::fs::write(&key, [42u8; 32]).unwrap();
    let snapdir = base.join("snap");
    std::fs::create_dir(&snapdir).unwrap();
    chown(&snapdir, a_jail.uid);
    // A writable bind only lets the VMM write files that exist: the tenant profile lets A's
    // create (and truncate) the snapshot's files in it.
    let mut profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(default_profile_path()).unwrap()).unwrap();
    profile["landlock"]["paths"] = serde_json::json!([{"path": "/snap", "access": "rw"}]);
    let a_profile = base.join("profile-a.json");
    std::fs::write(&a_profile, profile.to_string()).unwrap();
    let tap_a = tap("a");
    let config = base.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "/guest.elf", "boot_args": "{}"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64, "track_dirty_pages": true}},
                "network-interfaces": [{{"iface_id": "eth0", "guest_mac": "06:00:00:00:00:01", "host_dev_name": "{tap_a}"}}]}}"#,
            count_args()
        ),
    )
    .unwrap();
    let bind = |host: &Path, jail: &str| {
        vec![
            "--bind-ro".to_string(),
            format!("{}:{jail}", host.display()),
        ]
    };
    let mut flags = bind(&tiny::tiny_guest(), "/guest.elf");
    flags.extend(bind(&config, "/vm.json"));
    flags.extend(bind(&key, "/key"));
    flags.extend([
        "--bind-rw".to_string(),
        format!("{}:/snap", snapdir.display()),
    ]);
    let vmm_args = ["--api-sock", "/run/api.sock", "--snapshot-key-file", "/key"];
    let mut a_args = vmm_args.to_vec();
    a_args.extend(["--config-file", "/vm.json"]);
    let a = Jailed::start(a_jail, &tap_a, &a_profile, &flags, &a_args);
    a.wait_counts(3);
    a.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let before_full = a.serial();
    a.ok(
        "PUT",
        "/snapshot/create",
        &create_body(
            "Full",
            Path::new("/snap/full.snap"),
            Path::new("/snap/vm.mem"),
        ),
    );
    let full_mem = base.join("full.mem");
    std::fs::copy(snapdir.join("vm.mem"), &full_mem).unwrap();
    a.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    a.wait_counts(count_lines(&before_full) + 10);
    a.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let before_diff = a.serial();
    a.ok(
        "PUT",
        "/snapshot/create",
        &create_body(
            "Diff",
            Path::new("/snap/diff.snap"),
            Path::new("/snap/vm.mem"),
        ),
    );
    let a_err = a.stop();
    assert!(
        a_err.contains("snapshot/create: Diff snapshot, authenticated,"),
        "{a_err}"
    );

    // Jail B: the full snapshot, File backend, a new tap.
    let b_jail = Jail::new("snjb");
    let tap_b = tap("b");
    for f in [snapdir.join("full.snap"), full_mem.clone(), key.clone()] {
        chown(&f, b_jail.uid);
    }
    let mut flags = bind(&key, "/key");
    flags.extend(bind(&snapdir.join("full.snap"), "/snapshot/vm.snap"));
    flags.extend(bind(&full_mem, "/snapshot/vm.mem"));
    let b = Jailed::start(b_jail, &tap_b, &default_profile_path(), &flags, &vmm_args);
    // Without --userfaultfd the jail has no userfaultfd: a Uffd load is refused, naming the
    // flag, and the VMM stays usable.
    let (status, answer) = b.call(
        "PUT",
        "/snapshot/load",
        &load_body(
            Path::new("/snapshot/vm.snap"),
            "Uffd",
            Path::new("/run/nobody.sock"),
            &format!(
                r#""network_overrides": [{{"iface_id": "eth0", "host_dev_name": "{tap_b}"}}]"#
            ),
        ),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("cannot create a userfaultfd") && answer.contains("--userfaultfd"),
        "{answer}"
    );
    b.ok(
        "PUT",
        "/snapshot/load",
        &load_body(
            Path::new("/snapshot/vm.snap"),
            "File",
            Path::new("/snapshot/vm.mem"),
            &format!(
                r#""resume_vm": true, "network_overrides": [{{"iface_id": "eth0", "host_dev_name": "{tap_b}"}}]"#
            ),
        ),
    );
    b.wait_counts(3);
    assert_continues(&before_full, &b.serial(), 3);
    let (_, config_b) = b.call("GET", "/vm/config", "");
    assert!(config_b.contains(&tap_b), "{config_b}");
    b.stop();

    // Jail C: the diff, Uffd backend, the handler's socket in C's /run.
    let c_jail = Jail::new("snjc");
    let tap_c = tap("c");
    for f in [snapdir.join("diff.snap"), key.clone()] {
        chown(&f, c_jail.uid);
    }
    let mut flags = bind(&key, "/key");
    flags.extend(bind(&snapdir.join("diff.snap"), "/snapshot/vm.snap"));
    flags.push("--userfaultfd".into());
    let c = Jailed::start(c_jail, &tap_c, &default_profile_path(), &flags, &vmm_args);
    let sock = c.root().join("run/uffd.sock");
    let mut handler = spawn(
        Command::new(require_bin("kiln-uffd-handler"))
            .arg("--socket")
            .arg(&sock)
            .arg("--mem-file")
            .arg(snapdir.join("vm.mem"))
            .stdin(Stdio::null()),
    );
    let mut ready = String::new();
    BufReader::new(handler.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    let handler = KillOnDrop::new(handler);
    chown(&sock, c.jail.uid);
    c.ok(
        "PUT",
        "/snapshot/load",
        &load_body(
            Path::new("/snapshot/vm.snap"),
            "Uffd",
            Path::new("/run/uffd.sock"),
            &format!(
                r#""resume_vm": true, "network_overrides": [{{"iface_id": "eth0", "host_dev_name": "{tap_c}"}}]"#
            ),
        ),
    );
    c.wait_counts(3);
    assert_continues(&before_diff, &c.serial(), 3);
    c.stop();
    drop(handler);
}
