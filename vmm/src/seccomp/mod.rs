//! Seccomp filters, one per thread kind (`policies/seccomp/README.md`).
//!
//! - **Kinds**: [`ThreadKind::Api`] (the API thread, `kiln_api`), [`ThreadKind::Vmm`] (the
//!   main thread's run loop with every device, and the `kiln_metrics` thread) and
//!   [`ThreadKind::Vcpu`] (`vcpu0`, `vcpu1`, ...).
//! - **Where they come from**: `vmm/build.rs` compiles `policies/seccomp/{api,vmm,vcpu}.json`
//!   to BPF and the binary embeds them; `--seccomp-filter FILE` replaces all three with a
//!   JSON filter set (seccompiler's format) or a compiled one ([`format`], written by the
//!   `kiln-seccompiler` tool). A file that cannot be read or parsed, that lacks a kind or that
//!   has a filter for something else is refused before any thread starts.
//! - **When**: [`init`] loads them once, in `main`, before any thread exists, as the
//!   command line's [`Choice`] says; each thread
//!   then calls [`install`] with its kind before it handles untrusted input (the API thread
//!   before its first `poll`/`accept`, a vCPU thread before its first `KVM_RUN`, the main
//!   thread right before the run loop, once the microVM is built).
//! - **Modes**: a syscall outside the filter kills the process (SIGSYS). `--seccomp-log`
//!   turns every kill (and trap) of the filters into "log and allow", so that one run shows
//!   (in the kernel log) every syscall a change needs; `--no-seccomp` installs nothing. Both
//!   print a warning.
//!
//! Without [`init`] (the library used by tests or an embedder), [`install`] does nothing.

pub mod format;

use kiln_hostfs::InputError;
use seccompiler::{sock_filter, BpfProgram, TargetArch};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

/// The built-in filters: `policies/seccomp/{api,vmm,vcpu}.json` compiled by `vmm/build.rs`
/// into the [`format`] of a compiled filter set.
const EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_filters.bpf"));

/// Largest `--seccomp-filter` file read (three filters of the kernel's maximum size fit
/// well below this, in either format).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// `SECCOMP_RET_*` actions (linux/seccomp.h) and the BPF return opcode.
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_KILL_THREAD: u32 = 0x0000_0000;
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
const SECCOMP_RET_LOG: u32 = 0x7ffc_0000;

/// Which filter a thread installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The API thread: HTTP on the API socket.
    Api,
    /// The main thread's run loop (event loop, every device) and the metrics thread.
    Vmm,
    /// A vCPU thread: `KVM_RUN` and the exits it serves.
    Vcpu,
}

impl ThreadKind {
    /// Every kind, in the order of a filter set.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Api, ThreadKind::Vmm, ThreadKind::Vcpu];

    /// The name of the kind's filter (and of its policy file, `<name>.json`).
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Api => "api",
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
        }
    }

    pub fn from_name(name: &str) -> Option<ThreadKind> {
        ThreadKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which filters the process installs: the command line's choice (`--seccomp-filter`,
/// `--seccomp-log`, `--no-seccomp`), which the `vmm` binary converts into this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// `--no-seccomp`: no filter at all.
    Off,
    /// The built-in filters (`file: None`) or those of a `--seccomp-filter` file.
    Filters {
        file: Option<PathBuf>,
        on_violation: OnViolation,
    },
}

impl Default for Choice {
    /// The built-in filters, killing the process on a violation.
    fn default() -> Self {
        Choice::Filters {
            file: None,
            on_violation: OnViolation::Kill,
        }
    }
}

/// What a syscall outside the filters does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnViolation {
    /// The process is killed (SIGSYS).
    #[default]
    Kill,
    /// `--seccomp-log`: the kernel logs it and lets it through (diagnosis only).
    Log,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot read the seccomp filter file {path:?}: {source}")]
    Read { path: PathBuf, source: InputError },
    #[error("{origin}: not a valid JSON filter set: {reason}")]
    Json { origin: String, reason: String },
    #[error("{origin}: not a valid compiled filter set: {source}")]
    Compiled {
        origin: String,
        source: format::FormatError,
    },
    #[error("{origin}: no filter for thread kind \"{kind}\" (a filter set has one for each of api, vmm and vcpu)")]
    MissingKind { origin: String, kind: ThreadKind },
    #[error("{origin}: filter {name:?} is not a thread kind (a filter set has exactly api, vmm and vcpu)")]
    UnknownKind { origin: String, name: String },
    #[error("{origin}: filter \"{kind}\": {reason}")]
    BadProgram {
        origin: String,
        kind: ThreadKind,
        reason: String,
    },
    #[error("no seccomp support for architecture {0}")]
    Arch(&'static str),
    #[error("the seccomp filters are already loaded")]
    AlreadyLoaded,
    #[cfg(target_env = "gnu")]
    #[error("cannot limit glibc malloc to one heap (mallopt M_ARENA_MAX refused)")]
    MallocArena,
    #[error("cannot install the seccomp filter of the {kind} thread: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
}

/// One BPF program per thread kind.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterSet {
    programs: [BpfProgram; 3],
}

fn index(kind: ThreadKind) -> usize {
    match kind {
        ThreadKind::Api => 0,
        ThreadKind::Vmm => 1,
        ThreadKind::Vcpu => 2,
    }
}

/// Checks what the kernel would refuse with a bare EINVAL (`kiln_bpf::check`: an opcode or
/// operand seccomp does not accept, a jump out of the program, a last instruction that does
/// not return), named.
fn check_program(program: &[sock_filter]) -> Result<(), String> {
    let insns: Vec<kiln_bpf::Insn> = program
        .iter()
        .map(|i| (i.code, i.jt, i.jf, i.k).into())
        .collect();
    kiln_bpf::check(&insns).map_err(|e| e.to_string())
}

/// `program` shrunk by `kiln-bpf`: an equivalent, shorter program.
fn shrink(program: &[sock_filter]) -> Result<BpfProgram, kiln_bpf::ProgramError> {
    let tuples: Vec<_> = program.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect();
    Ok(kiln_bpf::shrink_tuples(&tuples)?
        .into_iter()
        .map(|(code, jt, jf, k)| sock_filter { code, jt, jf, k })
        .collect())
}

impl FilterSet {
    /// The filters built into the binary.
    pub fn embedded() -> Result<FilterSet, SeccompError> {
        FilterSet::from_compiled("the built-in seccomp filters", EMBEDDED)
    }

    /// Reads `--seccomp-filter FILE`: a compiled set when it starts with the magic bytes of
    /// [`format`], a JSON filter set otherwise.
    pub fn from_file(path: &Path) -> Result<FilterSet, SeccompError> {
        let bytes =
            kiln_hostfs::read_bytes(path, MAX_FILE_BYTES).map_err(|source| SeccompError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let origin = format!("seccomp filter file {path:?}");
        if format::is_compiled(&bytes) {
            FilterSet::from_compiled(&origin, &bytes)
        } else {
            FilterSet::from_json(&origin, &bytes)
        }
    }

    /// Compiles a JSON filter set (seccompiler's format: `{"api": {...}, "vmm": {...},
    /// "vcpu": {...}}`) for this machine's architecture.
    pub fn from_json(origin: &str, json: &[u8]) -> Result<FilterSet, SeccompError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))?;
        let map = seccompiler::compile_from_json(json, arch).map_err(|e| SeccompError::Json {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        // Shrunk as the built-in filters are (vmm/build.rs): the same answers, fewer
        // instructions. A compiled file is taken as it is.
        let mut named = Vec::with_capacity(map.len());
        for (name, program) in map {
            let program = shrink(&program).map_err(|e| SeccompError::Json {
                origin: origin.to_string(),
                reason: format!("filter {name:?}: {e}"),
            })?;
            named.push((name, program));
        }
        FilterSet::from_named(origin, named)
    }

    /// Reads a compiled filter set ([`format`]).
    pub fn from_compiled(origin: &str, bytes: &[u8]) -> Result<FilterSet, SeccompError> {
        let filters = format::decode(bytes).map_err(|source| SeccompError::Compiled {
            origin: origin.to_string(),
            source,
        })?;
        let named = filters
            .into_iter()
            .map(|(name, program)| {
                let program = program
                    .into_iter()
                    .map(|(code, jt, jf, k)| sock_filter { code, jt, jf, k })
                    .collect();
                (name, program)
            })
            .collect();
        FilterSet::from_named(origin, named)
    }

    fn from_named(
        origin: &str,
        mut named: Vec<(String, BpfProgram)>,
    ) -> Result<FilterSet, SeccompError> {
        // Deterministic messages whatever the order in the file.
        named.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some((name, _)) = named
            .iter()
            .find(|(n, _)| ThreadKind::from_name(n).is_none())
        {
            return Err(SeccompError::UnknownKind {
                origin: origin.to_string(),
                name: name.clone(),
            });
        }
        let mut take = |kind: ThreadKind| -> Result<BpfProgram, SeccompError> {
            let pos = named
                .iter()
                .position(|(n, _)| n == kind.name())
                .ok_or_else(|| SeccompError::MissingKind {
                    origin: origin.to_string(),
                    kind,
                })?;
            let (_, program) = named.swap_remove(pos);
            check_program(&program).map_err(|reason| SeccompError::BadProgram {
                origin: origin.to_string(),
                kind,
                reason,
            })?;
            Ok(program)
        };
        let api = take(ThreadKind::Api)?;
        let vmm = take(ThreadKind::Vmm)?;
        let vcpu = take(ThreadKind::Vcpu)?;
        Ok(FilterSet {
            programs: [api, vmm, vcpu],
        })
    }

    pub fn get(&self, kind: ThreadKind) -> &[sock_filter] {
        self.programs
            .get(index(kind))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The set in the compiled format ([`format`]).
    pub fn to_compiled(&self) -> Vec<u8> {
        let programs: Vec<Vec<format::Instruction>> = ThreadKind::ALL
            .iter()
            .map(|&k| {
                self.get(k)
                    .iter()
                    .map(|i| (i.code, i.jt, i.jf, i.k))
                    .collect()
            })
            .collect();
        let named: Vec<(&str, &[format::Instruction])> = ThreadKind::ALL
            .iter()
            .zip(&programs)
            .map(|(k, p)| (k.name(), p.as_slice()))
            .collect();
        format::encode(&named)
    }

    /// The same filters with every kill and trap turned into "log and allow"
    /// (`--seccomp-log`): the process keeps running and the kernel logs each syscall the
    /// filters would have refused. Errno answers are kept.
    pub fn into_log_mode(mut self) -> FilterSet {
        for program in &mut self.programs {
            for ins in program.iter_mut() {
                let action = ins.k & SECCOMP_RET_ACTION_FULL;
                if ins.code == BPF_RET_K
                    && matches!(
                        action,
                        SECCOMP_RET_KILL_PROCESS | SECCOMP_RET_KILL_THREAD | SECCOMP_RET_TRAP
                    )
                {
                    ins.k = SECCOMP_RET_LOG;
                }
            }
        }
        self
    }

    /// Installs `kind`'s filter on the calling thread (and sets no_new_privs, which the
    /// kernel requires of an unprivileged process).
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        seccompiler::apply_filter(self.get(kind))
            .map_err(|source| SeccompError::Install { kind, source })
    }
}

/// What [`init`] decided, for every thread of the process.
struct State {
    /// `None` with `--no-seccomp`.
    filters: Option<FilterSet>,
    /// Debug builds only: the threads that make a forbidden syscall right after installing
    /// their filter (`KILN_TEST_FORBIDDEN_SYSCALL`), for the tests that check each filter
    /// really kills.
    #[cfg(debug_assertions)]
    forbidden: Option<String>,
    /// Debug builds only: the threads that call `abort()` right after installing their
    /// filter (`KILN_TEST_ABORT`), as a release build's panic does: the process must end
    /// with SIGABRT, not be killed by its own filter on the way.
    #[cfg(debug_assertions)]
    abort: Option<String>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Test hooks (debug builds only): set to a thread kind (`api`, `vmm` for the main
/// thread's run loop, `vcpu` for every vCPU thread) or a thread name (`kiln_metrics`,
/// `vcpu1`), the matching threads make a syscall no filter allows (`getppid`) or call
/// `abort()` right after installing their filter.
#[cfg(debug_assertions)]
pub const TEST_FORBIDDEN_SYSCALL_ENV: &str = "KILN_TEST_FORBIDDEN_SYSCALL";
#[cfg(debug_assertions)]
pub const TEST_ABORT_ENV: &str = "KILN_TEST_ABORT";

/// Loads the filters `choice` names (the built-in ones, a `--seccomp-filter` file, or none),
/// once, before any thread starts. A bad filter file is an error naming it; no filters
/// (`--no-seccomp`) and log mode (`--seccomp-log`) print a warning.
pub fn init(choice: &Choice) -> Result<(), SeccompError> {
    single_malloc_heap()?;
    let filters = match choice {
        Choice::Off => {
            warn("WARNING: --no-seccomp: no seccomp filter is installed; a compromised VMM thread can make any system call the jail allows. Never use this in production.");
            None
        }
        Choice::Filters { file, on_violation } => {
            let set = match file {
                Some(path) => FilterSet::from_file(path)?,
                None => FilterSet::embedded()?,
            };
            match on_violation {
                OnViolation::Kill => Some(set),
                OnViolation::Log => {
                    warn("WARNING: --seccomp-log: system calls outside the seccomp filters are logged by the kernel and ALLOWED, not refused. For diagnosis only.");
                    Some(set.into_log_mode())
                }
            }
        }
    };
    let state = State {
        filters,
        #[cfg(debug_assertions)]
        forbidden: std::env::var(TEST_FORBIDDEN_SYSCALL_ENV).ok(),
        #[cfg(debug_assertions)]
        abort: std::env::var(TEST_ABORT_ENV).ok(),
    };
    STATE.set(state).map_err(|_| SeccompError::AlreadyLoaded)
}

/// Makes every thread allocate from one heap. musl's allocator (the release binaries' C
/// library) has only one. glibc's (the fuzz targets' and any glibc build's) gets
/// `M_ARENA_MAX` = 1, before any thread starts: with a heap per thread ("arena"), a filtered
/// thread would map, grow and trim a heap of its own (mmap PROT_NONE, mprotect, madvise)
/// and, the first time one shrinks, open `/proc/sys/vm/overcommit_memory`: an `openat` no
/// filter of a thread facing untrusted input should allow.
#[cfg(target_env = "gnu")]
fn single_malloc_heap() -> Result<(), SeccompError> {
    // SAFETY: mallopt only changes a malloc parameter; no thread other than this one exists.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if ok == 1 {
        Ok(())
    } else {
        Err(SeccompError::MallocArena)
    }
}

#[cfg(not(target_env = "gnu"))]
fn single_malloc_heap() -> Result<(), SeccompError> {
    Ok(())
}

fn warn(message: &str) {
    eprintln!("vmm: {message}");
    crate::log_warn!("{message}");
}

/// Whether a test hook set to `target` applies to the calling thread of kind `kind`.
#[cfg(debug_assertions)]
fn hook_applies(target: Option<&str>, kind: ThreadKind) -> bool {
    let Some(target) = target else { return false };
    let current = std::thread::current();
    let name = current.name().unwrap_or_default();
    match ThreadKind::from_name(target) {
        // `vmm` is the main thread (Rust names it "main"), not the metrics thread.
        Some(ThreadKind::Vmm) => kind == ThreadKind::Vmm && name == "main",
        Some(k) => k == kind,
        None => name == target,
    }
}

/// Installs `kind`'s filter on the calling thread, as loaded by [`init`]. A thread that
/// cannot be filtered must not go on: the process exits with a message (exit code 1).
pub fn install(kind: ThreadKind) {
    let Some(state) = STATE.get() else { return };
    if let Some(filters) = &state.filters {
        let started = Instant::now();
        if let Err(e) = filters.apply(kind) {
            eprintln!("vmm: {e}; stopping (the VMM never runs a thread unfiltered unless --no-seccomp says so)");
            std::process::exit(crate::exit::code::GENERIC);
        }
        let took_us = started.elapsed().as_secs_f64() * 1e6;
        crate::log_debug!("seccomp: {kind} filter installed in {took_us:.1} us");
    }
    #[cfg(debug_assertions)]
    {
        if hook_applies(state.forbidden.as_deref(), kind) {
            forbidden_syscall();
        }
        if hook_applies(state.abort.as_deref(), kind) {
            std::process::abort();
        }
    }
}

/// The test hook's syscall: `getppid`, harmless, allowed by the jail-level filter, and in
/// no thread kind's filter (the seccomp audit test checks that).
#[cfg(debug_assertions)]
fn forbidden_syscall() {
    // SAFETY: getppid takes no arguments and cannot fail; the filter is expected to kill
    // the process here.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

#[cfg(test)]
mod tests;
