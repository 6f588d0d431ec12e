//! The tiny freestanding test guest (guest/tiny): where its ELF is, what it prints, and
//! how to read that output.
//!
//! The ELF is built by tests/build.rs (nested cargo) and boots under Kiln's VMM, QEMU's
//! microvm and Firecracker alike, through the Linux 64-bit entry (`e_entry`) or the PVH
//! entry (Xen ELF note). Its output contract, line by line on the serial port (COM1):
//!
//! ```text
//! KILN-TINY: start entry=linux64|pvh      first thing it does
//! KILN-TINY: ...                          the lines of the scenario (kiln.test=NAME)
//! KILN-TINY: done                         unless the scenario ends or hangs the VM
//! ```
//! then 0xFE to port 0x64 (i8042 reset), a write of 0 (no `error` line) or 1 to port 0xf4
//! (QEMU isa-debug-exit: exit status 1 or 3) and `cli; hlt`. Problems are reported as
//! `KILN-TINY: error ...` lines. See guest/tiny/README.md for every scenario's lines.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Finished;

/// Prefix of every line the guest prints.
pub const PREFIX: &str = "KILN-TINY: ";
/// First line when entered through the Linux 64-bit boot protocol.
pub const START_LINUX64: &str = "KILN-TINY: start entry=linux64";
/// First line when entered through PVH.
pub const START_PVH: &str = "KILN-TINY: start entry=pvh";
/// Last line of a scenario that finished.
pub const DONE: &str = "KILN-TINY: done";
/// Prefix of the lines reporting a problem.
pub const ERROR_PREFIX: &str = "KILN-TINY: error ";
/// Command-line key selecting the scenario (`kiln.test=NAME`, default `print`).
pub const SCENARIO_PARAM: &str = "kiln.test";
/// Every scenario the guest knows.
pub const SCENARIOS: &[&str] = &[
    "print",
    "boot",
    "memmap",
    "cpuid",
    "msr",
    "cpus",
    "reset",
    "triple",
    "hang",
    "halt",
    "ports",
    "ticks",
    "count",
    "blk-read",
    "blk-write",
    "blk-ro",
    "blk-oob",
    "blk-flush",
    "blk-id",
    "blk-swap",
    "blk-burst",
    "net-tx",
    "net-rx",
    "virtio-loop",
    "virtio-oob",
    "virtio-qsize",
    "virtio-kicks",
    "virtio-mmio-junk",
    "vsock-connect",
    "vsock-listen",
    "vsock-bad",
    "virtio-giant",
    "virtio-wrap",
    "virtio-config",
    "net-hostile",
    "bus-junk",
    "legacy-junk",
    "irq-storm",
    "rng-read",
    "rng-hostile",
];
/// Physical (= virtual) load address of the image.
pub const LOAD_ADDR: u64 = 0x10_0000;
/// The i8042 command port and value the guest writes to request a reset.
pub const RESET_PORT: u16 = 0x64;
pub const RESET_VALUE: u8 = 0xfe;
/// The port of QEMU's isa-debug-exit device the guest writes after the reset request.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// QEMU's exit status when the guest wrote 0 to isa-debug-exit (no error line).
pub const QEMU_EXIT_OK: i32 = 1;
/// QEMU's exit status when the guest wrote 1 to isa-debug-exit (error lines printed).
pub const QEMU_EXIT_ERRORS: i32 = 3;

/// Path of the tiny guest's ELF, panicking with a clear message when it is missing.
pub fn tiny_guest() -> PathBuf {
    let path = PathBuf::from(env!("KILN_TINY_GUEST"));
    assert!(
        path.is_file(),
        "MISSING PRECONDITION: the tiny guest ELF {} does not exist; it is built by tests/build.rs \
         (rebuild the kiln-tests package: `cargo build -p kiln-tests --tests`)",
        path.display()
    );
    path
}

/// The command line selecting `scenario`.
pub fn cmdline(scenario: &str) -> String {
    format!("{SCENARIO_PARAM}={scenario}")
}

/// Where the image loads and where its two entries are, read from the ELF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Physical range of the loadable segment(s): the VMM must put nothing else there
    /// (no boot_params, command line, page tables or stack). The guest's stack, page tables
    /// and GDT are inside it.
    pub load: Range<u64>,
    /// `e_entry`: the Linux 64-bit boot entry.
    pub linux64_entry: u64,
    /// The XEN_ELFNOTE_PHYS32_ENTRY address: the PVH entry.
    pub pvh_entry: Option<u64>,
}

/// Reads the load range and entries of the ELF at `path`.
pub fn image(path: &Path) -> Image {
    let data =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_image(&data)
        .unwrap_or_else(|| panic!("{} is not a well-formed x86-64 ELF", path.display()))
}

fn le(data: &[u8], at: usize, len: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(len)?)?;
    Some(
        bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| acc << 8 | u64::from(b)),
    )
}

fn parse_image(data: &[u8]) -> Option<Image> {
    const PT_LOAD: u64 = 1;
    const PT_NOTE: u64 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u64 = 18;
    if data.get(..5)? != b"\x7fELF\x02" || le(data, 0x12, 2)? != 62 {
        return None;
    }
    let linux64_entry = le(data, 0x18, 8)?;
    let phoff = usize::try_from(le(data, 0x20, 8)?).ok()?;
    let phentsize = usize::try_from(le(data, 0x36, 2)?).ok()?;
    let phnum = usize::try_from(le(data, 0x38, 2)?).ok()?;
    let (mut start, mut end, mut pvh_entry) = (u64::MAX, 0u64, None);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        match le(data, ph, 4)? {
            PT_LOAD => {
                let paddr = le(data, ph + 0x18, 8)?;
                start = start.min(paddr);
                end = end.max(paddr.checked_add(le(data, ph + 0x28, 8)?)?);
            }
            PT_NOTE => {
                let mut at = usize::try_from(le(data, ph + 0x08, 8)?).ok()?;
                let stop = at.checked_add(usize::try_from(le(data, ph + 0x20, 8)?).ok()?)?;
                while at + 12 <= stop {
                    let namesz = usize::try_from(le(data, at, 4)?).ok()?;
                    let descsz = usize::try_from(le(data, at + 4, 4)?).ok()?;
                    let name = at + 12;
                    let desc = name + namesz.next_multiple_of(4);
                    if le(data, at + 8, 4)? == XEN_ELFNOTE_PHYS32_ENTRY
                        && data.get(name..name + namesz)? == b"Xen\0"
                    {
                        pvh_entry = Some(le(data, desc, descsz.min(8))?);
                    }
                    at = desc + descsz.next_multiple_of(4);
                }
            }
            _ => {}
        }
    }
    (start < end).then_some(Image {
        load: start..end,
        linux64_entry,
        pvh_entry,
    })
}

/// How the guest says it was entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Linux64,
    Pvh,
}

/// One memory-map line (`mem addr=0x... size=0x... type=N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// The guest's output, split into its parts.
#[derive(Debug, Clone, Default)]
pub struct TinyOutput {
    /// From the start marker; `None` when it was not printed.
    pub entry: Option<Entry>,
    /// Bodies (text after `KILN-TINY: `) of the lines between the start marker and `done`.
    pub lines: Vec<String>,
    /// Whether `KILN-TINY: done` was printed.
    pub done: bool,
}

impl TinyOutput {
    /// Parses the guest's lines out of a VMM's stdout (other lines are ignored; `\r` is
    /// tolerated).
    pub fn parse(stdout: &str) -> Self {
        let mut out = TinyOutput::default();
        for line in stdout.lines().map(|l| l.trim_end_matches('\r')) {
            match line {
                START_LINUX64 => out.entry = Some(Entry::Linux64),
                START_PVH => out.entry = Some(Entry::Pvh),
                DONE => out.done = true,
                _ => {
                    if let Some(body) = line.strip_prefix(PREFIX) {
                        out.lines.push(body.to_string());
                    }
                }
            }
        }
        out
    }

    /// The `error ...` lines (without `error `).
    pub fn errors(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix("error "))
            .collect()
    }

    /// The value of the first line of the form `key=value` (value up to the end of the
    /// line, spaces included): e.g. `value("cmdline")`, `value("cpus")`.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    /// The `key=value` fields of every line starting with the word `topic` (e.g. `mem`,
    /// `cpuid`), in order.
    pub fn topic(&self, topic: &str) -> Vec<Vec<(&str, &str)>> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix(topic)?.strip_prefix(' '))
            .map(|rest| rest.split(' ').filter_map(|f| f.split_once('=')).collect())
            .collect()
    }

    /// The memory map printed by the `memmap` scenario.
    pub fn mem_regions(&self) -> Vec<MemRegion> {
        self.topic("mem")
            .iter()
            .filter_map(|fields| {
                Some(MemRegion {
                    addr: parse_hex(field(fields, "addr")?)?,
                    size: parse_hex(field(fields, "size")?)?,
                    kind: field(fields, "type")?.parse().ok()?,
                })
            })
            .collect()
    }

    /// The fields of the `cpuid leaf=...` line for `leaf` (e.g. `ecx`, `edx`, `sig`).
    pub fn cpuid(&self, leaf: u32) -> Option<Vec<(&str, &str)>> {
        let want = format!("{leaf:#x}");
        self.topic("cpuid")
            .into_iter()
            .find(|fields| field(fields, "leaf") == Some(want.as_str()))
    }

    /// The `cpus=` line of the `cpus` scenario: `Some(None)` for `cpus=none`.
    pub fn cpus(&self) -> Option<Option<u32>> {
        let value = self.value("cpus")?;
        if value == "none" {
            Some(None)
        } else {
            value.parse().ok().map(Some)
        }
    }
}

/// The value of `key` among `fields`.
pub fn field<'a>(fields: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Parses the guest's `0x...` numbers.
pub fn parse_hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

/// Asserts that a VMM run of a scenario that ends with `done` went well: the VMM exited 0
/// without panicking, and the guest printed `done` and no error line. Returns the guest's
/// output.
pub fn assert_clean_run(f: &Finished) -> TinyOutput {
    assert!(!f.stderr.contains("panicked"), "the VMM panicked\n{f}");
    assert_eq!(f.code(), 0, "{f}");
    let out = TinyOutput::parse(&f.stdout);
    assert!(out.done, "the guest did not finish\n{f}");
    assert!(
        out.errors().is_empty(),
        "guest errors {:?}\n{f}",
        out.errors()
    );
    out
}

/// A QEMU microvm command booting `elf` (through PVH: QEMU uses the ELF note) with
/// `cmdline`, `mem_mib` of RAM, the serial port on stdout and isa-debug-exit at 0xf4.
/// Add further arguments (e.g. `-smp 2`, `-device i8042`) before spawning.
pub fn qemu_microvm(qemu: &Path, elf: &Path, cmdline: &str, mem_mib: u32) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "microvm,accel=kvm,acpi=off", "-m"])
        .arg(mem_mib.to_string())
        .arg("-kernel")
        .arg(elf)
        .args(["-append", cmdline])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4"]);
    cmd
}
