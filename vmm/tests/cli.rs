//! The `vmm` binary's command line: errors name the flag and exit with code 153, `--help`
//! and `--version` exit 0. Needs no KVM. (Being an integration test of the `vmm` package, it
//! also makes `cargo test` build the `vmm` binary that the workspace suites run.)

use std::process::{Command, Output};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("run vmm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_command_lines_exit_153_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "unknown flag \"--bogus\""),
        (&["--config-file"], "flag --config-file needs a value"),
        (&["--no-api"], "--no-api needs --config-file"),
        (&["--id", "a b"], "flag --id: invalid value \"a b\""),
        (
            &["--level", "chatty"],
            "flag --level: invalid value \"chatty\"",
        ),
        (
            &["--boot-entry", "bios"],
            "flag --boot-entry: invalid value \"bios\"",
        ),
        (
            &["--start-time-us", "x"],
            "flag --start-time-us: invalid value \"x\"",
        ),
        (&["--id", "a", "--id", "b"], "flag --id given twice"),
        (&["vm.json"], "unexpected argument \"vm.json\""),
    ];
    for (args, want) in cases {
        let o = vmm(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(153), "{args:?}: {err}");
        assert!(
            err.contains(want),
            "{args:?}: {err:?} does not contain {want:?}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn help_lists_the_flags_and_version_prints_it() {
    let o = vmm(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--config-file",
        "--no-api",
        "--api-sock",
        "--serial-out",
        "--boot-entry",
        "--boot-timer",
        "--seccomp-filter",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
    let o = vmm(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    // Firecracker's words first (launchers parse them), Kiln's version after.
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("Firecracker v1.17.0 (Kiln vmm "));
}

#[test]
fn a_missing_config_file_is_a_configuration_error() {
    let o = vmm(&["--config-file", "/nonexistent/kiln/vm.json", "--no-api"]);
    assert_eq!(o.status.code(), Some(152), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot read config file \"/nonexistent/kiln/vm.json\""),
        "{}",
        stderr(&o)
    );
}
