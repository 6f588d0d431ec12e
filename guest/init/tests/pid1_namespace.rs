//! kiln-init as PID 1 of a fresh PID + mount namespace, chrooted into a bare root: the closest
//! the host gets to the guest (on kvm_pvm hosts guest user space cannot run at all). There,
//! `reboot(2)` does not touch the machine: the kernel kills the namespace's init with SIGHUP
//! for a restart, which shows that kiln-init got all the way to ending the VM.
//! Writes the ready line to the host's /dev/console too (devtmpfs is shared).

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

#[test]
fn runs_as_pid_1_mounts_announces_and_restarts() {
    kiln_tests::require_root();
    let root = std::env::temp_dir().join(kiln_tests::unique_id("kiln-init-root"));
    for dir in ["dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(dir)).expect("create the bare root");
    }
    std::fs::copy(env!("CARGO_BIN_EXE_kiln-init"), root.join("init")).expect("copy kiln-init");

    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--propagation", "private"])
        .arg(format!("--root={}", root.display()))
        .arg("/init")
        .output()
        .expect("run unshare (util-linux)");
    let _ = std::fs::remove_dir_all(&root);

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "KILN-INIT: ready\n", "stderr: {stderr}");
    // unshare re-raises the signal that killed its child.
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGHUP),
        "kiln-init did not end by restarting (status {:?}); stderr: {stderr}",
        out.status
    );
}
