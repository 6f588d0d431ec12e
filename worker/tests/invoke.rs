//! `kiln invoke` (the README's main job) through the real jailer and VMM: the response and
//! the timings of each phase, cold then warm, clear errors, and nothing left behind — after
//! success, after an error, and after Ctrl-C.

mod common;

use common::{wait_until, Env};
use kiln_tests::{run_with_timeout, wait_with_timeout};
use std::process::Stdio;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

fn lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn invoke_prints_the_response_and_cold_then_warm_timings() {
    let env = Env::new("inv");
    let event = r#"{"hello":"world"}"#;
    let echoed = r#"{"echo":{"hello":"world"}}"#;
    let f = run_with_timeout(
        env.kiln("invoke")
            .args(["echo", "--event", event, "--repeat", "3", "--json"]),
        TIMEOUT,
    );
    assert_eq!(f.code(), 0, "{f}");
    let runs = lines(&f.stdout);
    assert_eq!(runs.len(), 3, "{f}");
    let vm = runs[0]["vm_id"].as_str().expect("vm_id").to_string();
    for (n, r) in runs.iter().enumerate() {
        assert_eq!(r["response"], echoed, "{r}");
        assert_eq!(r["cold"], n == 0, "{r}");
        assert_eq!(r["vm_id"], vm.as_str(), "the same VM serves every run");
        assert!(r["timings_us"]["handler_us"].as_u64().is_some(), "{r}");
    }
    let cold = &runs[0]["timings_us"];
    for phase in ["jail_us", "vmm_start_us", "guest_ready_us"] {
        assert!(
            cold[phase].as_u64().is_some(),
            "cold start phase {phase}: {cold}"
        );
    }
    assert!(
        runs[1]["timings_us"].get("jail_us").is_none(),
        "{}",
        runs[1]
    );
    env.assert_nothing_left(&[vm]);

    // The human form: the response on stdout, the phases on stderr.
    let f = run_with_timeout(
        env.kiln("invoke")
            .args(["echo", "--event", event, "--repeat", "2"]),
        TIMEOUT,
    );
    assert_eq!(f.code(), 0, "{f}");
    assert_eq!(f.stdout, format!("{echoed}\n{echoed}\n"), "{f}");
    for needle in [
        "cold",
        "jail ",
        "VMM start ",
        "guest ready ",
        "handler ",
        "warm",
        "jail removed",
    ] {
        assert!(f.stderr.contains(needle), "{needle:?} missing\n{f}");
    }
    env.assert_nothing_left(&["echo-".to_string()]);
}

#[test]
fn invoke_errors_are_clear_and_leave_nothing_behind() {
    let env = Env::new("inverr");
    let f = run_with_timeout(
        env.kiln("invoke").args(["nosuch", "--event", "{}"]),
        TIMEOUT,
    );
    assert_eq!(f.code(), 1, "{f}");
    assert!(
        f.stderr.contains("unknown function \"nosuch\"") && f.stderr.contains("[unknown_function]"),
        "{f}"
    );

    let f = run_with_timeout(
        env.kiln("invoke")
            .args(["panic", "--event", "{}", "--json"]),
        TIMEOUT,
    );
    assert_eq!(f.code(), 1, "{f}");
    let err = &lines(&f.stdout)[0]["error"];
    assert_eq!(err["code"], "panic", "{f}");
    let vm = err["vm_id"]
        .as_str()
        .expect("the failed VM's id")
        .to_string();
    env.assert_nothing_left(&[vm]);

    let f = run_with_timeout(env.kiln("invoke").args(["echo"]), TIMEOUT);
    assert_eq!(f.code(), 2, "{f}");
    assert!(f.stderr.contains("--event"), "{f}");
    env.assert_nothing_left(&["nosuch-".to_string(), "panic-".to_string()]);
}

#[test]
fn ctrl_c_during_an_invocation_stops_the_vm_and_removes_its_jail() {
    let env = Env::new("intr");
    let start = Instant::now();
    let mut child = env
        .kiln("invoke")
        .args(["spin", "--event", "{}"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln invoke");
    let jails = env.chroot_base.join("vmm");
    wait_until("the spin VM's jail", Duration::from_secs(60), || {
        std::fs::read_dir(&jails).is_ok_and(|mut d| d.next().is_some())
    });
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let f = wait_with_timeout(&mut child, TIMEOUT, start);
    assert_eq!(f.code(), 130, "{f}");
    env.assert_nothing_left(&["spin-".to_string()]);
}

#[test]
fn build_prints_the_image_path_and_refuses_bad_functions() {
    let env = Env::new("build");
    let f = run_with_timeout(env.kiln("build").arg("echo"), TIMEOUT);
    assert_eq!(f.code(), 0, "{f}");
    let image = std::path::PathBuf::from(f.stdout.trim());
    assert!(image.is_file() && image.ends_with("echo.elf"), "{f}");
    assert!(f.stderr.contains("memory 16 MiB"), "{f}");
    // By directory, as guest/runtime/README.md says.
    let dir = common::repo().join("examples/functions/counter");
    let f = run_with_timeout(env.kiln("build").arg(&dir), TIMEOUT);
    assert_eq!(f.code(), 0, "{f}");
    assert!(f.stdout.trim().ends_with("counter.elf"), "{f}");
    let f = run_with_timeout(env.kiln("build").arg("nosuch"), TIMEOUT);
    assert_eq!(f.code(), 1, "{f}");
    assert!(f.stderr.contains("[unknown_function]"), "{f}");
}
