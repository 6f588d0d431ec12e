//! Fast tier: Kiln's VMM boots the tiny test guest from `--config-file ... --no-api`.
//!
//! Each boot takes milliseconds. Covered: both boot entries (PVH and Linux 64-bit) with 1 and
//! 2 vCPUs, what the guest sees (boot information, memory map, command line, MP table,
//! CPUID), every way the VM ends (guest reset → 0, triple fault → 2 with vCPU/exit/RIP,
//! SIGTERM → 0 for a busy or halted guest), unknown ports (ignored, or stopping the VM under
//! `--strict-io`), `--serial-out`, and bad config
//! files and bad kernel images, each with its own error and no panic.
//!
//! Needs /dev/kvm and the `vmm` binary (`cargo test -p vmm -p kiln-tests` builds both).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::tiny::{self, Entry, MemRegion, TinyOutput, E820_RAM};
use kiln_tests::{elf, require_bin, require_kvm, run_with_timeout, Finished, ScratchDir};

/// Generous: a boot takes a few milliseconds; a hang is killed at the deadline.
const TIMEOUT: Duration = Duration::from_secs(20);
const E820_RESERVED: u32 = 2;
/// Exit codes of the VMM (docs/vmm.md).
const EXIT_GUEST_CRASH: i32 = 2;
const EXIT_START_FAILED: i32 = 5;
const EXIT_STRICT_IO: i32 = 6;
const EXIT_BAD_CONFIG: i32 = 152;

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A config file in Firecracker's shape.
fn config(
    kernel: &Path,
    boot_args: Option<&str>,
    vcpus: u8,
    mem_mib: u32,
    extra_machine: &str,
) -> String {
    let args = boot_args
        .map(|a| format!(", \"boot_args\": {}", json_str(a)))
        .unwrap_or_default();
    format!(
        "{{\"boot-source\": {{\"kernel_image_path\": {}{args}}},\n \"machine-config\": {{\"vcpu_count\": {vcpus}, \"mem_size_mib\": {mem_mib}{extra_machine}}}}}\n",
        json_str(kernel.to_str().expect("utf-8 path"))
    )
}

fn vmm_command(config_path: &Path, extra: &[&str]) -> Command {
    require_kvm();
    let mut cmd = Command::new(require_bin("vmm"));
    cmd.arg("--config-file")
        .arg(config_path)
        .arg("--no-api")
        .args(extra);
    cmd
}

fn assert_no_panic(f: &Finished) {
    assert!(!f.stderr.contains("panicked"), "the VMM panicked\n{f}");
}

/// Boots the tiny guest with `boot_args`; returns the run and the guest's output.
fn boot(
    boot_args: &str,
    vcpus: u8,
    mem_mib: u32,
    entry: Entry,
    extra_machine: &str,
) -> (Finished, TinyOutput) {
    let dir = ScratchDir::new("kiln-vmm-boot");
    let cfg = dir.write(
        "vm.json",
        config(
            &tiny::tiny_guest(),
            Some(boot_args),
            vcpus,
            mem_mib,
            extra_machine,
        )
        .as_bytes(),
    );
    let entry_flag = match entry {
        Entry::Pvh => "pvh",
        Entry::Linux64 => "linux64",
    };
    let finished = run_with_timeout(
        &mut vmm_command(&cfg, &["--boot-entry", entry_flag]),
        TIMEOUT,
    );
    assert_no_panic(&finished);
    let output = TinyOutput::parse(&finished.stdout);
    (finished, output)
}

/// Boots a scenario that ends with `done` and the guest's reset: exit code 0, the right
/// start marker, no error line.
fn boot_clean(boot_args: &str, vcpus: u8, mem_mib: u32, entry: Entry) -> TinyOutput {
    let (f, out) = boot(boot_args, vcpus, mem_mib, entry, "");
    assert_eq!(
        out.entry,
        Some(entry),
        "start marker ({boot_args}, {vcpus} vCPUs)\n{f}"
    );
    assert!(out.done, "no done line\n{f}");
    assert!(out.errors().is_empty(), "guest error lines\n{f}");
    assert_eq!(f.code(), 0, "exit code after the guest's reset\n{f}");
    assert!(
        f.stderr.contains("i8042 CPU reset"),
        "reset not reported\n{f}"
    );
    out
}

const ENTRIES: [Entry; 2] = [Entry::Pvh, Entry::Linux64];

#[test]
fn boots_with_one_and_two_vcpus_through_both_entries() {
    for entry in ENTRIES {
        for vcpus in [1u8, 2] {
            let out = boot_clean("kiln.test=boot", vcpus, 128, entry);
            let fields = out.topic("boot");
            let f = fields
                .first()
                .unwrap_or_else(|| panic!("no boot line: {out:?}"));
            let get = |k| tiny::field(f, k).unwrap_or_else(|| panic!("no {k} in {f:?}"));
            let (want_entry, want_info) = match entry {
                Entry::Pvh => ("pvh", "0x6000"),
                Entry::Linux64 => ("linux64", "0x7000"),
            };
            assert_eq!(get("entry"), want_entry);
            assert_eq!(get("info"), want_info, "boot information address");
            assert_eq!(get("cmdline"), "0x20000", "command line address");
            assert_eq!(get("cmdline_len"), "14");
            assert_eq!(get("memmap_entries"), "3");
        }
    }
}

#[test]
fn memory_map_follows_the_layout() {
    for entry in ENTRIES {
        let out = boot_clean("kiln.test=memmap", 1, 128, entry);
        let want = vec![
            MemRegion {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM,
            },
            MemRegion {
                addr: 0x9fc00,
                size: 0x10_0000 - 0x9fc00,
                kind: E820_RESERVED,
            },
            MemRegion {
                addr: 0x10_0000,
                size: (128 << 20) - 0x10_0000,
                kind: E820_RAM,
            },
        ];
        assert_eq!(out.mem_regions(), want, "{entry:?}");
    }
    // More RAM than fits below the 32-bit MMIO gap (which starts at 0xd0000000): the rest
    // is mapped from 4 GiB. The pages are reserved, not touched.
    let out = boot_clean("kiln.test=memmap", 1, 3584, Entry::Pvh);
    let regions = out.mem_regions();
    assert_eq!(regions.len(), 4, "{regions:?}");
    assert_eq!(
        regions[2],
        MemRegion {
            addr: 0x10_0000,
            size: 0xd000_0000 - 0x10_0000,
            kind: E820_RAM
        }
    );
    assert_eq!(
        regions[3],
        MemRegion {
            addr: 1 << 32,
            size: (3584u64 << 20) - 0xd000_0000,
            kind: E820_RAM
        }
    );
}

#[test]
fn command_line_reaches_the_guest_verbatim() {
    let cmdline = "kiln.test=print console=ttyS0 quoted=\"a b\" x=1,2 -- init-arg";
    for entry in ENTRIES {
        let out = boot_clean(cmdline, 1, 64, entry);
        assert_eq!(out.value("cmdline"), Some(cmdline), "{entry:?}");
    }
}

#[test]
fn default_command_line_is_firecrackers() {
    let dir = ScratchDir::new("kiln-vmm-boot");
    let cfg = dir.write(
        "vm.json",
        config(&tiny::tiny_guest(), None, 1, 64, "").as_bytes(),
    );
    let f = run_with_timeout(&mut vmm_command(&cfg, &[]), TIMEOUT);
    assert_eq!(f.code(), 0, "{f}");
    let out = TinyOutput::parse(&f.stdout);
    let cmdline = out
        .value("cmdline")
        .unwrap_or_else(|| panic!("no cmdline line\n{f}"));
    assert!(cmdline.starts_with("reboot=k panic=1 pci=off"), "{cmdline}");
}

#[test]
fn mp_table_lists_every_vcpu() {
    for (vcpus, entry) in [
        (1u8, Entry::Pvh),
        (2, Entry::Linux64),
        (2, Entry::Pvh),
        (5, Entry::Pvh),
    ] {
        let out = boot_clean("kiln.test=cpus", vcpus, 64, entry);
        assert_eq!(
            out.cpus(),
            Some(Some(u32::from(vcpus))),
            "{vcpus} vCPUs, {entry:?}: {out:?}"
        );
        let mp = out.topic("mp");
        assert_eq!(
            mp.first().and_then(|f| tiny::field(f, "floating")),
            Some("0x9fc00"),
            "{out:?}"
        );
    }
}

fn cpuid_reg(out: &TinyOutput, leaf: u32, reg: &str) -> u64 {
    let fields = out
        .cpuid(leaf)
        .unwrap_or_else(|| panic!("no cpuid leaf {leaf:#x}: {out:?}"));
    tiny::parse_hex(tiny::field(&fields, reg).unwrap_or_else(|| panic!("no {reg}: {fields:?}")))
        .expect("hex")
}

/// What CPUID the guest sees, with no template and with `Baseline`. KVM's signature is at
/// 0x40000000 either way. Whether the template's masks reach the guest depends on the host:
/// where guest ring 0 is emulated (kvm_pvm), only some do (CX16 does; XSAVE, AVX and leaf 7
/// show the host's values), so Linux guests there also get `noxsave clearcpuid=...` on their
/// command line; elsewhere every mask must reach the guest.
#[test]
fn cpuid_has_kvm_signature_and_baseline_hides_features() {
    const CX16: u64 = 1 << 13;
    const XSAVE: u64 = 1 << 26;
    const AVX512F: u64 = 1 << 16;
    for entry in ENTRIES {
        let plain = boot_clean("kiln.test=cpuid", 1, 64, entry);
        let sig = plain.cpuid(0x4000_0000).expect("hypervisor leaf");
        assert_eq!(tiny::field(&sig, "sig"), Some("KVMKVMKVM"), "{plain:?}");
        let base = {
            let (f, out) = boot(
                "kiln.test=cpuid",
                1,
                64,
                entry,
                ", \"cpu_template\": \"Baseline\"",
            );
            assert_eq!(f.code(), 0, "{f}");
            out
        };
        let ecx = cpuid_reg(&base, 1, "ecx");
        let ebx7 = cpuid_reg(&base, 7, "ebx");
        eprintln!(
            "{entry:?}: leaf 1 ecx {:#x} -> {ecx:#x} with Baseline; leaf 7 ebx {:#x} -> {ebx7:#x}",
            cpuid_reg(&plain, 1, "ecx"),
            cpuid_reg(&plain, 7, "ebx")
        );
        assert_eq!(ecx & CX16, 0, "Baseline must hide CMPXCHG16B: {base:?}");
        if !kiln_tests::is_pvm_host() {
            assert_eq!(ecx & XSAVE, 0, "Baseline must hide XSAVE: {base:?}");
            assert_eq!(ebx7 & AVX512F, 0, "Baseline must hide AVX-512: {base:?}");
        }
    }
}

/// Kiln's jailer hands the VMM KVM's supported CPUID in its environment
/// (`KILN_HOST_CPUID`; tests/tests/jailer.rs sees the VMM take it). A bad value is named in a
/// warning and ignored: the VMM asks KVM itself, and the guest sees the CPUID it sees
/// without one.
#[test]
fn a_bad_host_cpuid_in_the_environment_is_named_and_kvm_asked_instead() {
    let plain = boot_clean("kiln.test=cpuid", 1, 64, Entry::Pvh);
    let dir = ScratchDir::new("kiln-vmm-boot");
    let cfg = dir.write(
        "vm.json",
        config(&tiny::tiny_guest(), Some("kiln.test=cpuid"), 1, 64, "").as_bytes(),
    );
    let f = run_with_timeout(
        vmm_command(&cfg, &[]).env("KILN_HOST_CPUID", "[[1,2,3]]"),
        TIMEOUT,
    );
    assert_no_panic(&f);
    assert_eq!(f.code(), 0, "{f}");
    assert!(
        f.stderr.contains(
            "host CPUID: ignoring the jailer's answer (KILN_HOST_CPUID: an entry of 3 bytes"
        ),
        "{f}"
    );
    let out = TinyOutput::parse(&f.stdout);
    assert!(plain.cpuid(1).is_some(), "{plain:?}");
    for leaf in [0, 1, 7, 0x4000_0000] {
        assert_eq!(out.cpuid(leaf), plain.cpuid(leaf), "leaf {leaf:#x}\n{f}");
    }
}

#[test]
fn unknown_ports_are_ignored() {
    for entry in ENTRIES {
        let out = boot_clean("kiln.test=ports", 1, 64, entry);
        assert!(out.lines.iter().any(|l| l == "ports survived"), "{out:?}");
        assert_eq!(out.topic("port").len(), 4, "{out:?}");
    }
}

#[test]
fn strict_io_stops_the_vm_at_the_first_unknown_port_naming_port_and_vcpu() {
    for entry in ENTRIES {
        let dir = ScratchDir::new("kiln-vmm-boot");
        let cfg = dir.write(
            "vm.json",
            config(&tiny::tiny_guest(), Some("kiln.test=ports"), 1, 64, "").as_bytes(),
        );
        let entry_flag = match entry {
            Entry::Pvh => "pvh",
            Entry::Linux64 => "linux64",
        };
        let f = run_with_timeout(
            &mut vmm_command(&cfg, &["--boot-entry", entry_flag, "--strict-io"]),
            TIMEOUT,
        );
        assert_no_panic(&f);
        let out = TinyOutput::parse(&f.stdout);
        // The first unknown port of the scenario is 0x80; nothing after it runs.
        assert_eq!(out.topic("port").len(), 1, "{f}");
        assert!(!out.lines.iter().any(|l| l == "ports survived"), "{f}");
        assert_eq!(f.code(), EXIT_STRICT_IO, "{f}");
        assert!(
            f.stderr
                .contains("vCPU 0 stopped: write to I/O port 0x80 (1-byte access) with no device (--strict-io)"),
            "{f}"
        );
    }
}

#[test]
fn guest_reset_exits_zero() {
    for entry in ENTRIES {
        let (f, out) = boot("kiln.test=reset", 2, 64, entry, "");
        assert!(out.lines.iter().any(|l| l == "reset via i8042"), "{f}");
        assert!(
            !out.done && out.errors().is_empty(),
            "the reset must end the VM at once\n{f}"
        );
        assert_eq!(f.code(), 0, "{f}");
        assert!(
            f.stderr
                .contains("the guest reset the machine (i8042 CPU reset)"),
            "{f}"
        );
    }
}

#[test]
fn triple_fault_exits_nonzero_naming_vcpu_exit_and_rip() {
    for entry in ENTRIES {
        let (f, out) = boot("kiln.test=triple", 1, 64, entry, "");
        assert!(out.lines.iter().any(|l| l == "triple fault now"), "{f}");
        assert!(!out.done, "{f}");
        assert_eq!(f.code(), EXIT_GUEST_CRASH, "{f}");
        assert!(
            f.stderr.contains("vCPU 0 stopped: KVM_EXIT_SHUTDOWN"),
            "{f}"
        );
        assert!(f.stderr.contains(" at RIP 0x"), "{f}");
    }
}

/// Starts the VMM on a scenario that never ends, waits for `marker` on its stdout, sends
/// SIGTERM and returns the run.
fn sigterm_after(kernel: &Path, scenario: &str, vcpus: u8, marker: &str) -> (Finished, Duration) {
    let dir = ScratchDir::new("kiln-vmm-boot");
    let out_path = dir.join("serial.out");
    let cfg = dir.write(
        "vm.json",
        config(kernel, Some(scenario), vcpus, 64, "").as_bytes(),
    );
    let start = Instant::now();
    let mut child = vmm_command(&cfg, &["--serial-out", out_path.to_str().expect("utf-8")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    let seen = loop {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        if text.contains(marker) {
            break true;
        }
        if start.elapsed() > TIMEOUT || child.try_wait().ok().flatten().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // SAFETY: kill(2) on the child's pid, which has not been waited for yet.
    let rc = unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGTERM) };
    assert_eq!(rc, 0, "kill");
    let signalled = Instant::now();
    let f = kiln_tests::wait_with_timeout(&mut child, TIMEOUT, start);
    assert!(seen, "marker {marker:?} never appeared\n{f}");
    (f, signalled.elapsed())
}

#[test]
fn sigterm_stops_a_busy_or_halted_guest_with_exit_zero() {
    for (scenario, marker) in [
        ("kiln.test=hang", "KILN-TINY: hang"),
        ("kiln.test=halt", "KILN-TINY: halt"),
    ] {
        for vcpus in [1u8, 2] {
            let (f, took) = sigterm_after(&tiny::tiny_guest(), scenario, vcpus, marker);
            assert_no_panic(&f);
            assert_eq!(f.code(), 0, "{scenario}, {vcpus} vCPUs\n{f}");
            assert!(f.stderr.contains("received SIGTERM"), "{f}");
            assert!(took < Duration::from_secs(3), "stopping took {took:?}\n{f}");
        }
    }
}

#[test]
fn serial_out_writes_the_console_to_a_file() {
    let dir = ScratchDir::new("kiln-vmm-boot");
    let out_path = dir.join("console.txt");
    let cfg = dir.write(
        "vm.json",
        config(&tiny::tiny_guest(), Some("kiln.test=print"), 1, 64, "").as_bytes(),
    );
    let f = run_with_timeout(
        &mut vmm_command(&cfg, &["--serial-out", out_path.to_str().expect("utf-8")]),
        TIMEOUT,
    );
    assert_eq!(f.code(), 0, "{f}");
    assert!(
        !f.stdout.contains(tiny::PREFIX),
        "console leaked to stdout\n{f}"
    );
    let console = std::fs::read_to_string(&out_path).expect("console file");
    let out = TinyOutput::parse(&console);
    assert!(
        out.done && out.value("cmdline") == Some("kiln.test=print"),
        "{console}"
    );
}

/// Process start to the guest's first serial byte, measured from outside (spawn to the first
/// byte on the VMM's stdout); printed for the record, bounded loosely (the host is shared).
#[test]
fn first_serial_byte_arrives_within_milliseconds() {
    let dir = ScratchDir::new("kiln-vmm-boot");
    let cfg = dir.write(
        "vm.json",
        config(&tiny::tiny_guest(), Some("kiln.test=reset"), 1, 128, "").as_bytes(),
    );
    let mut samples = Vec::new();
    for _ in 0..15 {
        let start = Instant::now();
        let mut child = vmm_command(&cfg, &[])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vmm");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut byte = [0u8; 1];
        stdout.read_exact(&mut byte).expect("first byte");
        samples.push(start.elapsed());
        let mut rest = Vec::new();
        let _ = stdout.read_to_end(&mut rest);
        let status = child.wait().expect("wait");
        assert!(status.success(), "{status:?}");
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    eprintln!(
        "process start -> first serial byte: min {:?}, median {median:?}, max {:?}",
        samples[0],
        samples[samples.len() - 1]
    );
    assert!(
        median < Duration::from_millis(250),
        "median {median:?}: {samples:?}"
    );
}

/// Runs the VMM on a config and expects a failure with `code` whose stderr contains `want`.
fn expect_failure(cfg: &Path, extra: &[&str], code: i32, want: &str, case: &str) {
    let f = run_with_timeout(&mut vmm_command(cfg, extra), TIMEOUT);
    assert_no_panic(&f);
    assert_eq!(f.code(), code, "{case}: exit code\n{f}");
    assert!(
        f.stderr.contains(want),
        "{case}: stderr does not contain {want:?}\n{f}"
    );
    assert!(
        f.stdout.is_empty(),
        "{case}: the guest must not have run\n{f}"
    );
}

#[test]
fn bad_config_files_are_clear_errors() {
    let dir = ScratchDir::new("kiln-vmm-boot");
    let kernel = tiny::tiny_guest();
    let k = json_str(kernel.to_str().expect("utf-8"));
    let dir_path = json_str(dir.path().to_str().expect("utf-8"));
    let missing = json_str(dir.join("nope").to_str().expect("utf-8"));
    let mc = "\"machine-config\": {\"vcpu_count\": 1, \"mem_size_mib\": 64}";
    // Each file is opened when the configuration is read (as Firecracker opens them at the
    // request): the message names the file and the system's reason.
    let cannot_open = |what: &str| {
        format!("{what} {missing} cannot be opened: No such file or directory (os error 2)")
    };
    let missing_kernel = cannot_open("boot-source: the kernel file");
    let missing_initrd = cannot_open("boot-source: the initrd file");
    let missing_drive = cannot_open("drives: the backing file");
    let cases: Vec<(&str, String, &str)> = vec![
        ("invalid JSON", "{\"boot-source\": ".into(), "invalid JSON"),
        ("not an object", "[1, 2]".into(), "invalid JSON"),
        ("unknown top-level field", format!("{{\"boot_source\": {{\"kernel_image_path\": {k}}}}}"), "unknown field `boot_source`"),
        (
            "unknown machine-config field",
            format!("{{\"boot-source\": {{\"kernel_image_path\": {k}}}, \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 64, \"vcpus\": 2}}}}"),
            "unknown field `vcpus`",
        ),
        (
            "unknown boot-source field",
            format!("{{\"boot-source\": {{\"kernel_image_path\": {k}, \"kernel\": 1}}, {mc}}}"),
            "unknown field `kernel`",
        ),
        (
            "wrong type",
            format!("{{\"boot-source\": {{\"kernel_image_path\": {k}}}, \"machine-config\": {{\"vcpu_count\": \"two\", \"mem_size_mib\": 64}}}}"),
            "invalid type",
        ),
        ("no boot-source", format!("{{{mc}}}"), "boot-source is missing"),
        (
            "zero vCPUs",
            format!("{{\"boot-source\": {{\"kernel_image_path\": {k}}}, \"machine-config\": {{\"vcpu_count\": 0, \"mem_size_mib\": 64}}}}"),
            "vcpu_count 0 is out of range",
        ),
        (
            "too many vCPUs",
            format!("{{\"boot-source\": {{\"kernel_image_path\": {k}}}, \"machine-config\": {{\"vcpu_count\": 33, \"mem_size_mib\": 64}}}}"),
            "vcpu_count 33 is out of range",
        ),
        (
            "too little memory",
            format!("{{\"boot-source\": {{\"kernel_image_path\": {k}}}, \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 1}}}}"),
            "mem_size_mib 1 is out of range",
        ),
        (
            "too much memory",
            format!("{{\"boot-source\": {{\"kernel_image_path\": {k}}}, \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 999999999}}}}"),
            "mem_size_mib 999999999 is out of range",
        ),
        (
            "unknown CPU template",
            format!("{{\"boot-source\": {{\"kernel_image_path\": {k}}}, \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 64, \"cpu_template\": \"Z9\"}}}}"),
            "unknown variant `Z9`",
        ),
        ("missing kernel", format!("{{\"boot-source\": {{\"kernel_image_path\": {missing}}}, {mc}}}"), &missing_kernel),
        ("kernel is a directory", format!("{{\"boot-source\": {{\"kernel_image_path\": {dir_path}}}, {mc}}}"), "cannot be opened: it is a directory, not a regular file"),
        (
            "missing initrd",
            format!("{{\"boot-source\": {{\"kernel_image_path\": {k}, \"initrd_path\": {missing}}}, {mc}}}"),
            &missing_initrd,
        ),
        (
            "missing drive file",
            format!("{{\"boot-source\": {{\"kernel_image_path\": {k}}}, {mc}, \"drives\": [{{\"drive_id\": \"root\", \"path_on_host\": {missing}, \"is_root_device\": true}}]}}"),
            &missing_drive,
        ),
    ];
    for (case, text, want) in cases {
        let cfg = dir.write("vm.json", text.as_bytes());
        expect_failure(&cfg, &[], EXIT_BAD_CONFIG, want, case);
    }
    expect_failure(
        &dir.join("absent.json"),
        &[],
        EXIT_BAD_CONFIG,
        "cannot read config file",
        "missing config file",
    );
    // A device is refused before anything is read (it could never end, or block).
    expect_failure(
        Path::new("/dev/zero"),
        &[],
        EXIT_BAD_CONFIG,
        "is a character device, not a regular file or a pipe",
        "device as config file",
    );
    // A pipe that never ends is bounded, not read until memory runs out.
    let vmm = require_bin("vmm");
    let f = run_with_timeout(
        Command::new("bash").arg("-c").arg(format!(
            "exec {} --config-file <(yes) --no-api",
            vmm.display()
        )),
        TIMEOUT,
    );
    assert_no_panic(&f);
    assert_eq!(f.code(), EXIT_BAD_CONFIG, "endless pipe: exit code\n{f}");
    assert!(
        f.stderr.contains("larger than 1048576 bytes"),
        "endless pipe: stderr\n{f}"
    );
}

/// The tiny guest's ELF with a byte-level change.
fn patched_guest(patch: impl FnOnce(&mut Vec<u8>, &ElfInfo)) -> Vec<u8> {
    let mut bytes = std::fs::read(tiny::tiny_guest()).expect("read tiny guest");
    let info = elf_info(&bytes);
    patch(&mut bytes, &info);
    bytes
}

/// Offsets of the tiny guest's program headers.
struct ElfInfo {
    load_phdr: usize,
    note_phdr: usize,
}

fn elf_info(b: &[u8]) -> ElfInfo {
    let le = |at: usize, n: usize| {
        b[at..at + n]
            .iter()
            .rev()
            .fold(0usize, |a, x| (a << 8) | usize::from(*x))
    };
    let (phoff, phentsize, phnum) = (le(0x20, 8), le(0x36, 2), le(0x38, 2));
    let find = |ty: usize| {
        (0..phnum)
            .map(|i| phoff + i * phentsize)
            .find(|&p| le(p, 4) == ty)
            .expect("phdr")
    };
    ElfInfo {
        load_phdr: find(1),
        note_phdr: find(4),
    }
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn bad_kernel_images_are_clear_errors() {
    let dir = ScratchDir::new("kiln-vmm-boot");
    let mut bzimage_32bit_only = vec![0u8; 8192];
    bzimage_32bit_only[0x1f1] = 4;
    bzimage_32bit_only[0x202..0x206].copy_from_slice(b"HdrS");
    bzimage_32bit_only[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    bzimage_32bit_only[0x211] = 1;
    let mut bzimage_old = bzimage_32bit_only.clone();
    bzimage_old[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty file", vec![], "neither an ELF vmlinux nor a bzImage"),
        (
            "text file",
            b"#!/bin/sh\necho not a kernel\n".to_vec(),
            "neither an ELF vmlinux nor a bzImage",
        ),
        (
            "32-bit ELF",
            patched_guest(|b, _| b[4] = 1),
            "not a 64-bit ELF",
        ),
        (
            "big-endian ELF",
            patched_guest(|b, _| b[5] = 2),
            "not a little-endian ELF",
        ),
        (
            "aarch64 ELF",
            patched_guest(|b, _| b[0x12] = 183),
            "not an x86-64 ELF",
        ),
        (
            "truncated ELF",
            patched_guest(|b, _| b.truncate(100)),
            "runs past the end of the file",
        ),
        (
            "program headers past the end",
            patched_guest(|b, _| put_u64(b, 0x20, 1 << 40)),
            "program header table",
        ),
        (
            "segment above RAM",
            patched_guest(|b, i| put_u64(b, i.load_phdr + 0x18, 0x4000_0000)),
            "does not fit in guest RAM",
        ),
        (
            "segment in low memory",
            patched_guest(|b, i| put_u64(b, i.load_phdr + 0x18, 0x8000)),
            "below 1 MiB",
        ),
        (
            "segment file size above its memory size",
            patched_guest(|b, i| put_u64(b, i.load_phdr + 0x20, u64::MAX - 4096)),
            "larger than p_memsz",
        ),
        (
            "segment size overflowing",
            patched_guest(|b, i| put_u64(b, i.load_phdr + 0x28, u64::MAX - 4096)),
            "does not fit in guest RAM",
        ),
        (
            "entry outside the image",
            patched_guest(|b, _| put_u64(b, 0x18, 0x30_0000)),
            "entry point 0x300000 is not inside",
        ),
        (
            "bzImage without 64-bit entry",
            bzimage_32bit_only,
            "no 64-bit entry point",
        ),
        ("bzImage with an old protocol", bzimage_old, "too old"),
    ];
    for (case, bytes, want) in cases {
        let kernel = dir.write("kernel", &bytes);
        let cfg = dir.write(
            "vm.json",
            config(&kernel, Some("kiln.test=print"), 1, 64, "").as_bytes(),
        );
        expect_failure(&cfg, &[], EXIT_START_FAILED, want, case);
    }

    // The PVH entry requested from an image without a PVH note.
    let no_note =
        patched_guest(|b, i| b[i.note_phdr..i.note_phdr + 4].copy_from_slice(&0u32.to_le_bytes()));
    let kernel = dir.write("kernel", &no_note);
    let cfg = dir.write("vm.json", config(&kernel, None, 1, 64, "").as_bytes());
    expect_failure(
        &cfg,
        &["--boot-entry", "pvh"],
        EXIT_START_FAILED,
        "no PVH entry note",
        "PVH without note",
    );

    // Initrds that cannot be placed.
    let guest = tiny::tiny_guest();
    let k = json_str(guest.to_str().expect("utf-8"));
    for (case, size, mem, want) in [
        ("empty initrd", 0usize, 64, "is empty"),
        (
            "initrd larger than RAM",
            3 << 20,
            2,
            "does not fit in guest memory",
        ),
    ] {
        let rd = dir.write("initrd", vec![0x5a; size]);
        let text = format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {k}, \"initrd_path\": {}}}, \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": {mem}}}}}",
            json_str(rd.to_str().expect("utf-8"))
        );
        let cfg = dir.write("vm.json", text.as_bytes());
        expect_failure(&cfg, &[], EXIT_START_FAILED, want, case);
    }

    // A command line longer than the kernel accepts.
    let cfg = dir.write(
        "vm.json",
        config(&guest, Some(&"x".repeat(3000)), 1, 64, "").as_bytes(),
    );
    expect_failure(
        &cfg,
        &[],
        EXIT_START_FAILED,
        "longer than 2047 bytes",
        "command line too long",
    );
}

/// 64-bit code at 1 MiB: prints 'E', runs `lock cmpxchg16b`, prints 'X', halts.
const CMPXCHG16B_GUEST: [u8; 64] = [
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x45, 0xee, 0x48, 0x8d, 0x3d, 0x22, 0x00, 0x00, 0x00, 0x31, 0xc0,
    0x31, 0xd2, 0x31, 0xdb, 0x31, 0xc9, 0xf0, 0x48, 0x0f, 0xc7, 0x0f, 0xb0, 0x58, 0x66, 0xba, 0xf8,
    0x03, 0xee, 0xf4, 0xeb, 0xfd, 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// Where guest ring 0 is emulated (kvm_pvm), the emulator fails on `lock cmpxchg16b`: the
/// VM must stop with exit code 3 and a message naming the vCPU, the exit, the suberror, the
/// instruction bytes and RIP. Elsewhere the instruction runs and the guest halts until
/// SIGTERM.
#[test]
fn an_instruction_the_host_cannot_run_is_a_clear_vcpu_error() {
    let dir = ScratchDir::new("kiln-vmm-boot");
    let kernel = dir.write("cmpxchg16b.elf", elf::code_at(0x10_0000, &CMPXCHG16B_GUEST));
    if kiln_tests::is_pvm_host() {
        let cfg = dir.write("vm.json", config(&kernel, None, 1, 16, "").as_bytes());
        let f = run_with_timeout(&mut vmm_command(&cfg, &[]), TIMEOUT);
        assert_no_panic(&f);
        assert_eq!(f.code(), 3, "{f}");
        assert_eq!(f.stdout, "E", "{f}");
        for want in [
            "vCPU 0 stopped: KVM_EXIT_INTERNAL_ERROR suberror 1 (emulation failure)",
            "instruction bytes f0 48 0f c7 0f",
            "at RIP 0x100016",
        ] {
            assert!(f.stderr.contains(want), "stderr lacks {want:?}\n{f}");
        }
    } else {
        let (f, _) = sigterm_after(&kernel, "console=none", 1, "EX");
        assert_eq!(f.code(), 0, "{f}");
    }
}
