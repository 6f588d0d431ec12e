use super::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `AUDIT_ARCH_X86_64` (linux/audit.h): the architecture the filters are compiled for.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// The three policy files as one JSON filter set (what `--seccomp-filter` takes).
fn policies_as_one_set() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/seccomp");
    let mut set = serde_json::Map::new();
    for kind in ThreadKind::ALL {
        let path = dir.join(format!("{kind}.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        set.insert(kind.name().to_string(), v[kind.name()].clone());
    }
    serde_json::Value::Object(set).to_string()
}

#[test]
fn the_embedded_filters_are_the_policy_files_compiled() {
    let embedded = FilterSet::embedded().unwrap();
    let from_json = FilterSet::from_json("policies", policies_as_one_set().as_bytes()).unwrap();
    assert_eq!(embedded, from_json);
    for kind in ThreadKind::ALL {
        let n = embedded.get(kind).len();
        assert!(
            (4..format::BPF_MAX_LEN).contains(&n),
            "{kind}: {n} instructions"
        );
    }
}

#[test]
fn a_compiled_set_reads_back_as_written() {
    let set = FilterSet::embedded().unwrap();
    let bytes = set.to_compiled();
    assert!(format::is_compiled(&bytes));
    assert_eq!(FilterSet::from_compiled("x", &bytes).unwrap(), set);
}

fn err_json(json: &str) -> String {
    FilterSet::from_json("file.json", json.as_bytes())
        .unwrap_err()
        .to_string()
}

const ALLOW_WRITE: &str = r#"{"default_action": "kill_process", "filter_action": "allow", "filter": [{"syscall": "write"}]}"#;

#[test]
fn bad_json_sets_are_refused_with_the_origin_and_the_problem() {
    let e = err_json(&format!(
        r#"{{"api": {ALLOW_WRITE}, "vmm": {ALLOW_WRITE}}}"#
    ));
    assert!(
        e.starts_with("file.json: no filter for thread kind \"vcpu\""),
        "{e}"
    );
    let e = err_json(&format!(
        r#"{{"api": {ALLOW_WRITE}, "vmm": {ALLOW_WRITE}, "vcpu": {ALLOW_WRITE}, "main": {ALLOW_WRITE}}}"#
    ));
    assert!(e.contains("filter \"main\" is not a thread kind"), "{e}");
    let e = err_json(r#"{"api": {"default_action": "kill_process""#);
    assert!(
        e.starts_with("file.json: not a valid JSON filter set"),
        "{e}"
    );
    let e = err_json(
        r#"{"api": {"default_action": "kill_process", "filter_action": "allow", "filter": [{"syscall": "nope"}]}}"#,
    );
    assert!(e.contains("nope"), "{e}");
    let e = err_json("[]");
    assert!(e.contains("not a valid JSON filter set"), "{e}");
}

#[test]
fn bad_compiled_sets_are_refused() {
    let good = FilterSet::embedded().unwrap().to_compiled();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 1].to_vec(), "truncated"),
        ([good.as_slice(), &[0]].concat(), "follow the last filter"),
        (
            [&good[..8], &2u32.to_le_bytes()[..], &good[12..]].concat(),
            "version 2",
        ),
        (
            [&good[..12], &0u32.to_le_bytes()[..], &good[16..]].concat(),
            "0 filters",
        ),
        (b"KILN-BPX".to_vec(), "magic"),
    ];
    for (bytes, want) in cases {
        let e = FilterSet::from_compiled("f.bpf", &bytes)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("f.bpf: not a valid compiled filter set") && e.contains(want),
            "{want}: {e}"
        );
    }
    // A jump out of the program, a program that does not end in a return, an opcode seccomp
    // refuses.
    let ret = (0x06, 0, 0, SECCOMP_RET_KILL_PROCESS);
    let jump_out = (0x15, 5, 0, 0);
    let ld = (0x20, 0, 0, 0);
    let modulo = (0x94, 0, 0, 3);
    for (program, want) in [
        (vec![jump_out, ret], "instruction 0: jumps past the end"),
        (
            vec![ret, ld],
            "instruction 1: the last instruction must return",
        ),
        (
            vec![modulo, ret],
            "opcode 0x0094 is not one seccomp accepts",
        ),
    ] {
        let only_ret = [ret];
        let named: Vec<(&str, &[format::Instruction])> =
            vec![("api", &program), ("vmm", &only_ret), ("vcpu", &only_ret)];
        let e = FilterSet::from_compiled("f.bpf", &format::encode(&named))
            .unwrap_err()
            .to_string();
        assert!(e.contains("filter \"api\"") && e.contains(want), "{e}");
    }
}

#[test]
fn log_mode_turns_every_kill_into_log_and_keeps_the_rest() {
    let set = FilterSet::embedded().unwrap();
    let logged = set.clone().into_log_mode();
    for kind in ThreadKind::ALL {
        let (before, after) = (set.get(kind), logged.get(kind));
        assert_eq!(before.len(), after.len());
        let mut changed = 0;
        for (b, a) in before.iter().zip(after) {
            let is_kill = b.code == BPF_RET_K && b.k == SECCOMP_RET_KILL_PROCESS;
            if is_kill {
                assert_eq!(a.k, SECCOMP_RET_LOG);
                changed += 1;
            } else {
                assert_eq!(a, b);
            }
        }
        // The default action and the architecture check share one return (kiln-bpf).
        assert!(changed >= 1, "{kind}: no kill to turn into log");
        // What the programs answer: a log where the filter kills, the same answer elsewhere.
        let program = |p: &[sock_filter]| -> Vec<kiln_bpf::Insn> {
            p.iter()
                .map(|i| kiln_bpf::Insn::new(i.code, i.jt, i.jf, i.k))
                .collect()
        };
        let (before, after) = (program(before), program(after));
        let mut kills = 0;
        for (nr, arch) in (-1..500).map(|nr| (nr, AUDIT_ARCH_X86_64)).chain([(0, 0)]) {
            let data = kiln_bpf::SeccompData {
                nr,
                arch,
                ..Default::default()
            };
            let (b, a) = (kiln_bpf::run(&before, &data), kiln_bpf::run(&after, &data));
            if b == Ok(SECCOMP_RET_KILL_PROCESS) {
                assert_eq!(a, Ok(SECCOMP_RET_LOG), "{kind}: syscall {nr}");
                kills += 1;
            } else {
                assert_eq!(a, b, "{kind}: syscall {nr}");
            }
        }
        assert!(kills > 100, "{kind}: {kills} syscalls killed");
    }
}

/// Installs `kind`'s filter in a forked child, which reports how long it took through a
/// pipe; the child then ends with `exit_group`, which the filter may refuse (SIGSYS): both
/// mean the kernel accepted the filter.
fn install_in_child(set: &FilterSet, kind: ThreadKind) -> Duration {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let program = set.get(kind);
    // SAFETY: the child only makes syscalls (prctl, seccomp, clock_gettime, write, _exit)
    // and touches memory that fork copied; it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let start = Instant::now();
        let ok = seccompiler::apply_filter(program).is_ok();
        let ns: u64 = if ok {
            u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
        } else {
            u64::MAX
        };
        // SAFETY: writes 8 bytes from a local into the pipe; then ends the child.
        unsafe {
            libc::write(wr.as_raw_fd(), (&ns as *const u64).cast(), 8);
            libc::_exit(0);
        }
    }
    drop(wr);
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into buf.
    let n = unsafe { libc::read(rd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    assert_eq!(
        n, 8,
        "{kind}: the child reported nothing (status {status:#x})"
    );
    let ns = u64::from_le_bytes(buf);
    assert_ne!(ns, u64::MAX, "{kind}: the kernel refused the filter");
    assert!(
        libc::WIFEXITED(status) || libc::WTERMSIG(status) == libc::SIGSYS,
        "{kind}: status {status:#x}"
    );
    Duration::from_nanos(ns)
}

#[test]
fn the_kernel_accepts_every_filter_and_installing_one_takes_microseconds() {
    let set = FilterSet::embedded().unwrap();
    for kind in ThreadKind::ALL {
        let mut times: Vec<Duration> = (0..20).map(|_| install_in_child(&set, kind)).collect();
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "seccomp: {kind} filter, {} instructions: installed in {median:?} (median of 20)",
            set.get(kind).len()
        );
        assert!(median < Duration::from_millis(5), "{kind}: {median:?}");
    }
}

/// Cost of a `KVM_RUN` that returns at once (`immediate_exit`), without and with the vCPU
/// filter: what the filter adds to every exit of a running guest. Measured in a forked child
/// (single-threaded: nothing else runs under the filter there).
#[test]
fn a_filtered_kvm_run_costs_little_more_than_an_unfiltered_one() {
    const N: u32 = 20_000;
    let set = FilterSet::embedded().unwrap();
    let kvm = kvm_ioctls::Kvm::new().unwrap_or_else(|e| panic!("this test needs /dev/kvm: {e}"));
    let vm = kvm.create_vm().unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.get_kvm_run().immediate_exit = 1;
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child only makes syscalls (KVM_RUN, prctl, seccomp, write, _exit) on
    // memory and descriptors fork copied; it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let mut time = || {
            let start = Instant::now();
            for _ in 0..N {
                let _ = vcpu.run();
            }
            u64::try_from((start.elapsed() / N).as_nanos()).unwrap_or(u64::MAX)
        };
        let unfiltered = time();
        let filtered = if set.apply(ThreadKind::Vcpu).is_ok() {
            time()
        } else {
            u64::MAX
        };
        let out = [unfiltered, filtered];
        // SAFETY: writes the 16 bytes of `out` into the pipe; then ends the child.
        unsafe {
            libc::write(wr.as_raw_fd(), out.as_ptr().cast(), 16);
            libc::_exit(0);
        }
    }
    drop(wr);
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let mut buf = [0u8; 16];
    // SAFETY: reads at most 16 bytes into buf.
    let n = unsafe { libc::read(rd.as_raw_fd(), buf.as_mut_ptr().cast(), 16) };
    assert_eq!(n, 16, "the child reported nothing (status {status:#x})");
    let (lo, hi) = buf.split_at(8);
    let unfiltered = Duration::from_nanos(u64::from_le_bytes(lo.try_into().unwrap()));
    let filtered = u64::from_le_bytes(hi.try_into().unwrap());
    assert_ne!(filtered, u64::MAX, "the kernel refused the vcpu filter");
    let filtered = Duration::from_nanos(filtered);
    println!("seccomp: KVM_RUN returning at once: {unfiltered:?} unfiltered, {filtered:?} under the vcpu filter");
    assert!(
        filtered < unfiltered + Duration::from_micros(20),
        "{unfiltered:?} -> {filtered:?}"
    );
}

/// Issue 23: `--seccomp-filter` naming a FIFO used to open it blocking and wait forever for a
/// writer; a device never ended. It is read by the one input rule now (`kiln_hostfs`): a
/// FIFO without a writer reads as empty (and is refused as a filter set) at once, a device
/// is refused by kind.
#[test]
fn a_fifo_or_a_device_as_the_filter_file_is_refused_without_hanging() {
    let dir = std::env::temp_dir().join(format!("kiln-seccomp-fifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("filters.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path; it only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    // On a thread: a regression would hang here, and the test must fail instead.
    std::thread::spawn(move || {
        let _ = tx.send(FilterSet::from_file(&path).map_err(|e| e.to_string()));
    });
    let e = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("reading a FIFO without a writer must not block")
        .unwrap_err();
    assert!(e.contains("filters.json"), "{e}");
    let e = FilterSet::from_file(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("a character device"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
