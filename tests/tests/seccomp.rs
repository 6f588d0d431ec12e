//! The VMM's seccomp filters, from outside (policies/seccomp/README.md):
//!
//! - the whole lifecycle of the tiny guest (every device, API traffic, pause/resume, every
//!   way of ending) runs under the built-in filters without being killed, and every thread
//!   of a running VMM is filtered;
//! - on each thread kind, a forbidden syscall (the debug-build hook
//!   `KILN_TEST_FORBIDDEN_SYSCALL`) kills the process with SIGSYS, and `abort()` (a release
//!   build's panic, hook `KILN_TEST_ABORT`) still ends it with SIGABRT;
//! - `--seccomp-filter` takes a JSON or compiled (`kiln-seccompiler`) filter set; one that
//!   denies what the VMM needs (KVM_RUN) makes it die with SIGSYS; one that does not parse or
//!   lacks a thread kind is refused with the file and the problem named;
//! - `--no-seccomp` and `--seccomp-log` warn, and let the forbidden syscall through.
//!
//! The audit of what each filter allows is `seccomp_audit.rs`. Needs root and /dev/kvm.

mod seccomp_common;

use kiln_tests::{require_bin, require_kvm, run_with_timeout, tiny};
use seccomp_common::{abort_run, forbidden_run, lifecycle, Launch, Outcome, Scratch, TIMEOUT};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Exit code of a bad configuration (vmm/src/exit.rs).
const BAD_CONFIG: i32 = 152;

fn check(outcomes: &[Outcome]) {
    let problems: Vec<String> = outcomes.iter().filter_map(Outcome::problem).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_whole_lifecycle_runs_under_the_built_in_filters() {
    // With the worker's flag: booted microVMs coalesce their virtio set-up writes, which the
    // vCPU threads drain under their filter.
    let outcomes = lifecycle(&Launch {
        vmm_args: vec!["--coalesce-mmio".into()],
        ..Launch::default()
    });
    check(&outcomes);
    let api = outcomes
        .iter()
        .find(|o| o.run == "api")
        .expect("the API run");
    let names: Vec<&str> = api.threads.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["vmm", "kiln_api", "kiln_metrics", "vcpu0", "vcpu1"] {
        assert!(
            names.contains(&want),
            "no thread {want} in {:?}",
            api.threads
        );
    }
    for (name, mode) in &api.threads {
        assert_eq!(
            mode, "2",
            "thread {name} of the running VMM is not seccomp-filtered: {:?}",
            api.threads
        );
    }
    // KVM's own workers (`kvm-nx-lpage-recovery`) live in the VMM's thread group but run
    // only kernel code.
    let ours = api
        .threads
        .iter()
        .filter(|(n, _)| !n.starts_with("kvm-"))
        .count();
    assert_eq!(ours, 5, "unexpected threads: {:?}", api.threads);
}

#[test]
fn a_forbidden_syscall_on_each_thread_kind_kills_the_process_with_sigsys() {
    let launch = Launch::default();
    let outcomes: Vec<Outcome> = ["api", "vmm", "vcpu", "kiln_metrics"]
        .into_iter()
        .zip([
            "forbidden-api",
            "forbidden-vmm",
            "forbidden-vcpu",
            "forbidden-metrics",
        ])
        .map(|(target, run)| forbidden_run(&launch, run, target))
        .collect();
    check(&outcomes);
}

#[test]
fn abort_on_each_thread_kind_ends_with_sigabrt_not_sigsys() {
    let launch = Launch::default();
    let outcomes: Vec<Outcome> = ["api", "vmm", "vcpu", "kiln_metrics"]
        .into_iter()
        .zip(["abort-api", "abort-vmm", "abort-vcpu", "abort-metrics"])
        .map(|(target, run)| abort_run(&launch, run, target))
        .collect();
    check(&outcomes);
}

/// The three policy files as one JSON filter set, after `edit`.
fn policy_set(edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/seccomp");
    let mut set = serde_json::Map::new();
    for kind in ["api", "vmm", "vcpu"] {
        let path = dir.join(format!("{kind}.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        set.insert(kind.to_string(), v[kind].clone());
    }
    let mut set = serde_json::Value::Object(set);
    edit(&mut set);
    set
}

/// Boots the tiny guest's `print` scenario (config file, no API) with `args`.
fn boot_print(dir: &Scratch, args: &[&str], env: &[(&str, &str)]) -> kiln_tests::Finished {
    require_kvm();
    let cfg = dir.path("vm.json");
    let text = format!(
        "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": \"kiln.test=print\"}}, \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}}}}",
        tiny::tiny_guest().to_str().expect("utf-8 path")
    );
    std::fs::write(&cfg, text).expect("write config");
    let mut cmd = Command::new(require_bin("vmm"));
    cmd.arg("--config-file")
        .arg(&cfg)
        .arg("--no-api")
        .args(args);
    cmd.envs(env.iter().copied());
    seccomp_common::no_core_dumps(&mut cmd);
    run_with_timeout(&mut cmd, TIMEOUT)
}

fn write_json(dir: &Scratch, name: &str, v: &serde_json::Value) -> PathBuf {
    let p = dir.path(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).expect("serialise"))
        .expect("write filter file");
    p
}

/// `kiln-seccompiler json out`.
fn compile(json: &Path, out: &Path) -> kiln_tests::Finished {
    let mut cmd = Command::new(require_bin("kiln-seccompiler"));
    cmd.arg(json).arg(out);
    run_with_timeout(&mut cmd, TIMEOUT)
}

/// Boots `print` with the filter set `set` as `--seccomp-filter`, once as `<name>.json` and
/// once compiled by kiln-seccompiler (which must succeed) as `<name>.bpf`: each file and
/// its run.
fn boot_with_filter_set(
    dir: &Scratch,
    name: &str,
    set: &serde_json::Value,
) -> Vec<(PathBuf, kiln_tests::Finished)> {
    let json = write_json(dir, &format!("{name}.json"), set);
    let compiled = dir.path(&format!("{name}.bpf"));
    let c = compile(&json, &compiled);
    assert_eq!(c.code(), 0, "{c}");
    [json, compiled]
        .into_iter()
        .map(|file| {
            let f = boot_print(
                dir,
                &["--seccomp-filter", file.to_str().expect("utf-8")],
                &[],
            );
            (file, f)
        })
        .collect()
}

#[test]
fn a_custom_filter_set_replaces_the_built_in_one_as_json_or_compiled() {
    let dir = Scratch::new("kiln-sc-custom");
    for (file, f) in boot_with_filter_set(&dir, "set", &policy_set(|_| {})) {
        assert_eq!(f.code(), 0, "--seccomp-filter {}: {f}", file.display());
        let out = tiny::TinyOutput::parse(&f.stdout);
        assert!(out.done && out.errors().is_empty(), "{f}");
    }
}

#[test]
fn a_custom_filter_denying_kvm_run_kills_the_vmm_with_sigsys() {
    let dir = Scratch::new("kiln-sc-deny");
    let set = policy_set(|v| {
        let rules = v["vcpu"]["filter"].as_array_mut().expect("vcpu rules");
        let before = rules.len();
        rules.retain(|r| !(r["syscall"] == "ioctl" && r["args"][0]["val"] == 0xae80));
        assert_eq!(rules.len(), before - 1, "vcpu.json has one KVM_RUN rule");
    });
    for (file, f) in boot_with_filter_set(&dir, "no-kvm-run", &set) {
        let signal = f.status.and_then(|s| s.signal());
        assert_eq!(
            signal,
            Some(libc::SIGSYS),
            "--seccomp-filter {} without KVM_RUN: {f}",
            file.display()
        );
        assert!(
            !f.stdout.contains(tiny::PREFIX),
            "the guest ran without KVM_RUN: {f}"
        );
    }
}

#[test]
fn bad_filter_files_are_refused_naming_the_file_and_the_problem() {
    let dir = Scratch::new("kiln-sc-bad");
    let no_vcpu = write_json(
        &dir,
        "no-vcpu.json",
        &policy_set(|v| {
            v.as_object_mut().expect("object").remove("vcpu");
        }),
    );
    let extra = write_json(
        &dir,
        "extra.json",
        &policy_set(|v| {
            let vmm = v["vmm"].clone();
            v.as_object_mut()
                .expect("object")
                .insert("vcpu0".into(), vmm);
        }),
    );
    let bad_syscall = write_json(
        &dir,
        "bad-syscall.json",
        &policy_set(|v| {
            v["api"]["filter"]
                .as_array_mut()
                .expect("rules")
                .push(serde_json::json!({"syscall": "no_such_syscall"}));
        }),
    );
    let malformed = dir.path("malformed.json");
    std::fs::write(&malformed, "{\"api\": {\"default_action\": ").expect("write");
    let good = write_json(&dir, "good.json", &policy_set(|_| {}));
    let compiled = dir.path("good.bpf");
    assert_eq!(compile(&good, &compiled).code(), 0);
    let bytes = std::fs::read(&compiled).expect("read compiled");
    let truncated = dir.path("truncated.bpf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 3]).expect("write");
    let missing = dir.path("missing.json");
    let cases: &[(&Path, &[&str])] = &[
        (&no_vcpu, &["no filter for thread kind \"vcpu\""]),
        (&extra, &["filter \"vcpu0\" is not a thread kind"]),
        (
            &bad_syscall,
            &["not a valid JSON filter set", "no_such_syscall"],
        ),
        (&malformed, &["not a valid JSON filter set"]),
        (
            &truncated,
            &["not a valid compiled filter set", "truncated"],
        ),
        (&missing, &["cannot read the seccomp filter file"]),
    ];
    for (file, wants) in cases {
        let f = boot_print(
            &dir,
            &["--seccomp-filter", file.to_str().expect("utf-8")],
            &[],
        );
        assert_eq!(f.code(), BAD_CONFIG, "{}: {f}", file.display());
        let name = file.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(
            f.stderr.contains(name),
            "{}: the message does not name the file: {f}",
            file.display()
        );
        for want in *wants {
            assert!(
                f.stderr.contains(want),
                "{}: {want:?} missing: {f}",
                file.display()
            );
        }
        assert!(
            !f.stderr.contains("panicked") && !f.stdout.contains(tiny::PREFIX),
            "{f}"
        );
        // The same refusal from the compiler tool.
        let c = compile(file, &dir.path("out.bpf"));
        assert_ne!(
            c.code(),
            0,
            "kiln-seccompiler accepted {}: {c}",
            file.display()
        );
        assert!(c.stderr.contains(name), "{c}");
    }
}

#[test]
fn no_seccomp_and_log_mode_warn_and_let_the_forbidden_syscall_through() {
    let dir = Scratch::new("kiln-sc-off");
    let hook = [("KILN_TEST_FORBIDDEN_SYSCALL", "vcpu")];
    for (flag, warning) in [
        ("--no-seccomp", "WARNING: --no-seccomp"),
        ("--seccomp-log", "WARNING: --seccomp-log"),
    ] {
        let f = boot_print(&dir, &[flag], &hook);
        assert_eq!(f.code(), 0, "{flag}: {f}");
        assert!(f.stderr.contains(warning), "{flag}: no warning: {f}");
        assert!(tiny::TinyOutput::parse(&f.stdout).done, "{f}");
    }
    // Without either, the same hook kills.
    let f = boot_print(&dir, &[], &hook);
    assert_eq!(f.status.and_then(|s| s.signal()), Some(libc::SIGSYS), "{f}");
}
