//! Slow tier: a Linux function (examples/functions/linux-echo, `"kind": "linux"`) through the
//! worker, in a full jail: `kiln invoke linux-echo` boots the guest kernel (scripts/assets.sh)
//! with the function's initramfs (kiln-init as `/init`, the handler as `/fn/handler`).
//!
//! On a kvm_pvm host (shared/notes/host-kvm.md) guest user space cannot run: the kernel
//! reaches `Run /init`, init faults, and the worker must fail with a clear error saying so,
//! and leave nothing behind. Elsewhere the echoed response is checked.

use kiln_tests::assets::require_linux_assets;
use kiln_tests::jail::{own_cgroup_dir, HostSnapshot};
use kiln_tests::{
    is_pvm_host, require_bin, require_kvm, require_root, run_with_timeout, unique_id,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
#[ignore = "slow tier: boots a Linux kernel (~1 min here)"]
fn kiln_invokes_a_linux_function_in_a_jail() {
    require_root();
    require_kvm();
    let assets = require_linux_assets();
    let (kiln, jailer, vmm, init) = (
        require_bin("kiln"),
        require_bin("jailer"),
        require_bin("vmm"),
        require_bin("kiln-init"),
    );
    let name = unique_id("kwl");
    // Short: the vsock socket path under the state directory must fit in 107 bytes.
    let root = PathBuf::from("/tmp").join(format!("kwl-{}", std::process::id()));
    let (chroot_base, state_dir) = (root.join("j"), root.join("s"));
    std::fs::create_dir_all(&chroot_base).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    let parent_cgroup = format!("kwl-{name}");
    let uid_base = 46_000 + (std::process::id() % 100) * 20;

    let mut cmd = Command::new(&kiln);
    cmd.arg("invoke")
        .arg("linux-echo")
        .args(["--event", r#"{"hello":"linux"}"#, "--json"])
        .arg("--functions-dir")
        .arg(repo().join("examples/functions"))
        .arg("--cache-dir")
        .arg(kiln_tests::cache_dir().join("functions"))
        .arg("--kernel")
        .arg(&assets.vmlinux)
        .arg("--init")
        .arg(&init)
        .arg("--jailer")
        .arg(&jailer)
        .arg("--vmm")
        .arg(&vmm)
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
    let out = run_with_timeout(&mut cmd, Duration::from_secs(400));
    eprintln!("kiln invoke linux-echo:\n{out}");

    if is_pvm_host() {
        assert_eq!(out.code(), 1, "{out}");
        assert!(
            out.stderr
                .contains("guest user space cannot run on this host")
                && out.stderr.contains("reached `Run /init`")
                && out.stderr.contains("[host_unsupported]"),
            "{out}"
        );
        let line: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).expect("one JSON line");
        assert_eq!(line["error"]["code"], "host_unsupported", "{line}");
    } else {
        assert_eq!(out.code(), 0, "{out}");
        let line: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).expect("one JSON line");
        assert_eq!(
            line["response"],
            serde_json::json!({"echo": {"hello": "linux"}}),
            "{line}"
        );
    }

    // Nothing left behind: no mount, cgroup, netns or file of a linux-echo jail, no
    // instance directory.
    let snap = HostSnapshot::take(&["linux-echo", &parent_cgroup], &chroot_base);
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
}
