//! Fast tier: the tiny test guest under QEMU's microvm (KVM), which boots it through its PVH
//! entry. This validates the guest itself (PVH entry, long-mode switch, boot-information
//! parsing, output contract, ways of ending the VM) independently of Kiln's VMM.
//!
//! Needs /dev/kvm and Debian's qemu-system-x86 package. Each run takes well under a second.

use std::time::Duration;

use kiln_tests::process::Followed;
use kiln_tests::tiny::{self, Entry, TinyOutput};
use kiln_tests::{require_kvm, require_program, run_with_timeout, Finished};

/// Generous: a run takes ~50 ms; an emulation failure leaves QEMU running until killed.
const TIMEOUT: Duration = Duration::from_secs(10);

fn qemu_run(
    cmdline: &str,
    mem_mib: u32,
    extra: &[&str],
    timeout: Duration,
) -> (Finished, TinyOutput) {
    require_kvm();
    let qemu = require_program("qemu-system-x86_64", "qemu-system-x86");
    let elf = tiny::tiny_guest();
    let mut cmd = tiny::qemu_microvm(&qemu, &elf, cmdline, mem_mib);
    cmd.args(extra);
    let finished = run_with_timeout(&mut cmd, timeout);
    let output = TinyOutput::parse(&finished.stdout);
    (finished, output)
}

/// Runs a scenario that ends normally; asserts the start marker, `done`, no error line and
/// QEMU's isa-debug-exit status.
fn qemu_clean(cmdline: &str, mem_mib: u32, extra: &[&str]) -> TinyOutput {
    let (finished, output) = qemu_run(cmdline, mem_mib, extra, TIMEOUT);
    assert_eq!(
        output.entry,
        Some(Entry::Pvh),
        "no PVH start marker\n{finished}"
    );
    assert!(output.done, "no done line\n{finished}");
    assert!(output.errors().is_empty(), "error lines\n{finished}");
    assert_eq!(
        finished.code(),
        tiny::QEMU_EXIT_OK,
        "isa-debug-exit status\n{finished}"
    );
    output
}

#[test]
fn image_layout_is_what_vmms_are_told() {
    let image = tiny::image(&tiny::tiny_guest());
    assert_eq!(image.load.start, tiny::LOAD_ADDR, "{image:?}");
    assert!(
        image.load.end <= 0x20_0000,
        "the image must stay below 2 MiB: {image:?}"
    );
    assert!(image.load.contains(&image.linux64_entry), "{image:?}");
    let pvh = image.pvh_entry.expect("PVH note");
    assert!(
        image.load.contains(&pvh) && pvh != image.linux64_entry,
        "{image:?}"
    );
}

#[test]
fn print_echoes_the_command_line_and_exits_through_debug_exit() {
    let cmdline = "kiln.test=print foo=bar  quoted=\"a b\" last";
    let output = qemu_clean(cmdline, 128, &[]);
    assert_eq!(output.value("cmdline"), Some(cmdline));
    assert_eq!(output.lines.len(), 1, "{output:?}");
}

#[test]
fn default_scenario_is_print() {
    let output = qemu_clean("console=none", 128, &[]);
    assert_eq!(output.value("cmdline"), Some("console=none"));
}

#[test]
fn last_scenario_on_the_command_line_wins() {
    let output = qemu_clean("kiln.test=bogus kiln.test=print", 128, &[]);
    assert_eq!(
        output.value("cmdline"),
        Some("kiln.test=bogus kiln.test=print")
    );
}

#[test]
fn boot_reports_where_the_boot_information_is() {
    let output = qemu_clean("kiln.test=boot", 128, &[]);
    let boot = output.topic("boot");
    let fields = boot.first().expect("boot line");
    assert_eq!(tiny::field(fields, "entry"), Some("pvh"));
    assert_eq!(tiny::field(fields, "cmdline_len"), Some("14"));
    let info = tiny::field(fields, "info")
        .and_then(tiny::parse_hex)
        .expect("info address");
    assert!(
        info != 0 && info < tiny::LOAD_ADDR,
        "QEMU puts hvm_start_info in low memory: {fields:?}"
    );
}

#[test]
fn memmap_ram_matches_the_memory_size() {
    for mem_mib in [128u32, 200] {
        let output = qemu_clean("kiln.test=memmap", mem_mib, &[]);
        let ram: Vec<_> = output
            .mem_regions()
            .into_iter()
            .filter(|r| r.kind == tiny::E820_RAM && r.size > 0)
            .collect();
        assert!(!ram.is_empty(), "no RAM entry\n{output:?}");
        let top = ram.iter().map(|r| r.addr + r.size).max().unwrap_or(0);
        assert_eq!(top, u64::from(mem_mib) << 20, "highest RAM end\n{output:?}");
        let total: u64 = ram.iter().map(|r| r.size).sum();
        assert!(
            total <= u64::from(mem_mib) << 20 && total > (u64::from(mem_mib) - 2) << 20,
            "{output:?}"
        );
        let image = tiny::image(&tiny::tiny_guest());
        assert!(
            ram.iter()
                .any(|r| r.addr <= image.load.start && image.load.end <= r.addr + r.size),
            "the image is not inside RAM\n{output:?}"
        );
    }
}

#[test]
fn cpuid_shows_the_kvm_signature() {
    let output = qemu_clean("kiln.test=cpuid", 128, &[]);
    let leaf0 = output.cpuid(0).expect("leaf 0 line");
    let max = tiny::field(&leaf0, "max")
        .and_then(tiny::parse_hex)
        .expect("max leaf");
    assert!(max >= 1, "{output:?}");
    let leaf1 = output.cpuid(1).expect("leaf 1 line");
    let ecx = tiny::field(&leaf1, "ecx")
        .and_then(tiny::parse_hex)
        .expect("ecx");
    assert!(
        ecx & (1 << 31) != 0,
        "hypervisor bit clear under KVM\n{output:?}"
    );
    let edx = tiny::field(&leaf1, "edx")
        .and_then(tiny::parse_hex)
        .expect("edx");
    assert!(edx & 1 != 0, "no FPU bit\n{output:?}");
    let hv = output.cpuid(0x4000_0000).expect("hypervisor leaf line");
    assert_eq!(tiny::field(&hv, "sig"), Some("KVMKVMKVM"), "{output:?}");
    if max >= 7 {
        assert!(output
            .cpuid(7)
            .and_then(|f| tiny::field(&f, "ebx").map(str::to_owned))
            .is_some());
    }
}

#[test]
fn cpus_counts_the_mp_table_processors() {
    let output = qemu_clean("kiln.test=cpus", 128, &["-smp", "2"]);
    assert_eq!(output.cpus(), Some(Some(2)), "{output:?}");
}

#[test]
fn ports_without_devices_are_survived() {
    let output = qemu_clean("kiln.test=ports", 128, &[]);
    assert_eq!(output.topic("port").len(), 4, "{output:?}");
    assert!(
        output.lines.iter().any(|l| l == "ports survived"),
        "{output:?}"
    );
}

#[test]
fn reset_through_the_i8042_ends_the_vm() {
    // microvm has no i8042 unless asked for; with -no-reboot a reset ends QEMU with 0.
    let (finished, output) = qemu_run("kiln.test=reset", 128, &["-device", "i8042"], TIMEOUT);
    assert_eq!(output.entry, Some(Entry::Pvh), "{finished}");
    assert!(
        output.lines.iter().any(|l| l == "reset via i8042"),
        "{finished}"
    );
    assert!(
        !output.done && output.errors().is_empty(),
        "the guest ran on after the reset\n{finished}"
    );
    assert_eq!(finished.code(), 0, "{finished}");
}

#[test]
fn ignored_reset_is_reported_and_the_guest_finishes() {
    let (finished, output) = qemu_run("kiln.test=reset", 128, &[], TIMEOUT);
    assert_eq!(output.errors(), vec!["reset ignored"], "{finished}");
    assert!(output.done, "{finished}");
    assert_eq!(finished.code(), tiny::QEMU_EXIT_ERRORS, "{finished}");
}

#[test]
fn done_ends_the_vm_through_the_i8042_when_there_is_one() {
    let (finished, output) = qemu_run("kiln.test=print", 128, &["-device", "i8042"], TIMEOUT);
    assert!(output.done, "{finished}");
    assert_eq!(
        finished.code(),
        0,
        "reset (exit 0) expected before isa-debug-exit\n{finished}"
    );
}

#[test]
fn triple_fault_ends_the_vm() {
    let (finished, output) = qemu_run("kiln.test=triple", 128, &[], TIMEOUT);
    assert!(
        output.lines.iter().any(|l| l == "triple fault now"),
        "{finished}"
    );
    assert!(!output.done && output.errors().is_empty(), "{finished}");
    // With -no-reboot QEMU turns the shutdown into an exit with status 0.
    assert_eq!(finished.code(), 0, "{finished}");
}

#[test]
fn unknown_scenario_is_an_error() {
    let (finished, output) = qemu_run("kiln.test=no-such-thing", 128, &[], TIMEOUT);
    assert_eq!(
        output.errors(),
        vec!["unknown scenario=no-such-thing"],
        "{finished}"
    );
    assert!(output.done, "{finished}");
    assert_eq!(finished.code(), tiny::QEMU_EXIT_ERRORS, "{finished}");
}

#[test]
fn hang_keeps_the_vcpu_busy_until_killed() {
    require_kvm();
    let qemu = require_program("qemu-system-x86_64", "qemu-system-x86");
    let mut cmd = tiny::qemu_microvm(&qemu, &tiny::tiny_guest(), "kiln.test=hang", 128);
    let mut qemu = Followed::spawn(&mut cmd);
    assert!(
        qemu.wait_line("KILN-TINY: hang", TIMEOUT),
        "no `KILN-TINY: hang` line within {TIMEOUT:?}; output:\n{}",
        qemu.seen()
    );
    // The guest now spins with interrupts off: QEMU must keep running until killed.
    std::thread::sleep(Duration::from_millis(300));
    let still_running = qemu.child().try_wait().expect("try_wait").is_none();
    let seen = qemu.seen().to_owned();
    drop(qemu);
    assert!(
        still_running,
        "QEMU exited while the guest was spinning; output:\n{seen}"
    );
    let output = TinyOutput::parse(&seen);
    assert_eq!(output.entry, Some(Entry::Pvh), "{seen}");
    assert!(!output.done, "{seen}");
}
