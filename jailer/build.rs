//! Compiles the built-in jail-level policy `policies/seccomp/jail.json` (seccompiler JSON) to
//! BPF for the target architecture at build time, and writes it as Rust constants to
//! `$OUT_DIR/jail_filters.rs`, which `src/seccomp.rs` includes: a jail then installs
//! filters compiled once, not parsed and compiled again at every start. A policy that does
//! not compile fails the build with the reason. `--seccomp-policy FILE` is still compiled at
//! run time.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let policy = manifest.join("../policies/seccomp/jail.json");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("jail_filters.rs");
    let arch_name = std::env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let arch = seccompiler::TargetArch::try_from(arch_name.as_str())
        .unwrap_or_else(|_| panic!("no seccomp policy for target architecture {arch_name}"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", policy.display());
    let text = std::fs::read(&policy)
        .unwrap_or_else(|e| panic!("cannot read seccomp policy {}: {e}", policy.display()));
    let map = seccompiler::compile_from_json(text.as_slice(), arch)
        .unwrap_or_else(|e| panic!("seccomp policy {}: {e}", policy.display()));
    let mut src = String::from(
        "/// One BPF instruction: (code, jt, jf, k).\npub type Instruction = (u16, u8, u8, u32);\n\
         /// The built-in policy's filters, compiled by build.rs: (name, instructions).\n\
         pub const BUILTIN_FILTERS: &[(&str, &[Instruction])] = &[\n",
    );
    // `seccomp::compile` refuses a policy without `main` at run time; a built-in one fails here.
    assert!(
        map.contains_key("main"),
        "seccomp policy {}: no filter \"main\"",
        policy.display()
    );
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    for name in names {
        let _ = write!(src, "    ({name:?}, &[");
        let program: Vec<(u16, u8, u8, u32)> = map[name]
            .iter()
            .map(|i| (i.code, i.jt, i.jf, i.k))
            .collect();
        // The same filter, shorter (kiln-bpf), as `seccomp::compile` does at run time.
        let program = kiln_bpf::shrink_tuples(&program)
            .unwrap_or_else(|e| panic!("seccomp policy {}: filter {name}: {e}", policy.display()));
        for (code, jt, jf, k) in program {
            let _ = write!(src, "({code}, {jt}, {jf}, {k}),");
        }
        src.push_str("]),\n");
    }
    src.push_str("];\n");
    std::fs::write(&out, src).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
