//! Firecracker's jailer contract from an orchestrator's side: every flag of its `jailer
//! --help` in Firecracker's form, and jail staging exactly as Firecracker's docs/jailer.md
//! describes it — the kernel and disks hard-linked or copied into
//! `<chroot_base>/<exec_file_name>/<id>/root/` after the jailer started, then `PUT
//! /boot-source` with the path inside the jail and `InstanceStart`; and a jail directory the
//! orchestrator created (with the files already staged) before starting the jailer. Kiln's
//! layers stay: the VMM reads what is staged, writes none of it, reaches nothing outside; a
//! pre-created directory is checked before use and left as the orchestrator made it.
//!
//! Needs root, /dev/kvm, `ip` (iproute2) and the `jailer` and `vmm` binaries.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::api::request;
use kiln_tests::jail::{HostSnapshot, Jail, Running};
use kiln_tests::netns::NetNs;
use kiln_tests::process::{read_pid_file, wait_gone};
use kiln_tests::{require_bin, require_kvm, tiny};

const T: Duration = Duration::from_secs(30);

/// `<base>/vmm/<id>`: the jail directory of `jail` when the VMM is the exec file.
fn jail_dir(jail: &Jail) -> PathBuf {
    jail.base.join("vmm").join(&jail.id)
}

/// What the jail could leave: mounts, cgroups, network namespaces (by its id and parent
/// cgroup), and the files under `<base>/vmm`.
fn snapshot(jail: &Jail) -> HostSnapshot {
    HostSnapshot::take(&[&jail.id, &jail.parent_cgroup], &jail.base.join("vmm"))
}

/// A file readable by anyone (the VMM's uid reads what is staged), made outside the jail.
fn staging_copy(jail: &Jail, from: &Path, name: &str) -> PathBuf {
    let dir = jail.base.join("staging");
    std::fs::create_dir_all(&dir).unwrap();
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
    to
}

fn disk(jail: &Jail) -> PathBuf {
    let dir = jail.base.join("staging");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rootfs.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

fn wait_for_path(path: &Path) {
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < T, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walk(dir) {
        out.push(e.strip_prefix(dir).unwrap().display().to_string());
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        }
    }
    out
}

/// Firecracker's documented flow: the jailer starts the VMM with its API socket; the
/// orchestrator then hard-links the kernel and copies the disk into the jail's root and
/// configures the VM with the paths as the VMM sees them.
#[test]
fn files_staged_after_the_jailer_started_boot_the_guest() {
    require_kvm();
    let jail = Jail::new("js-after");
    let vmm = require_bin("vmm");
    let kernel = staging_copy(&jail, &tiny::tiny_guest(), "vmlinux");
    let disk = disk(&jail);
    let before = snapshot(&jail);
    let run = Running::spawn(&mut jail.command_for(
        &vmm,
        &["--new-pid-ns", "--cleanup-on-exit"],
        &["--api-sock", "/run/api.sock"],
    ));
    let root = jail_dir(&jail).join("root");
    let sock = root.join("run/api.sock");
    wait_for_path(&sock);
    // Staged now, while the VMM runs: a hard link and a copy.
    std::fs::hard_link(&kernel, root.join("vmlinux")).unwrap();
    std::fs::copy(&disk, root.join("rootfs.ext4")).unwrap();
    std::fs::set_permissions(
        root.join("rootfs.ext4"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let call = |method: &str, path: &str, body: &str| request(&sock, method, path, body);
    // A path outside the jail does not exist for the VMM (the file is opened at the PUT).
    let (code, body) = call(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("fault_message"), "{body}");
    let (code, body) = call(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0 kiln.test=print"}"#,
    );
    assert_eq!(code, 204, "{body}");
    // Staged files are read-only for the VMM: a writable drive on one is refused at the PUT.
    let (code, body) = call(
        "PUT",
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "path_on_host": "/rootfs.ext4", "is_root_device": true, "is_read_only": false}"#,
    );
    assert_eq!(code, 400, "a writable staged drive: {body}");
    assert!(body.contains("/rootfs.ext4"), "{body}");
    let (code, body) = call(
        "PUT",
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "path_on_host": "/rootfs.ext4", "is_root_device": true, "is_read_only": true}"#,
    );
    assert_eq!(code, 204, "{body}");
    let (code, body) = call(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    assert_eq!(code, 204, "{body}");
    let (code, body) = call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(code, 204, "{body}");
    let done = run.finish(T);
    let out = done.report.lines.join("\n");
    assert!(out.contains(tiny::DONE), "{}", done.describe());
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(snapshot(&jail), before, "--cleanup-on-exit left something");
    // The hard link went with the jail; the orchestrator's file stays whole.
    assert_eq!(std::fs::metadata(&kernel).unwrap().nlink(), 1);
    assert_eq!(
        std::fs::read(&kernel).unwrap(),
        std::fs::read(tiny::tiny_guest()).unwrap()
    );
}

/// The orchestrator makes `<id>/root`, stages the kernel, a disk and the VM config in it,
/// then starts the jailer, which adopts the directory; when the VM ends, what the jailer
/// made goes and the orchestrator's directory stays as it was.
#[test]
fn a_jail_directory_created_and_staged_beforehand_is_used_and_left_as_it_was() {
    require_kvm();
    let jail = Jail::new("js-pre");
    let vmm = require_bin("vmm");
    let root = jail_dir(&jail).join("root");
    std::fs::create_dir_all(&root).unwrap();
    let kernel = staging_copy(&jail, &tiny::tiny_guest(), "vmlinux");
    std::fs::hard_link(&kernel, root.join("vmlinux")).unwrap();
    std::fs::copy(disk(&jail), root.join("disk.img")).unwrap();
    std::fs::write(
        root.join("vm.json"),
        r#"{"boot-source": {"kernel_image_path": "/vmlinux", "boot_args": "kiln.test=print"},
            "drives": [{"drive_id": "root", "path_on_host": "/disk.img", "is_root_device": true, "is_read_only": true}],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}}"#,
    )
    .unwrap();
    for f in ["disk.img", "vm.json"] {
        std::fs::set_permissions(root.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let staged = listing(&jail_dir(&jail));
    assert_eq!(
        staged,
        ["root", "root/disk.img", "root/vm.json", "root/vmlinux"]
    );
    let before = snapshot(&jail);
    let done = Running::spawn(&mut jail.command_for(
        &vmm,
        &["--new-pid-ns", "--cleanup-on-exit", "--new-netns"],
        &["--config-file", "/vm.json", "--no-api"],
    ))
    .finish(T);
    let out = done.report.lines.join("\n");
    assert!(out.contains(tiny::DONE), "{}", done.describe());
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(
        listing(&jail_dir(&jail)),
        staged,
        "the orchestrator's directory"
    );
    assert_eq!(snapshot(&jail), before);
    // Nothing of the jailer's is there for `jailer cleanup` either.
    let out = cleanup(&jail, &vmm);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no jail journal"),
        "{out:?}"
    );
    assert_eq!(listing(&jail_dir(&jail)), staged);
}

fn cleanup(jail: &Jail, vmm: &Path) -> std::process::Output {
    Command::new(&jail.jailer)
        .args(["cleanup", "--id", &jail.id, "--exec-file"])
        .arg(vmm)
        .arg("--chroot-base-dir")
        .arg(&jail.base)
        .output()
        .unwrap()
}

/// A pre-created directory that could turn the jailer's work on the host against it, or
/// carry something into the jail, is refused before anything is made, and left untouched.
#[test]
fn a_pre_created_directory_is_checked_before_it_is_used() {
    let vmm = require_bin("vmm");
    type Setup = fn(&Path);
    let cases: &[(&str, Setup, &str)] = &[
        (
            "owned by another user",
            |root| std::os::unix::fs::chown(root.parent().unwrap(), Some(1234), None).unwrap(),
            "is owned by uid 1234, not root",
        ),
        (
            "a link out",
            |root| std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap(),
            "points outside the jail's root",
        ),
        (
            "a link climbing out",
            |root| {
                std::fs::create_dir(root.join("a")).unwrap();
                std::os::unix::fs::symlink("../../../x", root.join("a/up")).unwrap();
            },
            "points outside the jail's root",
        ),
        (
            "a world-writable directory",
            |root| {
                std::fs::create_dir(root.join("drop")).unwrap();
                std::fs::set_permissions(root.join("drop"), std::fs::Permissions::from_mode(0o777))
                    .unwrap();
            },
            "is writable by group or others",
        ),
        (
            "the jailer's own name",
            |root| std::fs::create_dir(root.join("run")).unwrap(),
            "exists; the jailer makes it itself",
        ),
        (
            "a mount inside",
            |root| {
                std::fs::create_dir(root.join("mnt")).unwrap();
                let ok = Command::new("mount")
                    .args(["-t", "tmpfs", "tmpfs"])
                    .arg(root.join("mnt"))
                    .status()
                    .unwrap();
                assert!(ok.success());
            },
            "is a mount point",
        ),
    ];
    for (what, setup, words) in cases {
        let jail = Jail::new("js-bad");
        let root = jail_dir(&jail).join("root");
        std::fs::create_dir_all(&root).unwrap();
        setup(&root);
        let staged = listing(&jail_dir(&jail));
        let out = jail
            .command_for(&vmm, &["--cleanup-on-exit"], &["--no-api"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // Undo the mount before anything can fail (the Jail's drop removes the base).
        if *what == "a mount inside" {
            let _ = Command::new("umount").arg(root.join("mnt")).status();
        }
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("the pre-created jail directory") && err.contains(words),
            "{what}: {err}"
        );
        assert_eq!(listing(&jail_dir(&jail)), staged, "{what}: changed");
        let snap = snapshot(&jail);
        assert!(
            snap.cgroups.is_empty() && snap.netns.is_empty(),
            "{what}: {snap:?}"
        );
        assert!(
            !jail
                .base
                .join("vmm")
                .join(format!(".{}.jailer", jail.id))
                .exists(),
            "{what}: the claim is left"
        );
    }
}

/// Every flag of Firecracker's `jailer --help`, in Firecracker's form (`--flag value`), with
/// Firecracker's meaning: a daemonized jailer, the VMM as PID 1 of a new PID namespace in a
/// joined network namespace, in `<parent>/<id>` cgroups with the `--cgroup` values written,
/// under the resource limits — for cgroup versions 1 and 2.
#[test]
fn every_firecracker_jailer_flag_is_accepted_with_its_meaning() {
    require_kvm();
    let vmm = require_bin("vmm");
    let ns = NetNs::new("jsfc");
    for version in ["1", "2"] {
        let jail = Jail::new("js-fc");
        let root = jail_dir(&jail).join("root");
        std::fs::create_dir_all(&root).unwrap();
        let kernel = staging_copy(&jail, &tiny::tiny_guest(), "vmlinux");
        std::fs::hard_link(&kernel, root.join("vmlinux")).unwrap();
        std::fs::write(
            root.join("vm.json"),
            r#"{"boot-source": {"kernel_image_path": "/vmlinux", "boot_args": "kiln.test=hang"},
                "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}}"#,
        )
        .unwrap();
        std::fs::set_permissions(root.join("vm.json"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let before = snapshot(&jail);
        let parent = format!("{}-parent", jail.parent_cgroup);
        let netns = format!("/run/netns/{}", ns.name());
        let mut cmd = Command::new(&jail.jailer);
        cmd.args(["--id", &jail.id, "--exec-file"])
            .arg(&vmm)
            .args([
                "--uid",
                &jail.uid.to_string(),
                "--gid",
                &jail.gid.to_string(),
            ])
            .arg("--chroot-base-dir")
            .arg(&jail.base)
            .args(["--netns", &netns, "--daemonize", "--new-pid-ns"])
            .args(["--cgroup-version", version, "--parent-cgroup", &parent])
            .args([
                "--resource-limit",
                "no-file=1024",
                "--resource-limit",
                "fsize=1048576",
            ]);
        if version == "1" {
            cmd.args(["--cgroup", "cpuset.mems=0", "--cgroup", "cpu.shares=512"]);
        }
        let out = cmd
            .args(["--", "--config-file", "/vm.json", "--no-api"])
            .args(["--serial-out", "/run/serial.out"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "version {version}: {out:?}");
        let vmm_pid = read_pid_file(&root.join("vmm.pid"), T);
        wait_for_path(&root.join("run/serial.out"));
        let status = std::fs::read_to_string(format!("/proc/{vmm_pid}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert!(nspid.ends_with("\t1"), "--new-pid-ns: {nspid}");
        let limits = std::fs::read_to_string(format!("/proc/{vmm_pid}/limits")).unwrap();
        assert!(
            limits.lines().any(|l| l.starts_with("Max open files")
                && l.split_whitespace().filter(|w| *w == "1024").count() == 2),
            "{limits}"
        );
        assert!(
            limits.lines().any(|l| l.starts_with("Max file size")
                && l.split_whitespace().filter(|w| *w == "1048576").count() == 2),
            "{limits}"
        );
        let ns_of = |p: &str| std::fs::metadata(p).unwrap().ino();
        assert_eq!(
            ns_of(&format!("/proc/{vmm_pid}/ns/net")),
            ns_of(&netns),
            "--netns"
        );
        assert_eq!(
            std::fs::read_link(format!("/proc/{vmm_pid}/fd/0")).unwrap(),
            Path::new("/dev/null"),
            "--daemonize"
        );
        let cgroups = std::fs::read_to_string(format!("/proc/{vmm_pid}/cgroup")).unwrap();
        let in_parent = format!("/{parent}/{}", jail.id);
        if version == "1" {
            let cpu = cgroups.lines().find(|l| l.contains(":cpu:")).unwrap();
            assert!(cpu.ends_with(&in_parent), "{cgroups}");
            let dir = kiln_tests::jail::own_cgroup_dir("cpu")
                .join(&parent)
                .join(&jail.id);
            let shares = std::fs::read_to_string(dir.join("cpu.shares")).unwrap();
            assert_eq!(shares.trim(), "512");
        } else {
            let unified = cgroups.lines().find(|l| l.starts_with("0::")).unwrap();
            assert!(unified.ends_with(&in_parent), "{cgroups}");
        }
        let serial = std::fs::read_to_string(root.join("run/serial.out")).unwrap();
        let t = Instant::now();
        while !std::fs::read_to_string(root.join("run/serial.out"))
            .unwrap_or_default()
            .contains("KILN-TINY: hang")
        {
            assert!(t.elapsed() < T, "the guest never ran: {serial}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Firecracker leaves the end to the orchestrator: stop the VMM, then clean up.
        // SAFETY: kill(2) with a pid and a signal.
        unsafe { libc::kill(vmm_pid, libc::SIGKILL) };
        assert!(wait_gone(vmm_pid, T));
        let out = cleanup(&jail, &vmm);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            listing(&jail_dir(&jail)),
            ["root", "root/vm.json", "root/vmlinux"]
        );
        let after = snapshot(&jail);
        assert_eq!(after, before, "version {version}");
        let parent_left = HostSnapshot::take(&[&parent], Path::new("/nonexistent"));
        assert!(parent_left.cgroups.is_empty(), "{parent_left:?}");
    }
}
