//! Slow tier: Kiln's VMM boots the project's Linux guest (scripts/assets.sh) from
//! `--config-file ... --no-api` with its initramfs: the ELF vmlinux with 1 and 2 vCPUs, and
//! the bzImage once. The test follows the serial console, prints when each milestone was
//! reached, and stops the VMM (SIGTERM, which must exit 0) as soon as the last one is seen:
//! the kernel running /init on kvm_pvm hosts, where guest user space cannot run
//! (shared/notes/host-kvm.md), and kiln-init's ready marker elsewhere.
//!
//! Run with `cargo test -p kiln-tests --test slow_vmm_linux -- --ignored --test-threads=1`
//! (one at a time: each boot keeps a core busy for about a minute on kvm_pvm hosts).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use kiln_tests::assets::{require_linux_assets, KERNEL_CMDLINE};
use kiln_tests::{is_pvm_host, require_bin, require_kvm, unique_id};

/// The ELF vmlinux reaches /init in about 40 s on kvm_pvm hosts; a bzImage adds ~90 s of
/// emulated decompression. The margins cover a loaded machine.
const VMLINUX_TIMEOUT: Duration = Duration::from_secs(240);
const BZIMAGE_TIMEOUT: Duration = Duration::from_secs(360);
const READY_MARKER: &str = "KILN-INIT: ready";

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the VMM on every way out of the test.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json_path(p: &Path) -> String {
    format!("{:?}", p.to_str().expect("utf-8 path"))
}

/// Boots `kernel` with the initramfs and `vcpus` vCPUs; returns when the last milestone is
/// seen and the VMM has exited after SIGTERM.
fn boot_linux(kernel: &Path, initramfs: &Path, vcpus: u8, timeout: Duration) {
    require_kvm();
    let vmm = require_bin("vmm");
    let dir = Scratch(std::env::temp_dir().join(unique_id("kiln-vmm-linux")));
    std::fs::create_dir_all(&dir.0).expect("scratch dir");
    let cfg = dir.0.join("vm.json");
    // On kvm_pvm hosts the `Baseline` CPU template hides what the emulator cannot run, in
    // particular KVM's hypercall-based PV features: a guest `vmcall` never returns there, and
    // an SMP Linux sends its IPIs by hypercall when offered PV send-IPI (docs/vmm.md).
    let template = if is_pvm_host() {
        ", \"cpu_template\": \"Baseline\""
    } else {
        ""
    };
    let text = format!(
        "{{\"boot-source\": {{\"kernel_image_path\": {}, \"initrd_path\": {}, \"boot_args\": {:?}}},\n \"machine-config\": {{\"vcpu_count\": {vcpus}, \"mem_size_mib\": 256{template}}}}}\n",
        json_path(kernel),
        json_path(initramfs),
        KERNEL_CMDLINE
    );
    std::fs::write(&cfg, text).expect("write config");

    let mut milestones: Vec<(&str, String, Option<Duration>)> = vec![
        ("first serial output", String::new(), None),
        ("kernel banner", "Linux version".into(), None),
        ("MP table found", "found SMP MP-table".into(), None),
        (
            "CPUs up",
            format!("smp: Brought up 1 node, {vcpus} CPU"),
            None,
        ),
        (
            "kernel runs /init",
            "Run /init as init process".into(),
            None,
        ),
    ];
    if !is_pvm_host() {
        milestones.push(("init ready", READY_MARKER.into(), None));
    }

    let start = Instant::now();
    let mut child = Vmm(Command::new(&vmm)
        .arg("--config-file")
        .arg(&cfg)
        .arg("--no-api")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm"));
    let (tx, rx) = mpsc::channel::<Option<String>>();
    let stdout = child.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let _ = tx.send(Some(String::from_utf8_lossy(&buf).trim_end().to_string()));
            buf.clear();
        }
        let _ = tx.send(None);
    });
    let stderr = child.0.stderr.take().expect("stderr");
    let stderr_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });

    let mut console = Vec::new();
    let outcome = loop {
        if milestones.iter().all(|m| m.2.is_some()) {
            break Ok(());
        }
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(Some(line)) => {
                let at = start.elapsed();
                for m in milestones
                    .iter_mut()
                    .filter(|m| m.2.is_none() && line.contains(m.1.as_str()))
                {
                    m.2 = Some(at);
                    eprintln!(
                        "[{:>8.3} s] {} ({vcpus} vCPUs, {})",
                        at.as_secs_f64(),
                        m.0,
                        kernel.display()
                    );
                }
                console.push(line);
            }
            Ok(None) => break Err("the VMM closed its stdout (exited) before the last milestone"),
            Err(RecvTimeoutError::Timeout) => break Err("timed out"),
            Err(RecvTimeoutError::Disconnected) => break Err("console reader ended"),
        }
    };
    // SAFETY: kill(2) on the child's pid, which has not been waited for yet.
    unsafe { libc::kill(i32::try_from(child.0.id()).expect("pid"), libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = child.0.kill();
    let stderr = stderr_thread.join().unwrap_or_default();
    let tail = console
        .iter()
        .rev()
        .take(40)
        .rev()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    if let Err(why) = outcome {
        let missing: Vec<&str> = milestones
            .iter()
            .filter(|m| m.2.is_none())
            .map(|m| m.0)
            .collect();
        panic!("{why} after {:?}; missing milestones {missing:?}\n--- console (last 40 lines):\n{tail}\n--- stderr:\n{stderr}", start.elapsed());
    }
    assert!(!stderr.contains("panicked"), "the VMM panicked\n{stderr}");
    let status =
        status.unwrap_or_else(|| panic!("the VMM did not exit within 10 s of SIGTERM\n{stderr}"));
    // The guest may have rebooted on its own just before the signal (init cannot run on
    // kvm_pvm hosts: the kernel panics and, with panic=-1, resets): 0 either way.
    assert_eq!(
        status.code(),
        Some(0),
        "exit status\n--- console:\n{tail}\n--- stderr:\n{stderr}"
    );
}

#[test]
#[ignore = "slow tier: boots the Linux guest (about a minute on kvm_pvm hosts)"]
fn vmlinux_with_initramfs_reaches_init_with_one_vcpu() {
    let a = require_linux_assets();
    boot_linux(&a.vmlinux, &a.initramfs, 1, VMLINUX_TIMEOUT);
}

#[test]
#[ignore = "slow tier: boots the Linux guest (about a minute on kvm_pvm hosts)"]
fn vmlinux_with_initramfs_reaches_init_with_two_vcpus() {
    let a = require_linux_assets();
    boot_linux(&a.vmlinux, &a.initramfs, 2, VMLINUX_TIMEOUT);
}

#[test]
#[ignore = "slow tier: boots the Linux guest's bzImage (about two minutes on kvm_pvm hosts)"]
fn bzimage_with_initramfs_reaches_init() {
    let a = require_linux_assets();
    boot_linux(&a.bz_image, &a.initramfs, 1, BZIMAGE_TIMEOUT);
}
