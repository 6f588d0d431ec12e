//! Compiles the seccomp policies `policies/seccomp/{api,vmm,vcpu}.json` (seccompiler JSON,
//! one filter per file, named after the file) to BPF for the target architecture and writes
//! them as one compiled filter set (`src/seccomp/format.rs`) to
//! `$OUT_DIR/seccomp_filters.bpf`, which `src/seccomp/mod.rs` embeds. A policy that does not
//! compile fails the build with the file and the reason. Each program is shrunk by `kiln-bpf`
//! (the same answers, fewer instructions) as at run time.

#[allow(dead_code)]
#[path = "src/seccomp/format.rs"]
mod format;

use std::path::PathBuf;

const KINDS: [&str; 3] = ["api", "vmm", "vcpu"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let policies = manifest.join("..").join("policies").join("seccomp");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("seccomp_filters.bpf");
    let arch_name = std::env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let arch = seccompiler::TargetArch::try_from(arch_name.as_str())
        .unwrap_or_else(|_| panic!("no seccomp policies for target architecture {arch_name}"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/seccomp/format.rs");

    let mut programs: Vec<(&str, Vec<format::Instruction>)> = Vec::new();
    for kind in KINDS {
        let path = policies.join(format!("{kind}.json"));
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("cannot read seccomp policy {}: {e}", path.display()));
        let mut map = seccompiler::compile_from_json(text.as_slice(), arch)
            .unwrap_or_else(|e| panic!("seccomp policy {}: {e}", path.display()));
        let program = map.remove(kind).unwrap_or_else(|| {
            panic!(
                "seccomp policy {}: it must hold one filter named {kind:?}",
                path.display()
            )
        });
        if let Some(other) = map.keys().next() {
            panic!(
                "seccomp policy {}: filter {other:?}: the file must hold only the filter {kind:?}",
                path.display()
            );
        }
        assert!(
            program.len() <= format::BPF_MAX_LEN,
            "seccomp policy {}: {} instructions, more than the kernel's {}",
            path.display(),
            program.len(),
            format::BPF_MAX_LEN
        );
        let program: Vec<format::Instruction> =
            program.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect();
        // The same filter, shorter (kiln-bpf): cheaper to install and to run.
        let program = kiln_bpf::shrink_tuples(&program)
            .unwrap_or_else(|e| panic!("seccomp policy {}: {e}", path.display()));
        programs.push((kind, program));
    }
    let named: Vec<(&str, &[format::Instruction])> =
        programs.iter().map(|(k, p)| (*k, p.as_slice())).collect();
    std::fs::write(&out, format::encode(&named))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
