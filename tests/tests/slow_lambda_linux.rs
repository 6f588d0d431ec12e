//! Slow tier: Lambda functions (`"runtime"` in kiln.json) through the worker in a full jail
//! (`kiln invoke`, the guest kernel of scripts/assets.sh). On a host with hardware
//! virtualization the Python function (examples/functions/lambda-python, with the root file
//! system its make-rootfs.sh makes) runs in the microVM with awslambdaric inside the guest,
//! and the custom bootstrap (lambda-bootstrap) too. On a kvm_pvm host
//! (shared/notes/host-kvm.md) guest user space cannot run: there the worker must refuse with
//! `host_unsupported`, shown with the small lambda-bootstrap function (the Python function's
//! 75 MB initramfs would only make the emulated kernel slower to the same end); the fast tier
//! runs the same runtimes as host processes and in a chroot of the initramfs
//! (worker/tests/lambda_runtime.rs). The test prints the mode it ran in.

use kiln_tests::assets::require_linux_assets;
use kiln_tests::jail::{own_cgroup_dir, HostSnapshot};
use kiln_tests::{
    is_pvm_host, require_bin, require_kvm, require_root, run_with_timeout, unique_id, ScratchDir,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A copy of examples/functions/lambda-python in `functions/` with a root file system made
/// by its make-rootfs.sh.
fn python_function(functions: &Path) -> PathBuf {
    let src = repo().join("examples/functions/lambda-python");
    let dst = functions.join("lambda-python");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["app.py", "kiln.json", "make-rootfs.sh"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    kiln_tests::require_program("python3", "python3");
    let out = Command::new(dst.join("make-rootfs.sh"))
        .arg(dst.join("rootfs"))
        .env("KILN_REQUIREMENTS", kiln_tests::python::requirements())
        .env(
            "PIP_CACHE_DIR",
            kiln_tests::cache_dir().join("python/pip-cache"),
        )
        .output()
        .expect("run make-rootfs.sh");
    assert!(
        out.status.success(),
        "make-rootfs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dst
}

/// `kiln invoke NAME --json` in a private jail environment; its output.
fn kiln_invoke(functions: &Path, name: &str, event: &str) -> kiln_tests::Finished {
    let assets = require_linux_assets();
    let tag = unique_id("kll");
    let root = PathBuf::from("/tmp").join(format!("kll-{}", std::process::id()));
    let (chroot_base, state_dir) = (root.join("j"), root.join("s"));
    std::fs::create_dir_all(&chroot_base).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    let parent_cgroup = format!("kll-{tag}");
    let uid_base = 47_000 + (std::process::id() % 100) * 20;
    let mut cmd = Command::new(require_bin("kiln"));
    cmd.arg("invoke")
        .arg(name)
        .args(["--event", event, "--json"])
        .arg("--functions-dir")
        .arg(functions)
        .arg("--cache-dir")
        .arg(kiln_tests::cache_dir().join("functions"))
        .arg("--kernel")
        .arg(&assets.vmlinux)
        .arg("--init")
        .arg(require_bin("kiln-init"))
        .arg("--jailer")
        .arg(require_bin("jailer"))
        .arg("--vmm")
        .arg(require_bin("vmm"))
        .arg("--profile")
        .arg(repo().join("policies/tenant/default.json"))
        .arg("--chroot-base-dir")
        .arg(&chroot_base)
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("--uid-base")
        .arg(uid_base.to_string())
        .args(["--uid-count", "5"])
        .arg("--parent-cgroup")
        .arg(&parent_cgroup);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(600));
    // Nothing left behind: no mount, cgroup, netns or file of the function's jail, no
    // instance directory.
    let snap = HostSnapshot::take(&[name, &parent_cgroup], &chroot_base);
    let exec_dir = chroot_base.join("vmm");
    let mut left: Vec<String> = snap.mounts;
    left.extend(
        snap.cgroups
            .into_iter()
            .filter(|c| !c.ends_with(&parent_cgroup)),
    );
    left.extend(snap.netns);
    left.extend(
        snap.files
            .into_iter()
            .filter(|f| Path::new(f) != chroot_base && Path::new(f) != exec_dir),
    );
    if let Ok(entries) = std::fs::read_dir(state_dir.join("instances")) {
        left.extend(entries.flatten().map(|e| e.path().display().to_string()));
    }
    assert!(left.is_empty(), "left behind: {left:#?}");
    for controller in ["cpu", "memory", "pids"] {
        let _ = std::fs::remove_dir(own_cgroup_dir(controller).join(&parent_cgroup));
    }
    let _ = std::fs::remove_dir_all(&root);
    out
}

#[test]
#[ignore = "slow tier: boots a Linux kernel (~1 min here)"]
fn kiln_invokes_a_lambda_function_in_a_microvm() {
    require_root();
    require_kvm();
    if is_pvm_host() {
        eprintln!("mode: kvm_pvm host: guest user space cannot run, so the worker must refuse (lambda-bootstrap); the Python runtime runs as a host process and in a chroot of its initramfs in worker/tests/lambda_runtime.rs");
        let out = kiln_invoke(&repo().join("examples/functions"), "lambda-bootstrap", "{}");
        eprintln!("kiln invoke lambda-bootstrap:\n{out}");
        assert_eq!(out.code(), 1, "{out}");
        assert!(
            out.stderr
                .contains("guest user space cannot run on this host")
                && out.stderr.contains("[host_unsupported]"),
            "{out}"
        );
        return;
    }
    eprintln!(
        "mode: microVM: lambda-python with awslambdaric inside the guest, and lambda-bootstrap"
    );
    let scratch = ScratchDir::new("kiln-lpy");
    let functions = scratch.join("functions");
    python_function(&functions);
    let out = kiln_invoke(&functions, "lambda-python", r#"{"in": "vm"}"#);
    eprintln!("kiln invoke lambda-python:\n{out}");
    assert_eq!(out.code(), 0, "{out}");
    let line: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("a JSON line");
    let response: serde_json::Value =
        serde_json::from_str(line["response"].as_str().unwrap()).unwrap();
    assert_eq!(response["echo"], serde_json::json!({"in": "vm"}), "{line}");
    assert_eq!(response["function_name"], "lambda-python", "{line}");
    let out = kiln_invoke(
        &repo().join("examples/functions"),
        "lambda-bootstrap",
        r#"{"n": 1}"#,
    );
    assert_eq!(out.code(), 0, "{out}");
}
