//! Rows 6 (`--only teardown`): SIGTERM → the VMM reaped (no jail), with and without KVM's
//! in-kernel PIT, beside QEMU's microvm and (`--firecracker`) Firecracker; SIGTERM → the
//! jailer reaped with its jail removed; and a guest reset → the jailer gone.
//!
//! The tiny guest keeps time with the TSC and needs no PIT, so its rows without one are
//! what function images get; the row with the PIT is what a Linux guest (and every
//! Firecracker VM) gets.
//!
//! The jailed row runs twice: with the run's chroot base, and with one on a tmpfs
//! (`/dev/shm`): on a filesystem mounted with `discard` (the development hosts' root),
//! removing the jail's files (its private copy of the VMM above all) waits for the
//! device's discards.
//!
//! SIGTERM goes [`SETTLED`] after the guest's first serial byte (a VM that has run a
//! while, as one torn down after serving anything), and in one row at the first byte:
//! KVM frees the I/O buses replaced while the VM was built (irqchip creation) after an
//! SRCU grace period, ~13 ms on the development hosts, and destroying a younger VM waits
//! for that (`srcu_barrier` in `kvm_destroy_vm`, docs/benchmarks.md).

use crate::host::leaks;
use crate::launch::{
    firecracker_config_cmd, jailer_cmd, jailer_cmd_at, qemu_cmd, vmm_config_cmd, write_vm_config,
    write_vm_config_pit, FULL,
};
use crate::opts::Opts;
use crate::process::{ms, signal, start, TIMEOUT};
use crate::table::{measured, Table};
use nix::sys::signal::Signal;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long after the first serial byte the settled rows send SIGTERM.
const SETTLED: Duration = Duration::from_millis(100);

/// Starts `c`, waits for the guest's first serial byte and then `settle`, sends SIGTERM
/// and returns the time until the process is reaped (ms).
fn sigterm_to_reaped(c: Command, settle: Duration) -> Result<f64, String> {
    let mut s = start(c, false)?;
    s.first_byte()?;
    std::thread::sleep(settle);
    let t0 = Instant::now();
    signal(s.child.id(), Signal::SIGTERM);
    s.finish(TIMEOUT)?;
    Ok(ms(t0.elapsed()))
}

pub fn bench_teardown(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 6. teardown: SIGTERM -> process reaped (and jail removed)");
    let jcfg = write_vm_config_pit(opts, "jail-halt", Path::new("/tiny.elf"), "halt", 1, false);
    let cfg = write_vm_config_pit(opts, "halt1-nopit", &opts.tiny, "halt", 1, false);
    let pit_cfg = write_vm_config(opts, "halt1", &opts.tiny, "halt", 1);
    let pcfg = write_vm_config_pit(
        opts,
        "jail-print",
        Path::new("/tiny.elf"),
        "print",
        1,
        false,
    );
    let (mut jailed, mut bare, mut bare_pit, mut young, mut reset) =
        (vec![], vec![], vec![], vec![], vec![]);
    // A chroot base on a tmpfs, when the host has one at /dev/shm.
    let shm = Path::new("/dev/shm")
        .is_dir()
        .then(|| Path::new("/dev/shm").join(format!("kiln-bench-{}", std::process::id())));
    if let Some(dir) = &shm {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let (mut jailed_shm, mut shm_left) = (vec![], 0);
    let (mut qemu, mut fc, mut qemu_young, mut fc_young) = (vec![], vec![], vec![], vec![]);
    let runs = opts.runs.min(10);
    let mut leaked = 0;
    for i in 0..runs {
        jailed.push(sigterm_to_reaped(
            jailer_cmd(opts, i, &jcfg, FULL),
            SETTLED,
        )?);
        leaked += leaks(opts).len();
        if let Some(dir) = &shm {
            jailed_shm.push(sigterm_to_reaped(
                jailer_cmd_at(opts, dir, i, &jcfg, FULL),
                SETTLED,
            )?);
            shm_left += std::fs::read_dir(dir.join("vmm")).map_or(0, |d| d.count());
            leaked += leaks(opts).len();
        }
        bare.push(sigterm_to_reaped(vmm_config_cmd(opts, &cfg), SETTLED)?);
        bare_pit.push(sigterm_to_reaped(vmm_config_cmd(opts, &pit_cfg), SETTLED)?);
        young.push(sigterm_to_reaped(
            vmm_config_cmd(opts, &cfg),
            Duration::ZERO,
        )?);

        // Guest-initiated: the print scenario prints its line, then resets; first byte →
        // the jailer gone with the jail removed (includes the guest's emulated run).
        let mut s = start(jailer_cmd(opts, i, &pcfg, FULL), false)?;
        let at = s.first_byte()?;
        s.finish(TIMEOUT)?;
        reset.push(ms(at.elapsed()));
        leaked += leaks(opts).len();

        if let Some(c) = qemu_cmd(opts, "halt", 1, &[]) {
            qemu.push(sigterm_to_reaped(c, SETTLED)?);
        }
        if let Some(c) = qemu_cmd(opts, "halt", 1, &[]) {
            qemu_young.push(sigterm_to_reaped(c, Duration::ZERO)?);
        }
        // The config with the PIT has no Kiln-only field (Firecracker's VMs all have one).
        if let Some(c) = firecracker_config_cmd(opts, &pit_cfg) {
            fc.push(sigterm_to_reaped(c, SETTLED)?);
        }
        if let Some(c) = firecracker_config_cmd(opts, &pit_cfg) {
            fc_young.push(sigterm_to_reaped(c, Duration::ZERO)?);
        }
    }
    let peers = (measured(&qemu), measured(&fc));
    t.add_peers(
        "6 teardown, bare: SIGTERM → VMM reaped (\"pit\": false)",
        "ms",
        &bare,
        peers,
        "SIGTERM 100 ms after the first serial byte; the tiny guest needs no PIT, as function images",
    );
    t.add_peers(
        "6 teardown, bare, with the in-kernel PIT (Linux guests' default)",
        "ms",
        &bare_pit,
        peers,
        "as above",
    );
    t.add_peers(
        "6 teardown, bare, SIGTERM at the first serial byte (\"pit\": false)",
        "ms",
        &young,
        (measured(&qemu_young), measured(&fc_young)),
        "a VM ~2 ms old: KVM's deferred frees from its creation are still pending",
    );
    t.add_note(
        "6 teardown, jailed with cleanup: SIGTERM → jailer reaped, jail removed (full profile)",
        "ms",
        &jailed,
        None,
        &format!(
            "\"pit\": false, SIGTERM 100 ms after the first byte; left over afterwards: {leaked}"
        ),
    );
    if let Some(dir) = &shm {
        let _ = std::fs::remove_dir(dir.join("vmm"));
        let _ = std::fs::remove_dir(dir);
        t.add_note(
            "6 teardown, jailed with cleanup, chroot base on a tmpfs (/dev/shm)",
            "ms",
            &jailed_shm,
            None,
            &format!("as above; jail directories left over: {shm_left}"),
        );
    }
    t.add_note(
        "6 guest reset → jailer gone, jail removed",
        "ms",
        &reset,
        None,
        "from the first serial byte; includes the guest printing its line",
    );
    Ok(())
}
