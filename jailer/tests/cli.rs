//! Command-line errors of the jailer binary: each bad input gets its own message naming the
//! flag and the value, exit status 1, and nothing is created. These run as any user: every
//! error here is found before the jailer touches the system.

use kiln_tests::ScratchDir;
use std::path::Path;
use std::process::{Command, Output};

const JAILER: &str = env!("CARGO_BIN_EXE_jailer");

struct Scratch(ScratchDir);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = ScratchDir::new(&format!("kiln-cli-{name}"));
        std::fs::create_dir_all(dir.join("base")).unwrap();
        Scratch(dir)
    }

    fn base(&self) -> String {
        self.0.join("base").display().to_string()
    }

    /// The base directory is still empty: the failed run created nothing.
    fn assert_untouched(&self) {
        let left: Vec<_> = std::fs::read_dir(self.0.join("base")).unwrap().collect();
        assert!(left.is_empty(), "the jailer created {left:?}");
    }
}

fn jailer(args: &[&str]) -> Output {
    Command::new(JAILER)
        .args(args)
        .output()
        .expect("run the jailer")
}

/// Runs the jailer with a valid command line changed by `edit`; expects exit status 1 and
/// `want` in stderr.
fn expect_error(name: &str, edit: impl FnOnce(&mut Vec<String>, &Scratch), want: &str) {
    let s = Scratch::new(name);
    let mut args: Vec<String> = [
        "--id",
        "vm-1",
        "--exec-file",
        JAILER,
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--chroot-base-dir",
        &s.base(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    edit(&mut args, &s);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = jailer(&refs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: {args:?}\n{stderr}");
    assert!(
        stderr.contains(want),
        "{name}: expected {want:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{name}: one line: {stderr}");
    s.assert_untouched();
}

fn set(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).unwrap();
    args[i + 1] = value.to_owned();
}

#[test]
fn bad_ids_each_get_their_error() {
    for (name, id) in [
        ("id-chars", "vm_1"),
        ("id-long", &"a".repeat(65)[..]),
        ("id-empty", ""),
        ("id-dots", ".."),
    ] {
        expect_error(
            name,
            |a, _| set(a, "--id", id),
            &format!("--id {id:?}: an id is 1 to 64 characters, each ASCII alphanumeric or '-'"),
        );
    }
}

#[test]
fn dot_dot_paths_are_refused() {
    expect_error(
        "dotdot-base",
        |a, s| set(a, "--chroot-base-dir", &format!("{}/../base", s.base())),
        "--chroot-base-dir",
    );
    expect_error(
        "dotdot-exec",
        |a, _| set(a, "--exec-file", "/usr/../usr/bin/true"),
        "--exec-file \"/usr/../usr/bin/true\": contains a `..` component",
    );
    expect_error(
        "dotdot-cgroup",
        |a, _| a.extend(["--parent-cgroup".into(), "kiln/../..".into()]),
        "--parent-cgroup \"kiln/../..\": contains a `..` component",
    );
    expect_error(
        "dotdot-bind",
        |a, _| a.extend(["--bind-ro".into(), "/tmp:/a/../../etc".into()]),
        "--bind-ro \"/tmp:/a/../../etc\": contains a `..` component",
    );
    expect_error(
        "cgroup-file",
        |a, _| a.extend(["--cgroup".into(), "../../release_agent=/x".into()]),
        "--cgroup \"../../release_agent=/x\": the file name cannot contain `/` or `..`",
    );
}

#[test]
fn exec_file_problems_each_get_their_error() {
    expect_error(
        "exec-missing",
        |a, s| set(a, "--exec-file", &s.0.join("nope").display().to_string()),
        "nope: no such file",
    );
    // A link is followed (Firecracker's meaning); one that leads nowhere is a missing file.
    expect_error(
        "exec-dangling-symlink",
        |a, s| {
            let link = s.0.join("link");
            std::os::unix::fs::symlink(s.0.join("gone"), &link).unwrap();
            set(a, "--exec-file", &link.display().to_string());
        },
        "link: no such file",
    );
    expect_error(
        "exec-symlink-to-dir",
        |a, s| {
            let link = s.0.join("dirlink");
            std::os::unix::fs::symlink(s.0.path(), &link).unwrap();
            set(a, "--exec-file", &link.display().to_string());
        },
        ": not a regular file",
    );
    expect_error(
        "exec-dir",
        |a, s| set(a, "--exec-file", &s.0.path().display().to_string()),
        ": not a regular file",
    );
}

#[test]
fn other_flag_errors() {
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "uid0",
            vec!["--uid", "0"],
            "--uid 0: the VMM must not run as root",
        ),
        (
            "gid-text",
            vec!["--gid", "staff"],
            "--gid \"staff\": not a decimal number",
        ),
        ("unknown", vec!["--bogus"], "unknown flag \"--bogus\""),
        ("twice", vec!["--id", "again"], "flag --id given twice"),
        (
            "tap",
            vec!["--tap", "tap0"],
            "--tap \"tap0\" needs --netns or --new-netns",
        ),
        (
            "netns-both",
            vec!["--netns", "/run/netns/x", "--new-netns"],
            "conflicts with --new-netns",
        ),
        (
            "netns-missing",
            vec!["--netns", "/nonexistent/ns"],
            "--netns /nonexistent/ns",
        ),
        (
            "rlimit",
            vec!["--resource-limit", "stack=1"],
            "--resource-limit \"stack=1\": unknown resource",
        ),
        (
            "rlimit-raise",
            vec!["--resource-limit", "no-file=1099511627776"],
            "above the current hard limit",
        ),
        (
            "egress",
            vec!["--new-netns", "--egress-allow", "tcp,10.0.0.1/8,80"],
            "host bits are set",
        ),
        (
            "version",
            vec!["--cgroup-version", "3"],
            "--cgroup-version \"3\": expected 1, 2 or auto",
        ),
        (
            "seccomp",
            vec!["--seccomp-policy", "/nonexistent.json"],
            "--seccomp-policy /nonexistent.json",
        ),
    ];
    for (name, extra, want) in cases {
        expect_error(
            name,
            |a, _| {
                // Flags the base command line has are replaced, not repeated ("twice" aside).
                let mut rest = extra.iter();
                while let Some(flag) = rest.next() {
                    let value = rest.clone().next().filter(|v| !v.starts_with("--"));
                    match (a.iter().position(|x| x == flag), value, name) {
                        (Some(i), Some(v), n) if n != "twice" => {
                            a[i + 1] = v.to_string();
                            rest.next();
                        }
                        _ => a.push(flag.to_string()),
                    }
                }
            },
            want,
        );
    }
    let s = Scratch::new("missing");
    let out = jailer(&["--id", "a", "--uid", "1", "--gid", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing required flag --exec-file"));
    s.assert_untouched();
}

#[test]
fn profile_errors_name_the_field() {
    let cases = [
        (
            "p-unknown",
            r#"{"cgroup": {"memory": 1}}"#,
            "unknown field `memory`",
        ),
        (
            "p-type",
            r#"{"rlimits": {"no_file": "many"}}"#,
            "invalid type",
        ),
        (
            "p-cidr",
            r#"{"egress": {"allow": [{"proto": "tcp", "cidr": "10.0.0.0"}]}}"#,
            "egress.allow[0].cidr \"10.0.0.0\"",
        ),
        (
            "p-access",
            r#"{"landlock": {"paths": [{"path": "/run/x", "access": "rwx"}]}}"#,
            "landlock.paths[0].access \"rwx\"",
        ),
    ];
    for (name, text, want) in cases {
        expect_error(
            name,
            |a, s| {
                let p = s.0.join("profile.json");
                std::fs::write(&p, text).unwrap();
                a.extend(["--profile".into(), p.display().to_string()]);
            },
            want,
        );
    }
}

#[test]
fn a_missing_chroot_base_is_made_only_for_a_jail() {
    // Found after the base is resolved: the command is refused, and the base, which does not
    // exist, is not made (it would be, as Firecracker's jailer does, for a jail).
    expect_error(
        "missing-base",
        |a, s| {
            set(a, "--chroot-base-dir", &format!("{}/new/deeper", s.base()));
            a.extend(["--netns".into(), "/nonexistent/ns".into()]);
        },
        "--netns /nonexistent/ns",
    );
    expect_error(
        "missing-base-cleanup",
        |a, s| {
            a.retain(|x| !["--uid", "--gid", "1000"].contains(&x.as_str()));
            a.insert(0, "cleanup".into());
            set(a, "--chroot-base-dir", &format!("{}/new/../x", s.base()));
        },
        "--chroot-base-dir",
    );
}

#[test]
fn help_and_cleanup_of_nothing() {
    let out = jailer(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage: jailer --id ID"));
    let s = Scratch::new("cleanup");
    // `jailer cleanup --id ID --exec-file /usr/bin/vmm --chroot-base-dir BASE EXTRA...`.
    let cleanup = |id: &str, base: &str, extra: &[&str]| {
        let mut args = vec![
            "cleanup",
            "--id",
            id,
            "--exec-file",
            "/usr/bin/vmm",
            "--chroot-base-dir",
            base,
        ];
        args.extend_from_slice(extra);
        jailer(&args)
    };
    let out = cleanup("gone", &s.base(), &[]);
    // Cleanup is idempotent: nothing there is success, and said so.
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "jailer: --id gone: nothing to clean up");
    assert!(Path::new(&s.base()).exists());
    // Nor is a chroot base that does not exist (a fresh host's /srv/jailer): nothing to clean
    // up, and it is not made.
    let missing = Path::new(&s.base()).join("no/such/base");
    let out = cleanup("gone", missing.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "jailer: --id gone: nothing to clean up");
    assert!(!missing.exists());
    // A directory without a journal is someone else's: left alone, and said so.
    let foreign = Path::new(&s.base()).join("vmm/mine");
    std::fs::create_dir_all(&foreign).unwrap();
    let out = cleanup("mine", &s.base(), &[]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--id mine: ")
            && err.contains("vmm/mine has no jail journal")
            && err.contains("left alone"),
        "{err}"
    );
    assert!(foreign.is_dir());
    // A bad --wait-ms is named before any file is looked at (the default base may not exist).
    for bad in ["-1", "1h", "3600001"] {
        let out = cleanup("x", missing.to_str().unwrap(), &["--wait-ms", bad]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "--wait-ms \"{bad}\": milliseconds, at most 3600000"
            )),
            "{err}"
        );
    }
}

/// Every flag of Firecracker's `jailer --help` (v1.17), as its help lists them.
const FIRECRACKER_JAILER_FLAGS: &[&str] = &[
    "--cgroup",
    "--cgroup-version",
    "--chroot-base-dir",
    "--daemonize",
    "--exec-file",
    "--gid",
    "--help",
    "--id",
    "--netns",
    "--new-pid-ns",
    "--parent-cgroup",
    "--resource-limit",
    "--uid",
    "--version",
];

#[test]
fn help_lists_every_firecracker_jailer_flag_and_version_answers() {
    let out = jailer(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in FIRECRACKER_JAILER_FLAGS {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(flag) || l.contains(&format!(", {flag}"))),
            "--help lacks {flag}:\n{help}"
        );
    }
    let out = jailer(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        // Firecracker's jailer's words first (launchers parse them), Kiln's version after.
        format!("Jailer v1.17.0 (Kiln jailer {})", env!("CARGO_PKG_VERSION"))
    );
}
