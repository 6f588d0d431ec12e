//! The jail-level seccomp filter, installed just before exec.
//!
//! The policy is seccompiler JSON: `policies/seccomp/jail.json`, compiled to BPF at build
//! time (`build.rs`) and built into the binary, or the file given with `--seccomp-policy`,
//! compiled when the jailer starts; either way each program is shrunk by `kiln-bpf` (the same
//! answers in a third of the instructions: cheaper to install, and to run on every syscall).
//! Its filters stack, and for each syscall the kernel takes the strictest answer. `main` is the allow-list (any other syscall kills the
//! process); the others default to allow and single out calls to refuse, which the
//! allow-list format cannot express: `enosys` answers `clone3` with ENOSYS so the C library
//! falls back to `clone`, whose flags `main` can inspect; [`HUGETLB_FILTER`] kills
//! `mmap(MAP_HUGETLB)` and is left out when the tenant profile grants huge pages. `main` is
//! exactly what the VMM makes (the seccomp audit checks it); the VMM narrows it per thread
//! with its own filters.

use std::path::{Path, PathBuf};

use seccompiler::{BpfProgram, TargetArch};

/// The built-in jail-level policy, as text (what build.rs compiled; the test checks both agree).
#[cfg(test)]
const BUILTIN_POLICY: &str = include_str!("../../policies/seccomp/jail.json");
/// Largest policy file read.
const MAX_POLICY_BYTES: u64 = 1 << 20;
/// The filter that refuses huge pages: installed unless the profile grants some.
pub const HUGETLB_FILTER: &str = "hugetlb";

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("--seccomp-policy {path}: {source}")]
    Read {
        path: PathBuf,
        source: kiln_hostfs::InputError,
    },
    #[error("seccomp policy {origin}: {source}")]
    Compile {
        origin: String,
        source: seccompiler::Error,
    },
    #[error("seccomp policy {origin}: filter {name:?}: {source}")]
    Program {
        origin: String,
        name: String,
        source: kiln_bpf::ProgramError,
    },
    #[error("seccomp policy {origin}: no \"main\" filter")]
    NoMain { origin: String },
    #[error("installing seccomp filter {name:?}: {source}")]
    Install {
        name: String,
        source: seccompiler::Error,
    },
    #[error("no seccomp support for architecture {arch}")]
    Arch { arch: &'static str },
}

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/jail_filters.rs"));
}

/// Compiled filters, in the order they are installed (`main` last).
#[derive(Debug)]
pub struct Filters(Vec<(String, BpfProgram)>);

/// The built-in policy (compiled at build time), or `file` compiled now.
pub fn compile(file: Option<&Path>) -> Result<Filters, SeccompError> {
    let Some(path) = file else {
        let filters = builtin::BUILTIN_FILTERS
            .iter()
            .map(|(name, program)| {
                let program = program
                    .iter()
                    .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
                    .collect();
                ((*name).to_owned(), program)
            })
            .collect();
        return Ok(Filters::ordered(filters));
    };
    let text =
        kiln_hostfs::read_text(path, MAX_POLICY_BYTES).map_err(|source| SeccompError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    compile_text(&path.display().to_string(), &text)
}

/// Compiles policy `text` (named `origin` in errors).
fn compile_text(origin: &str, text: &str) -> Result<Filters, SeccompError> {
    let origin = origin.to_owned();
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|_| SeccompError::Arch {
        arch: std::env::consts::ARCH,
    })?;
    let map = seccompiler::compile_from_json(text.as_bytes(), arch).map_err(|source| {
        SeccompError::Compile {
            origin: origin.clone(),
            source,
        }
    })?;
    // Shrunk as the built-in policy is (build.rs): the same answers, fewer instructions.
    let mut filters: Vec<(String, BpfProgram)> = Vec::with_capacity(map.len());
    for (name, program) in map {
        let tuples: Vec<_> = program.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect();
        let shrunk = kiln_bpf::shrink_tuples(&tuples).map_err(|source| SeccompError::Program {
            origin: origin.clone(),
            name: name.clone(),
            source,
        })?;
        let program = shrunk
            .into_iter()
            .map(|(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
            .collect();
        filters.push((name, program));
    }
    if !filters.iter().any(|(n, _)| n == "main") {
        return Err(SeccompError::NoMain { origin });
    }
    Ok(Filters::ordered(filters))
}

impl Filters {
    /// Deterministic order, the allow-list last: the others must still be installable.
    fn ordered(mut filters: Vec<(String, BpfProgram)>) -> Self {
        filters.sort_by(|a, b| (a.0 == "main", &a.0).cmp(&(b.0 == "main", &b.0)));
        Filters(filters)
    }

    /// The filters without [`HUGETLB_FILTER`]: the tenant profile grants huge pages (the
    /// hugetlb cgroup limit bounds them).
    pub fn granting_huge_pages(mut self) -> Self {
        self.0.retain(|(name, _)| name != HUGETLB_FILTER);
        self
    }

    #[cfg(test)]
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Installs every filter on the calling thread (also sets no_new_privs).
    pub fn apply(&self) -> Result<(), SeccompError> {
        for (name, program) in &self.0 {
            seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
                name: name.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_policy_compiles_with_main_last() {
        let f = compile(None).unwrap();
        assert_eq!(f.names(), ["enosys", "hugetlb", "main"]);
        // Huge pages granted: the filter refusing them is left out.
        let f = f.granting_huge_pages();
        assert_eq!(f.names(), ["enosys", "main"]);
    }

    #[test]
    fn the_filters_compiled_at_build_time_are_the_policys() {
        let built = compile(None).unwrap();
        let now = compile_text("jail.json", BUILTIN_POLICY).unwrap();
        assert_eq!(built.names(), now.names());
        for ((_, a), (_, b)) in built.0.iter().zip(&now.0) {
            let key = |p: &BpfProgram| -> Vec<(u16, u8, u8, u32)> {
                p.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
            };
            assert_eq!(key(a), key(b));
        }
    }

    #[test]
    fn bad_policies_are_named_errors() {
        let dir = std::env::temp_dir().join(format!("kiln-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("p.json");
        std::fs::write(&p, r#"{"other": {"default_action": "allow", "filter_action": "kill_process", "filter": []}}"#).unwrap();
        let e = compile(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("no \"main\""), "{e}");
        std::fs::write(&p, r#"{"main": {"default_action": "kill_process", "filter_action": "allow", "filter": [{"syscall": "no_such_call"}]}}"#).unwrap();
        let e = compile(Some(&p)).unwrap_err().to_string();
        assert!(e.contains(p.to_str().unwrap()), "{e}");
        let e = compile(Some(&dir.join("missing.json")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--seccomp-policy"), "{e}");
        // Read under the project's input-file rule: a device is refused without reading.
        let e = compile(Some(Path::new("/dev/zero")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--seccomp-policy /dev/zero: is a character device"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
