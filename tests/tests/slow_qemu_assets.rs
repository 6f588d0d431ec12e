//! Slow tier: validates Kiln's Linux guest assets independently of Kiln's own VMM, by booting
//! them under QEMU's `microvm` machine with KVM and watching the serial console.
//!
//! - the ELF vmlinux with the ext4 image as `root=/dev/vda` (virtio-blk, read-write) and a
//!   virtio-net NIC on a tap device in a network namespace of the test's own, configured by
//!   the kernel from `ip=`;
//! - the bzImage with the initramfs.
//!
//! Each test stops QEMU as soon as every milestone has been seen. On kvm_pvm hosts guest user
//! space cannot run (shared/notes/host-kvm.md), so there the last milestone is the kernel
//! starting /init; elsewhere it is kiln-init's ready marker.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use kiln_tests::assets::{require_linux_assets, QEMU_MICROVM_CMDLINE};
use kiln_tests::milestones::{all_seen, note, report, Milestone};
use kiln_tests::process::spawn;
use kiln_tests::{is_pvm_host, require_kvm, require_program, require_root, KillOnDrop, ScratchDir};

/// Booting to /init takes ~30–50 s on kvm_pvm hosts (guest ring 0 is emulated); the
/// margin covers a loaded machine. Elsewhere it takes about a second.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

const HOST_IP: &str = "172.16.0.1";
const GUEST_IP: &str = "172.16.0.2";
const TAP: &str = "kiln-tap0";

/// The machine: microvm without ACPI (QEMU then declares the virtio-mmio devices on the kernel
/// command line), its default CPU model (`-cpu host` aborts on kvm_pvm hosts), one vCPU, no
/// default devices, the serial port on stdout, and QEMU ending when the guest resets.
const MACHINE: &str = "-M microvm,accel=kvm,acpi=off -m 128M -smp 1 -nodefaults \
                       -no-user-config -display none -no-reboot -serial stdio";

/// Sets up the tap device inside the fresh network namespace, then becomes QEMU ("$@").
const NETNS_SETUP: &str = r#"
ip link set lo up
ip tuntap add dev "$KILN_TAP" mode tap
ip addr add "$KILN_HOST_IP/24" dev "$KILN_TAP"
ip link set "$KILN_TAP" up
exec "$@"
"#;

/// Serial lines that end a boot as a failure at once.
const FATAL: [&str; 2] = ["Kernel panic", "Initramfs unpacking failed"];

/// The milestones of a kernel that reaches /init, and of kiln-init where it can run.
fn init_milestones() -> Vec<Milestone> {
    let mut m = vec![Milestone::new(
        "kernel runs /init",
        "Run /init as init process",
    )];
    if !is_pvm_host() {
        m.push(Milestone::new("kiln-init ready", "KILN-INIT: ready"));
    }
    m
}

/// Lines of the serial console (guest output) or of QEMU's stderr, as they arrive.
enum Event {
    Serial(Instant, String),
    Stderr(String),
    Closed,
}

fn forward_lines<R: Read + Send + 'static>(
    stream: R,
    tx: Sender<Event>,
    wrap: fn(Instant, String) -> Event,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if tx.send(wrap(Instant::now(), line)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Closed);
    });
}

/// QEMU with `MACHINE`, the kernel and its command line; inside a new network namespace
/// holding a tap device when `with_tap`.
fn qemu_command(kernel: &Path, cmdline: &str, with_tap: bool) -> Command {
    let qemu = require_program("qemu-system-x86_64", "qemu-system-x86");
    let mut cmd = if with_tap {
        let mut cmd = Command::new(require_program("unshare", "util-linux"));
        require_program("ip", "iproute2");
        cmd.args(["--net", "--", "sh", "-euc", NETNS_SETUP, "kiln-netns"])
            .env("KILN_TAP", TAP)
            .env("KILN_HOST_IP", HOST_IP)
            .arg(qemu);
        cmd
    } else {
        Command::new(qemu)
    };
    cmd.args(MACHINE.split_whitespace())
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", cmdline]);
    cmd
}

/// Runs `cmd` until every milestone has been seen, then stops it; panics with the serial log
/// when the guest fails, QEMU exits, or [`BOOT_TIMEOUT`] passes first. Prints the time from
/// QEMU's start to each milestone.
fn boot(name: &str, mut cmd: Command, mut milestones: Vec<Milestone>) {
    println!("{name}: {cmd:?}");
    let start = Instant::now();
    // Killed on every way out of a test, including a failed assertion: on kvm_pvm hosts a
    // guest that resets stops QEMU with "KVM internal error" instead of ending it.
    let mut qemu = KillOnDrop::new(spawn(cmd.stdin(Stdio::null())));
    let (tx, rx) = mpsc::channel();
    forward_lines(
        qemu.stdout.take().expect("piped stdout"),
        tx.clone(),
        Event::Serial,
    );
    forward_lines(qemu.stderr.take().expect("piped stderr"), tx, |_, l| {
        Event::Stderr(l)
    });

    let mut serial: Vec<String> = Vec::new();
    let mut stderr: Vec<String> = Vec::new();
    let mut console_up: Option<Duration> = None;
    let mut open_streams = 2;
    let failure = loop {
        if all_seen(&milestones) {
            break None;
        }
        let Some(left) = BOOT_TIMEOUT.checked_sub(start.elapsed()) else {
            break Some(format!("timed out after {BOOT_TIMEOUT:?}"));
        };
        match rx.recv_timeout(left) {
            Ok(Event::Serial(at, line)) => {
                let t = at.duration_since(start);
                console_up.get_or_insert(t);
                note(&mut milestones, &line, t, "");
                let fatal = FATAL.iter().find(|f| line.contains(*f));
                serial.push(line);
                if let Some(f) = fatal {
                    break Some(format!("the guest printed {f:?}"));
                }
            }
            Ok(Event::Stderr(line)) => {
                let fatal = line.contains("KVM internal error");
                stderr.push(line);
                if fatal {
                    break Some("KVM stopped the guest (emulation failure)".to_string());
                }
            }
            Ok(Event::Closed) => {
                open_streams -= 1;
                if open_streams == 0 {
                    let status = qemu.wait().map(|s| s.to_string()).unwrap_or_default();
                    break Some(format!("QEMU exited ({status})"));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break Some("lost QEMU's output".to_string()),
        }
    };
    drop(qemu);

    let report = report(&milestones);
    println!(
        "{name} (kvm_pvm host: {}): console up at {:.2}s, QEMU stopped at {:.2}s\n{}",
        is_pvm_host(),
        console_up.unwrap_or_default().as_secs_f64(),
        start.elapsed().as_secs_f64(),
        report
    );
    if let Some(why) = failure {
        let tail = &serial[serial.len().saturating_sub(80)..];
        panic!(
            "{name}: the Linux guest did not boot under QEMU microvm: {why}\nmilestones:\n{}\n\
             --- last serial lines:\n{}\n--- QEMU stderr:\n{}",
            report,
            tail.join("\n"),
            stderr.join("\n")
        );
    }
}

#[test]
#[ignore = "slow tier: boots a Linux kernel under QEMU (~2 min here); run with ./test.sh"]
fn vmlinux_boots_from_virtio_blk_root_with_ip_config() {
    require_root();
    require_kvm();
    let assets = require_linux_assets();

    // The cached image is shared: the guest mounts a private copy read-write.
    let scratch = ScratchDir::new("kiln-qemu-assets");
    let rootfs = scratch.join("rootfs.ext4");
    std::fs::copy(&assets.rootfs, &rootfs).unwrap_or_else(|e| {
        panic!(
            "cannot copy {} to {}: {e}",
            assets.rootfs.display(),
            rootfs.display()
        )
    });

    let cmdline = format!(
        "{QEMU_MICROVM_CMDLINE} root=/dev/vda rw init=/init \
         ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off"
    );
    let mut cmd = qemu_command(&assets.vmlinux, &cmdline, true);
    cmd.arg("-drive")
        .arg(format!(
            "id=root,if=none,format=raw,file={}",
            rootfs.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .arg("-netdev")
        .arg(format!("tap,id=net0,ifname={TAP},script=no,downscript=no"))
        .args([
            "-device",
            "virtio-net-device,netdev=net0,mac=52:54:00:4b:49:4c",
        ]);

    let mut milestones = vec![
        Milestone::new("virtio-blk disk probed", "[vda]"),
        Milestone::new("ip= configured eth0", format!("ipaddr={GUEST_IP}")),
        Milestone::new("ext4 mounted from vda", "EXT4-fs (vda): mounted filesystem"),
        Milestone::new(
            "root mounted read-write",
            "VFS: Mounted root (ext4 filesystem) on device",
        ),
    ];
    milestones.extend(init_milestones());
    boot(
        "vmlinux + ext4 root on virtio-blk + virtio-net",
        cmd,
        milestones,
    );
}

#[test]
#[ignore = "slow tier: boots a Linux kernel under QEMU (~2 min here); run with ./test.sh"]
fn bzimage_boots_the_initramfs() {
    require_root();
    require_kvm();
    let assets = require_linux_assets();

    let mut cmd = qemu_command(&assets.bz_image, QEMU_MICROVM_CMDLINE, false);
    cmd.arg("-initrd").arg(&assets.initramfs);

    // Without root=, /init can only come from the initramfs.
    let mut milestones = vec![Milestone::new(
        "initramfs unpacked",
        "Freeing initrd memory",
    )];
    milestones.extend(init_milestones());
    boot("bzImage + initramfs", cmd, milestones);
}
