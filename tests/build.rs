//! Builds the tiny freestanding test guest (guest/tiny) and hands its path to the test kit
//! as `KILN_TINY_GUEST`.
//!
//! The guest is not a workspace member: it is built by a nested
//! `cargo build --release --target x86_64-unknown-linux-gnu` with its own target directory
//! (under OUT_DIR, so it never waits on the outer build's lock) and a clean environment:
//! only PATH, HOME and the rustup/cargo homes are kept, CARGO_ENCODED_RUSTFLAGS is set to
//! exactly the guest's flags, and the nested cargo runs from `/` so that no
//! `.cargo/config.toml` of the Kiln tree (its `+crt-static` rustflags and `build.target`)
//! is merged into the guest's configuration.
//!
//! The built ELF is then audited with objdump (when installed) for instructions that the
//! instruction emulator of the development hosts fails on (see shared notes host-kvm.md):
//! any SSE/AVX/x87 instruction, `cmpxchg16b`, `xsave`/`xrstor`, `fwait`, and `int3` outside
//! the padding after a call or return.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The only target installed; named explicitly so that rustflags skip the build script.
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Exactly the rustflags of the guest: no PIE (it is linked at a fixed address), no
/// `+crt-static` (no libc), and no SSE (the emulator fails on SSE arithmetic such as
/// `xorps`, which LLVM uses to zero memory). rustc warns that disabling SSE2 is being
/// phased out for this target; see guest/tiny/README.md for the fallback.
const GUEST_RUSTFLAGS: &[&str] = &[
    "-C",
    "relocation-model=static",
    "-C",
    "target-feature=-crt-static,-sse,-sse2",
];

/// Environment variables passed on to the nested cargo; everything else is cleared.
const KEPT_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "TMPDIR",
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let guest_dir = manifest_dir
        .parent()
        .expect("tests/ has a parent")
        .join("guest")
        .join("tiny");
    for item in ["src", "Cargo.toml", "Cargo.lock", "build.rs", "link.ld"] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(item).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let target_dir = PathBuf::from(env("OUT_DIR")).join("tiny-target");
    let elf = target_dir.join(TRIPLE).join("release").join("kiln-tiny");
    build_guest(&guest_dir, &target_dir);
    assert!(
        elf.is_file(),
        "the nested build of guest/tiny succeeded but {} is missing",
        elf.display()
    );
    audit(&elf);
    println!("cargo:rustc-env=KILN_TINY_GUEST={}", elf.display());
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

fn build_guest(guest_dir: &Path, target_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.env_clear();
    for name in KEPT_ENV {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    // The same compiler as the outer build (cargo resolves RUSTC for build scripts).
    if let Some(rustc) = std::env::var_os("RUSTC") {
        cmd.env("RUSTC", rustc);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", GUEST_RUSTFLAGS.join("\x1f"))
        .current_dir("/")
        .args([
            "build",
            "--release",
            "--locked",
            "--offline",
            "-j1",
            "--target",
            TRIPLE,
        ])
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        // Cargo reads this build script's stdout for directives: keep the nested cargo's
        // output on stderr.
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit());
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build guest/tiny: {e}"));
    assert!(
        status.success(),
        "building guest/tiny failed ({status}); its output is above"
    );
}

/// Fails the build when the guest contains an instruction the emulator cannot run.
fn audit(elf: &Path) {
    let output = match Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-M", "att"])
        .arg(elf)
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) => panic!(
            "objdump -d {} failed: {}",
            elf.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            println!("cargo:warning=objdump not found ({e}): the tiny guest's instruction audit is skipped");
            return;
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let bad = find_unsupported(&text);
    assert!(
        bad.is_empty(),
        "the tiny guest ({}) contains instructions the ring-0 emulator of the development hosts fails on \
         (see guest/tiny/README.md):\n{}",
        elf.display(),
        bad.join("\n")
    );
}

/// Lines of `objdump -d` output with unsupported instructions. The 32-bit PVH entry stub is
/// skipped: objdump decodes it as 64-bit code.
fn find_unsupported(disassembly: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut in_32bit_stub = false;
    let mut previous = String::new();
    for line in disassembly.lines() {
        if line.ends_with(">:") {
            in_32bit_stub = line.contains("<kiln_pvh_entry>");
            previous.clear();
            continue;
        }
        let mut fields = line.splitn(2, '\t');
        let (Some(addr), Some(insn)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !addr.trim_end().ends_with(':') || in_32bit_stub {
            continue;
        }
        let insn = insn.trim();
        let words: Vec<&str> = insn.split_whitespace().collect();
        let mnemonic = words
            .iter()
            .find(|w| !matches!(**w, "lock" | "rep" | "repz" | "repnz"))
            .copied()
            .unwrap_or("");
        let after_transfer = ["call", "ret", "jmp", "int3", "ud2", "lretq"]
            .iter()
            .any(|t| previous.starts_with(t));
        let unsupported = insn.contains("%xmm")
            || insn.contains("%ymm")
            || insn.contains("%zmm")
            || insn.contains("%st")
            || insn.contains("%mm")
            || mnemonic.starts_with('f')
            || mnemonic == "wait"
            || mnemonic.starts_with("cmpxchg16b")
            || mnemonic.starts_with("xsave")
            || mnemonic.starts_with("xrstor")
            || (mnemonic == "int3" && !after_transfer);
        if unsupported {
            bad.push(format!("  {}\t{insn}", addr.trim()));
        }
        previous = mnemonic.to_string();
    }
    bad
}
