//! kiln-init restarts the machine it runs on: anywhere but as PID 1 it must refuse, untouched.

use std::process::Command;

#[test]
fn refuses_to_run_unless_pid_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-init"))
        .output()
        .expect("run kiln-init");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("refusing to run as PID") && stderr.contains("restarts the machine"),
        "stderr: {stderr}"
    );
    assert!(out.stdout.is_empty(), "printed on stdout: {:?}", out.stdout);
}
