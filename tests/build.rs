//! Builds the tiny freestanding test guest (guest/tiny) and hands its path to the test kit
//! as `KILN_TINY_GUEST`.
//!
//! The guest is not a workspace member: kiln-guest-builder (guest/builder) builds it with a
//! nested `cargo build --release --target x86_64-unknown-linux-gnu` with its own target
//! directory (under OUT_DIR, so it never waits on the outer build's lock), a clean
//! environment and exactly the guest's rustflags (`GUEST_RUSTFLAGS`), from `/` so that no
//! `.cargo/config.toml` of the Kiln tree is merged into the guest's configuration. The
//! guest's own build.rs adds its link arguments.
//!
//! The built ELF is then audited with objdump (when installed) for instructions that the
//! instruction emulator of the development hosts fails on (see shared notes host-kvm.md):
//! any SSE/AVX/x87 instruction, `cmpxchg16b`, `xsave`/`xrstor`, `fwait`, and `int3` outside
//! the padding after a call or return.

use kiln_guest_builder::{audit_elf, nested_build, AuditError, NestedBuild, GUEST_RUSTFLAGS};
use std::path::PathBuf;

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
    // The guest's path dependencies (memory routines, boot, virtio, the guest flags).
    for dep in ["mem", "boot", "virtio", "flags"] {
        println!(
            "cargo:rerun-if-changed={}",
            guest_dir.with_file_name(dep).display()
        );
    }

    let build = NestedBuild {
        manifest_path: guest_dir.join("Cargo.toml"),
        target_dir: PathBuf::from(env("OUT_DIR")).join("tiny-target"),
        rustflags: GUEST_RUSTFLAGS.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        locked: true,
        jobs: Some(1),
    };
    let elf = nested_build(&build).unwrap_or_else(|e| panic!("building guest/tiny: {e}"));
    assert!(
        elf.is_file(),
        "the nested build of guest/tiny succeeded but {} is missing",
        elf.display()
    );
    match audit_elf(&elf) {
        Ok(()) => {}
        Err(e @ AuditError::Objdump { .. }) => {
            println!("cargo:warning={e}: the tiny guest's instruction audit is skipped");
        }
        Err(e) => panic!("the tiny guest: {e}"),
    }
    println!("cargo:rustc-env=KILN_TINY_GUEST={}", elf.display());
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}
