//! The seccomp audit: are the filters in `policies/seccomp/` exactly as wide as the VMM
//! needs?
//!
//! `the_lifecycle_uses_exactly_what_the_policies_allow` runs the VMM's whole lifecycle with
//! the tiny guest (`seccomp_common`: configuration through the API with every device, API
//! traffic, every virtio-blk and virtio-net scenario, a drive swap, the balloon inflated and
//! deflated and its free page reporting and hinting, pause/resume, full and
//! diff snapshots and their restores through both memory backends, FlushMetrics, SIGTERM,
//! the guest's reset, a triple fault) under `strace -f` in `--seccomp-log` mode, and
//! records, for every thread, the syscalls it made after installing its filter. Threads are
//! told apart by their names (`vmm` for the main thread, `kiln_api`, `kiln_metrics`,
//! `vcpu0`, ...). It then fails when
//!
//! - a thread made a syscall its kind's policy does not allow (the lifecycle needs it), or
//! - a policy rule matched no syscall of any thread of its kind (the policy is wider than
//!   needed), unless [`NOT_EXERCISED`] names it with the reason it is still needed.
//!
//! It prints, per thread kind, every syscall used and how often (run with `--nocapture`).
//!
//! It also checks the jailer's `jail.json`, the filter the whole VMM process runs under from
//! its `execve` on (start-up and the building of the microVM included): every syscall of
//! every thread must be allowed by its `main` filter, and every rule of `main` must match a
//! syscall the VMM made (it is the VMM's filter and nothing more), unless [`JAIL_NOT_EXERCISED`]
//! says why it is needed anyway.
//!
//! `policies_are_well_formed_and_inside_the_jail_filter` needs nothing: every rule must be
//! allowed by the jailer's `policies/seccomp/jail.json` (the jail-level filter stays
//! installed under the VMM's, so a syscall it refuses is refused whatever the VMM's filters
//! say), a syscall must not have both an unconditional and a conditional rule (seccompiler
//! keeps only the conditional ones), and the test hook's syscall must be in no policy.
//!
//! To change a policy: edit the JSON, run this test, read what it reports
//! (policies/seccomp/README.md). Needs root, /dev/kvm, strace (Debian package `strace`).

mod seccomp_common;

use kiln_tests::{require_program, ScratchDir};
use seccomp_common::{abort_run, lifecycle, Launch, Outcome};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Arguments worth restricting, printed by the audit as the distinct values seen, per kind:
/// (syscall, argument indexes).
const ARGS_SHOWN: &[(&str, &[usize])] = &[
    ("ioctl", &[1]),
    ("fcntl", &[1]),
    ("futex", &[1]),
    ("mmap", &[2, 3]),
    ("mprotect", &[2]),
    ("madvise", &[2]),
    ("mremap", &[3]),
    ("socket", &[0, 1]),
    ("accept4", &[3]),
    ("openat", &[2]),
    ("open", &[1]),
    ("tkill", &[1]),
    ("rt_sigprocmask", &[0]),
    ("tgkill", &[2]),
    ("epoll_ctl", &[1]),
    ("clock_nanosleep", &[0, 1]),
    ("lseek", &[2]),
    ("sendto", &[3]),
    ("recvfrom", &[3]),
];

/// The thread kinds, as named in the policies.
const KINDS: [&str; 3] = ["api", "vmm", "vcpu"];

/// The syscall the VMM's test hook makes (`KILN_TEST_FORBIDDEN_SYSCALL`): in no policy.
const HOOK_SYSCALL: &str = "getppid";

/// Rules the lifecycle does not exercise (or not on every run: lock contention, how full the
/// heap happens to be), with why they are needed anyway: (kind, rule as the audit prints it,
/// reason). Keep it short; each entry is a syscall the audit may not see the VMM make.
const NOT_EXERCISED: &[(&str, &str, &str)] = &[
    ("api", "futex [arg1 Eq 0x80]", "musl's internal locks (the heap's, when another thread holds it) wait with FUTEX_WAIT_PRIVATE"),
    ("vmm", "futex [arg1 Eq 0x80]", "musl's internal locks (the heap's, when another thread holds it) wait with FUTEX_WAIT_PRIVATE"),
    ("vcpu", "futex [arg1 Eq 0x80]", "musl's internal locks (the heap's, when another thread holds it) wait with FUTEX_WAIT_PRIVATE"),
    ("api", "futex [arg1 Eq 0x81]", "musl's internal locks (the heap's) wake a waiter with FUTEX_WAKE_PRIVATE only when another thread waited"),
    ("api", "futex [arg1 Eq 0x0]", "musl's thread-list lock, when the API thread ends while another thread starts or ends, waits with a shared FUTEX_WAIT"),
    ("api", "futex [arg1 Eq 0x1]", "musl's thread-list lock released to a waiter (FUTEX_WAKE) when the API thread ends"),
    ("vcpu", "futex [arg1 Eq 0x0]", "musl's thread-list lock, when a vCPU thread ends while another thread starts or ends, waits with a shared FUTEX_WAIT"),
    ("vcpu", "futex [arg1 Eq 0x1]", "musl's thread-list lock released to a waiter (FUTEX_WAKE) when a vCPU thread ends while another does"),
    ("vmm", "futex [arg1 Eq 0x0]", "joining a thread (musl waits on its tid) and musl's thread-list lock, taken when a thread starts or ends, wait with a shared FUTEX_WAIT"),
    ("vmm", "futex [arg1 Eq 0x1]", "musl's thread-list lock released to a waiter (FUTEX_WAKE)"),
    ("api", "brk", "musl's allocator grows its metadata area with brk (seldom: one page describes many allocations)"),
    ("vmm", "brk", "musl's allocator grows its metadata area with brk (seldom: one page describes many allocations)"),
    ("vcpu", "brk", "musl's allocator grows its metadata area with brk (seldom: one page describes many allocations)"),
    ("api", "mprotect [arg2 Eq 0x3]", "musl's allocator makes a new metadata page writable when brk cannot grow the heap"),
    ("vmm", "mprotect [arg2 Eq 0x3]", "musl's allocator makes a new metadata page writable when brk cannot grow the heap"),
    ("vcpu", "mprotect [arg2 Eq 0x3]", "musl's allocator makes a new metadata page writable when brk cannot grow the heap"),
    ("vmm", "mremap [arg3 Eq 0x1]", "musl's realloc moves a block past its mmap threshold (128 KiB) with mremap; whether the run loop grows one that far depends on the run"),
    ("api", "sched_yield", "Rust's channels yield the CPU while a send or receive is contended (timing)"),
    ("vmm", "sched_yield", "Rust's channels yield the CPU while a send or receive is contended (timing)"),
    ("vcpu", "sched_yield", "Rust's channels yield the CPU while a send or receive is contended (timing)"),
    ("api", "clock_gettime", "clock_gettime is a real syscall when the host's clocksource has no vDSO support"),
    ("vmm", "clock_gettime", "clock_gettime is a real syscall when the host's clocksource has no vDSO support"),
    ("vcpu", "clock_gettime", "clock_gettime is a real syscall when the host's clocksource has no vDSO support"),
    ("api", "exit", "the API thread ends when its poll or accept fails for good; the VMM goes on without the API"),
    ("api", "sigaltstack", "the API thread ends when its poll or accept fails for good (Rust removes its signal stack)"),
    ("vcpu", "ioctl [arg1 Eq 0x8138ae83]", "KVM_GET_SREGS describes a KVM emulation failure, which the tiny guest cannot cause on every host"),
    ("vcpu", "ioctl [arg1 Eq 0xc018ae85]", "KVM_TRANSLATE describes a KVM emulation failure, which the tiny guest cannot cause on every host"),
    ("vcpu", "ioctl [arg1 Eq 0x4008ae6a]", "KVM_SET_GSI_ROUTING: a guest programming MSI-X with --enable-pci, which the lifecycle (virtio-mmio, snapshots) does not use (tests/tests/pci.rs does)"),
    ("vcpu", "ioctl [arg1 Eq 0x4040ae79]", "KVM_IOEVENTFD: a guest enabling a BAR with --enable-pci, which the lifecycle (virtio-mmio, snapshots) does not use (tests/tests/pci.rs does)"),
];

/// Rules a release build does not exercise in the audit: the abort hook exists in debug
/// builds only, and `fcntl(F_GETFD)` is a debug build's check on closing a descriptor.
const DEBUG_BUILD_ONLY: &[(&str, &str)] = &[
    ("api", "fcntl [arg1 Eq 0x1]"),
    ("vmm", "fcntl [arg1 Eq 0x1]"),
    ("vcpu", "fcntl [arg1 Eq 0x1]"),
    ("api", "rt_sigprocmask"),
    ("api", "tkill [arg1 Eq 0x6]"),
    ("vmm", "tkill [arg1 Eq 0x6]"),
    ("vcpu", "tkill [arg1 Eq 0x6]"),
];

/// Rules of jail.json's `main` filter the traced VMM does not exercise, with why they are
/// needed anyway (the audit traces the VMM without the jail, whose other filters change
/// what the C library does).
const JAIL_NOT_EXERCISED: &[(&str, &str)] = &[
    ("clone3", "answered ENOSYS by the enosys filter (seccomp cannot see clone3's flags); musl never makes it, a C library that tries it first (glibc) then starts threads with clone"),
    ("sched_yield", "in the per-thread policies: Rust's channels yield while contended (timing)"),
    ("ioctl [arg1 Eq 0xc018ae85]", "in vcpu.json: KVM_TRANSLATE describes a KVM emulation failure, which the tiny guest cannot cause on every host"),
    ("ioctl [arg1 Eq 0x4008ae6a]", "KVM_SET_GSI_ROUTING: --enable-pci (MSI-X routes), which the lifecycle (virtio-mmio, snapshots) does not use (tests/tests/pci.rs does)"),
    ("ioctl [arg1 Eq 0xaea2]", "KVM_SET_TSC_KHZ: a snapshot/load on a host whose TSC runs at another frequency than the snapshot's and that has KVM_CAP_TSC_CONTROL (the audit restores on the host that took the snapshot)"),
];

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/seccomp")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq(u64),
}

/// One argument condition of a rule (seccompiler's semantics).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cond {
    index: usize,
    qword: bool,
    op: Op,
    val: u64,
}

impl Cond {
    fn holds(&self, arg: u64) -> bool {
        let a = if self.qword { arg } else { arg & 0xffff_ffff };
        match self.op {
            Op::Eq => a == self.val,
            Op::Ne => a != self.val,
            Op::Lt => a < self.val,
            Op::Le => a <= self.val,
            Op::Gt => a > self.val,
            Op::Ge => a >= self.val,
            Op::MaskedEq(mask) => a & mask == self.val,
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    syscall: String,
    conds: Vec<Cond>,
}

impl Rule {
    fn describe(&self) -> String {
        if self.conds.is_empty() {
            return self.syscall.clone();
        }
        let conds: Vec<String> = self
            .conds
            .iter()
            .map(|c| format!("arg{} {:?} {:#x}", c.index, c.op, c.val))
            .collect();
        format!("{} [{}]", self.syscall, conds.join(", "))
    }

    /// Some(true/false) when every argument it looks at is known.
    fn matches(&self, call: &Call) -> Option<bool> {
        if call.name != self.syscall {
            return Some(false);
        }
        for c in &self.conds {
            let arg = call.args.get(c.index).copied().flatten()?;
            if !c.holds(arg) {
                return Some(false);
            }
        }
        Some(true)
    }
}

/// One seccompiler JSON filter.
#[derive(Debug, Clone)]
struct Filter {
    filter_action: Value,
    rules: Vec<Rule>,
}

fn parse_filter(origin: &str, v: &Value) -> Filter {
    let rules = v["filter"]
        .as_array()
        .unwrap_or_else(|| panic!("{origin}: no \"filter\" array"))
        .iter()
        .map(|r| {
            let syscall = r["syscall"]
                .as_str()
                .unwrap_or_else(|| panic!("{origin}: a rule without \"syscall\": {r}"))
                .to_string();
            let conds = r["args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| {
                            let op = match &c["op"] {
                                Value::String(s) => match s.as_str() {
                                    "eq" => Op::Eq,
                                    "ne" => Op::Ne,
                                    "lt" => Op::Lt,
                                    "le" => Op::Le,
                                    "gt" => Op::Gt,
                                    "ge" => Op::Ge,
                                    other => panic!("{origin}: {syscall}: unknown op {other}"),
                                },
                                Value::Object(m) => Op::MaskedEq(
                                    m.get("masked_eq").and_then(Value::as_u64).unwrap_or_else(
                                        || panic!("{origin}: {syscall}: bad op {}", c["op"]),
                                    ),
                                ),
                                other => panic!("{origin}: {syscall}: bad op {other}"),
                            };
                            Cond {
                                index: c["index"]
                                    .as_u64()
                                    .and_then(|i| usize::try_from(i).ok())
                                    .expect("index"),
                                qword: c["type"] == "qword",
                                op,
                                val: c["val"].as_u64().expect("val"),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            Rule { syscall, conds }
        })
        .collect();
    Filter {
        filter_action: v["filter_action"].clone(),
        rules,
    }
}

/// The filter of `kind` from `policies/seccomp/<kind>.json`.
fn load_policy(kind: &str) -> Filter {
    let path = policies_dir().join(format!("{kind}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f = parse_filter(&path.display().to_string(), &v[kind]);
    assert_eq!(
        v[kind]["default_action"],
        "kill_process",
        "{}: the default action must kill the process",
        path.display()
    );
    assert_eq!(
        f.filter_action,
        "allow",
        "{}: rules must allow",
        path.display()
    );
    f
}

/// jail.json's filters by name.
fn load_jail() -> BTreeMap<String, Filter> {
    let path = policies_dir().join("jail.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    v.as_object()
        .expect("jail.json is an object")
        .iter()
        .map(|(name, f)| (name.clone(), parse_filter(&format!("jail.json {name}"), f)))
        .collect()
}

/// How `filter` answers `call`: allowed, denied, or unknown (an argument it looks at could
/// not be read from the trace). seccompiler drops a syscall's unconditional rules when it
/// also has conditional ones; so does this.
fn allows(filter: &Filter, call: &Call) -> Option<bool> {
    let rules: Vec<&Rule> = filter
        .rules
        .iter()
        .filter(|r| r.syscall == call.name)
        .collect();
    if rules.is_empty() {
        return Some(false);
    }
    let conditional: Vec<&&Rule> = rules.iter().filter(|r| !r.conds.is_empty()).collect();
    if conditional.is_empty() {
        return Some(true);
    }
    let mut unknown = false;
    for r in conditional {
        match r.matches(call) {
            Some(true) => return Some(true),
            Some(false) => {}
            None => unknown = true,
        }
    }
    if unknown {
        None
    } else {
        Some(false)
    }
}

#[test]
fn policies_are_well_formed_and_inside_the_jail_filter() {
    let jail = load_jail();
    let main = jail.get("main").expect("jail.json has a \"main\" filter");
    let mut problems = Vec::new();
    for kind in KINDS {
        let policy = load_policy(kind);
        let mut seen = BTreeSet::new();
        for rule in &policy.rules {
            if rule.syscall == HOOK_SYSCALL {
                problems.push(format!(
                    "{kind}: allows {HOOK_SYSCALL}, the test hook's forbidden syscall"
                ));
            }
            let same: Vec<&Rule> = policy
                .rules
                .iter()
                .filter(|r| r.syscall == rule.syscall)
                .collect();
            if same.iter().any(|r| r.conds.is_empty())
                && same.iter().any(|r| !r.conds.is_empty())
                && seen.insert(rule.syscall.clone())
            {
                problems.push(format!("{kind}: {} has both unconditional and conditional rules (seccompiler would keep only the conditional ones)", rule.syscall));
            }
            // Inside the jail's allow-list: a jail rule for the syscall whose conditions are
            // all among this rule's.
            let jail_rules: Vec<&Rule> = main
                .rules
                .iter()
                .filter(|r| r.syscall == rule.syscall)
                .collect();
            if jail_rules.is_empty() {
                problems.push(format!(
                    "{kind}: {} is not allowed by jail.json's main filter",
                    rule.describe()
                ));
            } else if !jail_rules
                .iter()
                .any(|j| j.conds.iter().all(|c| rule.conds.contains(c)))
            {
                problems.push(format!(
                    "{kind}: {} is wider than jail.json's main filter allows ({})",
                    rule.describe(),
                    jail_rules
                        .iter()
                        .map(|j| j.describe())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ));
            }
            // Not refused by the jail's other filters (refusals, ENOSYS answers): each of
            // their rules for the syscall must contradict one of this rule's conditions.
            for (name, f) in jail.iter().filter(|(n, _)| n.as_str() != "main") {
                for j in f.rules.iter().filter(|j| j.syscall == rule.syscall) {
                    let disjoint = j
                        .conds
                        .iter()
                        .any(|jc| rule.conds.iter().any(|rc| contradict(jc, rc)));
                    if !disjoint {
                        problems.push(format!(
                            "{kind}: {} is answered {} by jail.json's {name:?} filter",
                            rule.describe(),
                            f.filter_action
                        ));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "policy problems:\n  {}",
        problems.join("\n  ")
    );
}

/// `(mask, value)` of an `eq` or `masked_eq` condition: the argument's bits under `mask`
/// equal `value`.
fn masked(c: &Cond) -> Option<(u64, u64)> {
    let width = if c.qword { u64::MAX } else { 0xffff_ffff };
    match c.op {
        Op::Eq => Some((width, c.val)),
        Op::MaskedEq(m) => Some((m & width, c.val)),
        _ => None,
    }
}

/// No argument satisfies both conditions (both fix a bit differently).
fn contradict(a: &Cond, b: &Cond) -> bool {
    if a.index != b.index {
        return false;
    }
    match (masked(a), masked(b)) {
        (Some((ma, va)), Some((mb, vb))) => (va ^ vb) & ma & mb != 0,
        _ => false,
    }
}

/// One syscall line of a strace trace.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    /// The arguments as numbers, where they are numbers (`-X raw` prints constants as
    /// numbers; strings, structures and arrays are `None`).
    args: Vec<Option<u64>>,
    line: String,
}

fn parse_number(s: &str) -> Option<u64> {
    let s = s.trim();
    // Flags strace prints apart from the rest (`0x1|0x80800`, a socket type and its flags).
    if s.contains('|') {
        return s
            .split('|')
            .try_fold(0u64, |acc, part| Some(acc | parse_number(part)?));
    }
    if s == "NULL" {
        return Some(0);
    }
    if let Some(h) = s.strip_prefix("0x") {
        return u64::from_str_radix(h, 16).ok();
    }
    if let Some(n) = s.strip_prefix('-') {
        return n.parse::<u64>().ok().map(|v| v.wrapping_neg());
    }
    s.parse().ok()
}

/// Splits `name(a, b, {c, d}, "e, f") = ...` into the name and its top-level arguments.
fn parse_call(line: &str) -> Option<Call> {
    let open = line.find('(')?;
    let name = &line[..open];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let mut args = Vec::new();
    let mut depth = 0i32;
    let mut current = String::new();
    let mut in_str = false;
    let mut escaped = false;
    for ch in line[open + 1..].chars() {
        if in_str {
            current.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_str = false;
            }
            continue;
        }
        match ch {
            '"' => {
                in_str = true;
                current.push(ch);
            }
            '(' | '[' | '{' => {
                depth += 1;
                current.push(ch);
            }
            ')' | ']' | '}' if depth == 0 => break,
            ')' | ']' | '}' => {
                depth -= 1;
                current.push(ch);
            }
            ',' if depth == 0 => {
                args.push(std::mem::take(&mut current));
            }
            _ => current.push(ch),
        }
        if depth == 0 && current.ends_with(" <unfinished ...>") {
            current.truncate(current.len() - " <unfinished ...>".len());
            break;
        }
    }
    if !current.trim().is_empty() {
        args.push(current);
    }
    if name == "clone" {
        args = clone_in_kernel_order(&args);
    }
    Some(Call {
        name: name.to_string(),
        args: args.iter().map(|a| parse_number(a)).collect(),
        line: line.to_string(),
    })
}

/// strace prints clone's arguments named and stack first (`child_stack=..., flags=...`);
/// the kernel (and so seccomp) takes them on x86_64 as flags, stack, parent_tid, child_tid,
/// tls. Returns the values in the kernel's order (a missing one as an empty argument).
fn clone_in_kernel_order(args: &[String]) -> Vec<String> {
    let named = |key: &str| {
        args.iter()
            .find_map(|a| a.trim().strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_matches(|c| c == '[' || c == ']').to_string())
            .unwrap_or_default()
    };
    ["flags", "child_stack", "parent_tid", "child_tidptr", "tls"]
        .iter()
        .map(|k| named(k))
        .collect()
}

/// What one thread did, from its `strace -ff` file.
struct ThreadTrace {
    tid: u32,
    name: String,
    calls: Vec<Call>,
    /// Index in `calls` of its `seccomp(SECCOMP_SET_MODE_FILTER)`.
    installed_at: Option<usize>,
}

fn read_thread(path: &Path) -> ThreadTrace {
    let tid = path
        .extension()
        .and_then(|e| e.to_str())
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("unexpected trace file {}", path.display()));
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut calls = Vec::new();
    let mut name = String::new();
    let mut installed_at = None;
    for line in text.lines() {
        if line.starts_with("+++") || line.starts_with("---") {
            continue;
        }
        let Some(call) = parse_call(line) else {
            continue;
        };
        if call.name == "execve" && name.is_empty() {
            name = "vmm".into();
        }
        if call.name == "prctl" && call.args.first() == Some(&Some(15)) {
            // PR_SET_NAME
            if let Some(n) = line.split('"').nth(1) {
                name = n.to_string();
            }
        }
        if call.name == "seccomp" && call.args.first() == Some(&Some(1)) && line.contains(") = 0") {
            installed_at = Some(calls.len());
        }
        calls.push(call);
    }
    ThreadTrace {
        tid,
        name,
        calls,
        installed_at,
    }
}

/// The filter a thread of this name installs.
fn kind_of(name: &str) -> Option<&'static str> {
    match name {
        "vmm" | "kiln_metrics" => Some("vmm"),
        "kiln_api" => Some("api"),
        n if n.starts_with("vcpu") && n[4..].chars().all(|c| c.is_ascii_digit()) => Some("vcpu"),
        _ => None,
    }
}

/// Runs the lifecycle (and an abort on each thread kind) under strace; returns each run
/// with the directory of its traces. One pass: musl's allocator has no settings that would
/// make its rarer paths show up (glibc's had; NOT_EXERCISED names musl's rare paths).
fn traced_lifecycle(strace: &Path, traces: &Path) -> Vec<(PathBuf, Outcome)> {
    let dir = traces.join("default");
    let launch = Launch {
        // The worker's --coalesce-mmio: the zones' registration is in the trace.
        vmm_args: vec!["--seccomp-log".into(), "--coalesce-mmio".into()],
        strace: Some((strace.to_path_buf(), dir.clone())),
        env: Vec::new(),
    };
    let mut outcomes = lifecycle(&launch);
    // The hooks exist in debug builds only (this test is built with the VMM's profile).
    if cfg!(debug_assertions) {
        for (target, run) in [
            ("api", "abort-api"),
            ("vmm", "abort-vmm"),
            ("vcpu", "abort-vcpu"),
            ("kiln_metrics", "abort-metrics"),
        ] {
            outcomes.push(abort_run(&launch, run, target));
        }
    }
    outcomes.into_iter().map(|o| (dir.clone(), o)).collect()
}

#[test]
fn the_lifecycle_uses_exactly_what_the_policies_allow() {
    let strace = require_program("strace", "strace");
    // KILN_SECCOMP_TRACES=DIR keeps the traces (one directory per run, one file per
    // thread) for reading; otherwise they go to a scratch directory removed afterwards.
    let scratch = ScratchDir::new("kiln-seccomp-audit");
    let traces = std::env::var_os("KILN_SECCOMP_TRACES")
        .map(PathBuf::from)
        .unwrap_or_else(|| scratch.path().to_path_buf());
    let outcomes = traced_lifecycle(&strace, &traces);
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(d, o)| o.problem().map(|p| format!("{}: {p}", d.display())))
        .collect();
    assert!(
        failed.is_empty(),
        "the lifecycle failed under strace:\n{}",
        failed.join("\n")
    );

    let policies: BTreeMap<&str, Filter> = KINDS.iter().map(|k| (*k, load_policy(k))).collect();
    let jail = load_jail();
    let jail_main = jail.get("main").expect("jail.json has a \"main\" filter");
    // Every syscall of the VMM process, filtered thread or not (start-up, building the
    // microVM), against the jail-level filter it runs under in production.
    let mut jail_denied: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut jail_hits = vec![0usize; jail_main.rules.len()];
    let mut jail_ioctls: BTreeSet<String> = BTreeSet::new();
    // kind -> syscall -> count, and kind -> rule index -> matches.
    let mut used: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    let mut rule_hits: BTreeMap<&str, Vec<usize>> = policies
        .iter()
        .map(|(k, p)| (*k, vec![0; p.rules.len()]))
        .collect();
    // kind -> syscall -> distinct values of the arguments in ARGS_SHOWN.
    let mut shown: BTreeMap<&str, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    // (kind, syscall) -> (count, a few examples).
    let mut denied: BTreeMap<(&str, String), (usize, Vec<String>)> = BTreeMap::new();
    let mut threads_seen: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (variant_dir, o) in &outcomes {
        let dir = variant_dir.join(o.run);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        let threads: Vec<ThreadTrace> = files.iter().map(|f| read_thread(f)).collect();
        // A thread started by a thread that had installed its filter inherits it.
        let mut inherited: BTreeMap<u32, &'static str> = BTreeMap::new();
        for t in &threads {
            let Some(at) = t.installed_at else { continue };
            let Some(kind) = kind_of(&t.name) else {
                problems.push(format!(
                    "run {}: thread {} ({:?}) installed a filter but its name says no kind",
                    o.run, t.tid, t.name
                ));
                continue;
            };
            for c in &t.calls[at + 1..] {
                if matches!(c.name.as_str(), "clone" | "clone3") {
                    if let Some(child) = c
                        .line
                        .rsplit_once("= ")
                        .and_then(|(_, r)| r.trim().parse::<u32>().ok())
                    {
                        inherited.insert(child, kind);
                    }
                }
            }
        }
        for t in &threads {
            for call in &t.calls {
                for (i, r) in jail_main.rules.iter().enumerate() {
                    if r.matches(call) == Some(true) {
                        jail_hits[i] += 1;
                    }
                }
                if call.name == "ioctl" {
                    if let Some(Some(req)) = call.args.get(1) {
                        jail_ioctls.insert(format!("{req:#x}"));
                    }
                }
                if allows(jail_main, call) == Some(false) {
                    let e = jail_denied.entry(call.name.clone()).or_insert((
                        0,
                        format!("{} (thread {}, run {})", call.line, t.name, o.run),
                    ));
                    e.0 += 1;
                }
            }
            let mut kinds: Vec<(&'static str, usize)> = Vec::new();
            if let Some(&k) = inherited.get(&t.tid) {
                kinds.push((k, 0));
            }
            if let (Some(at), Some(k)) = (t.installed_at, kind_of(&t.name)) {
                kinds.push((k, at + 1));
            }
            for (kind, from) in kinds {
                threads_seen.entry(kind).or_default().insert(t.name.clone());
                let policy = &policies[kind];
                for call in &t.calls[from..] {
                    *used
                        .entry(kind)
                        .or_default()
                        .entry(call.name.clone())
                        .or_insert(0) += 1;
                    if let Some((_, idx)) = ARGS_SHOWN.iter().find(|(n, _)| *n == call.name) {
                        let values: Vec<String> = idx
                            .iter()
                            .map(|&i| match call.args.get(i).copied().flatten() {
                                Some(v) => format!("{v:#x}"),
                                None => "?".into(),
                            })
                            .collect();
                        shown
                            .entry(kind)
                            .or_default()
                            .entry(call.name.clone())
                            .or_default()
                            .insert(values.join("/"));
                    }
                    match allows(policy, call) {
                        Some(true) => {}
                        Some(false) => {
                            let e = denied.entry((kind, call.name.clone())).or_default();
                            e.0 += 1;
                            if e.1.len() < 3 {
                                e.1.push(format!(
                                    "{} (thread {}, run {})",
                                    call.line, t.name, o.run
                                ));
                            }
                        }
                        None => problems.push(format!(
                            "{kind}: cannot read the arguments the policy checks in `{}` (run {})",
                            call.line, o.run
                        )),
                    }
                    for (i, r) in policy.rules.iter().enumerate() {
                        if r.matches(call) == Some(true) {
                            rule_hits.get_mut(kind).expect("kind")[i] += 1;
                        }
                    }
                }
            }
        }
    }

    println!("seccomp audit: syscalls made after each thread installed its filter, per kind");
    for kind in KINDS {
        let list = used.get(kind).cloned().unwrap_or_default();
        println!(
            "  {kind} (threads {:?}): {} syscalls: {}",
            threads_seen.get(kind).cloned().unwrap_or_default(),
            list.len(),
            list.iter()
                .map(|(s, n)| format!("{s}x{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!("seccomp audit: distinct values of checked arguments, per kind");
    for (kind, calls) in &shown {
        for (name, values) in calls {
            println!(
                "  {kind} {name}: {}",
                values.iter().cloned().collect::<Vec<_>>().join(" ")
            );
        }
    }
    for kind in KINDS {
        if threads_seen.get(kind).is_none_or(BTreeSet::is_empty) {
            problems.push(format!(
                "no thread of kind {kind} installed a filter in the lifecycle"
            ));
        }
    }
    println!(
        "seccomp audit: ioctl requests of the whole VMM process: {}",
        jail_ioctls.iter().cloned().collect::<Vec<_>>().join(" ")
    );
    for (i, r) in jail_main.rules.iter().enumerate() {
        let rule = r.describe();
        if let Some((_, why)) = JAIL_NOT_EXERCISED.iter().find(|(n, _)| *n == rule) {
            println!(
                "  jail.json main {rule}: used {}x in this run ({why})",
                jail_hits[i]
            );
        } else if jail_hits[i] == 0 {
            problems.push(format!(
                "REDUNDANT: jail.json's main filter allows {rule}, which the VMM never made"
            ));
        }
    }
    for (rule, _) in JAIL_NOT_EXERCISED {
        if !jail_main.rules.iter().any(|r| r.describe() == *rule) {
            problems.push(format!(
                "JAIL_NOT_EXERCISED: jail.json main has no rule {rule}"
            ));
        }
    }
    for (syscall, (n, example)) in &jail_denied {
        problems.push(format!("JAIL: the VMM made {syscall} {n}x, which jail.json's main filter refuses, e.g. {example}"));
    }
    for ((kind, syscall), (n, examples)) in &denied {
        problems.push(format!(
            "DENIED by {kind}.json: {syscall}, used {n}x, e.g.\n      {}",
            examples.join("\n      ")
        ));
    }
    for kind in KINDS {
        let policy = &policies[kind];
        for (i, r) in policy.rules.iter().enumerate() {
            let exempt = NOT_EXERCISED
                .iter()
                .any(|(k, rule, _)| *k == kind && *rule == r.describe())
                || (!cfg!(debug_assertions)
                    && DEBUG_BUILD_ONLY.contains(&(kind, r.describe().as_str())));
            if rule_hits[kind][i] == 0 && !exempt {
                problems.push(format!(
                    "REDUNDANT: {kind}.json allows {} but no {kind} thread used it",
                    r.describe()
                ));
            }
        }
    }
    for (kind, rule, _) in NOT_EXERCISED {
        let Some(policy) = policies.get(kind) else {
            problems.push(format!("NOT_EXERCISED names the unknown kind {kind}"));
            continue;
        };
        match policy.rules.iter().position(|r| r.describe() == *rule) {
            None => problems.push(format!("NOT_EXERCISED: {kind}.json has no rule {rule}")),
            Some(i) => println!(
                "  not necessarily exercised: {kind} {rule}: used {}x in this run",
                rule_hits[kind][i]
            ),
        }
    }
    assert!(
        problems.is_empty(),
        "seccomp audit:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn strace_lines_are_parsed_into_numeric_arguments() {
    let c = parse_call("ioctl(12, 0xae80, 0) = 0").unwrap();
    assert_eq!(
        (c.name.as_str(), c.args.clone()),
        ("ioctl", vec![Some(12), Some(0xae80), Some(0)])
    );
    let c = parse_call("mmap(NULL, 8192, 0x3, 0x22, -1, 0) = 0x7f00").unwrap();
    assert_eq!(c.args[2], Some(3));
    assert_eq!(c.args[4], Some(u64::MAX));
    let c = parse_call("write(2, \"a, (b\\\"\", 5) = 5").unwrap();
    assert_eq!(c.args, vec![Some(2), None, Some(5)]);
    let c = parse_call("poll([{fd=3, events=0x1}], 1, -1 <unfinished ...>)").unwrap();
    assert_eq!(c.args.len(), 3);
    let c = parse_call("socket(0x1, 0x1|0x80800, 0)             = 23").unwrap();
    assert_eq!(c.args, vec![Some(1), Some(0x80801), Some(0)]);
    let c = parse_call("futex(0x7f, 0x80, 2, NULL <unfinished ...>").unwrap();
    assert_eq!(c.args[1], Some(0x80));
    let c = parse_call("clone(child_stack=0x7f58, flags=0x7d0f00, parent_tid=[31709], tls=0x7f5b, child_tidptr=0x7f49) = 31709").unwrap();
    assert_eq!(
        c.args,
        vec![
            Some(0x7d0f00),
            Some(0x7f58),
            Some(31709),
            Some(0x7f49),
            Some(0x7f5b)
        ]
    );
}
