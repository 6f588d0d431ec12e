//! The command line's unit tests: every validator's table, the sections, defaults, and how
//! the profile merges under the flags.

use super::*;
use std::net::IpAddr;

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// A valid command line, pointing at files that exist on any Linux host.
fn base() -> Vec<&'static str> {
    vec![
        "--id",
        "vm-1",
        "--exec-file",
        "/proc/self/exe",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--chroot-base-dir",
        "/tmp",
    ]
}

fn parse_with(extra: &[&str]) -> Result<Config, ArgsError> {
    let mut list = base();
    list.extend_from_slice(extra);
    // /proc/self/exe is a symlink; use the test binary itself.
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap().to_owned();
    let mut v = args(&list);
    v[3] = OsString::from(exe);
    match parse(v)? {
        Command::Jail(c) => Ok(*c),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn diagnose_without_names_a_layer_and_is_for_debug_builds_only() {
    let c = parse_with(&["--diagnose-without", "landlock"]);
    if cfg!(debug_assertions) {
        let c = c.unwrap();
        assert_eq!(
            c.diagnose_without.into_iter().collect::<Vec<_>>(),
            vec![Layer::Landlock]
        );
        let c = parse_with(&[
            "--diagnose-without",
            "privileges",
            "--diagnose-without",
            "landlock",
        ])
        .unwrap();
        assert_eq!(c.diagnose_without.len(), 2);
        assert!(parse_with(&[]).unwrap().diagnose_without.is_empty());
        assert!(matches!(
            parse_with(&["--diagnose-without", "privileges", "--userns"]),
            Err(ArgsError::Conflict {
                other: "userns",
                ..
            })
        ));
    } else {
        assert_eq!(
            c,
            Err(ArgsError::DiagnoseRelease {
                value: "landlock".into()
            })
        );
    }
    assert!(matches!(
        parse_with(&["--diagnose-without", "seccomp"]),
        Err(ArgsError::InvalidValue {
            flag: "diagnose-without",
            ..
        })
    ));
}

#[test]
fn id_table() {
    for ok in ["a", "vm-1", "A0-b", &"x".repeat(64)] {
        assert!(validate_id(ok).is_ok(), "{ok}");
    }
    for bad in ["", "a_b", "a.b", "a/b", "..", "é", "a b", &"x".repeat(65)] {
        assert_eq!(
            validate_id(bad),
            Err(ArgsError::InvalidId { value: bad.into() }),
            "{bad}"
        );
    }
}

#[test]
fn host_path_table() {
    assert!(check_host_path("--x", "/a/b").is_ok());
    assert!(check_host_path("--x", "rel/b").is_ok());
    for bad in ["", "/a/../b", "..", "a/..", "a\0b"] {
        assert!(check_host_path("--x", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn jail_path_table() {
    assert_eq!(check_jail_path("f", "/a/b").unwrap(), PathBuf::from("/a/b"));
    for bad in ["a", "/", "/a/../b", "/a/./b", "/a//b", "/a/", "/a\0"] {
        assert!(check_jail_path("f", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn cgroup_path_table() {
    assert!(check_cgroup_path("kiln/tenants").is_ok());
    for bad in [
        "",
        "/abs",
        "a/../b",
        "..",
        "a/./b",
        "a//b",
        "cgroup.procs",
        "a\0",
    ] {
        assert!(check_cgroup_path(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn cgroup_setting_table() {
    assert_eq!(
        parse_cgroup_setting("pids.max=10").unwrap(),
        ("pids.max".into(), "10".into())
    );
    assert!(parse_cgroup_setting("cpu.max=50000 100000").is_ok());
    assert!(parse_cgroup_setting("memory.limit_in_bytes=1").is_ok());
    assert!(parse_cgroup_setting("hugetlb.2MB.max=0").is_ok());
    for bad in [
        "pids.max",
        "pids=1",
        "cgroup.procs=1",
        "../x.y=1",
        "a/b.c=1",
        "Pids.max=1",
        "pids..max=1",
        "pids.max=",
        "pids.max=1\n2",
        "release_agent=/x",
        "tasks=1",
    ] {
        assert!(parse_cgroup_setting(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn rlimit_table() {
    assert_eq!(parse_rlimit("no-file=64").unwrap(), (Rlimit::NoFile, 64));
    assert_eq!(parse_rlimit("fsize=0").unwrap(), (Rlimit::Fsize, 0));
    assert!(matches!(
        parse_rlimit("nofile=1"),
        Err(ArgsError::UnknownResource { .. })
    ));
    assert!(parse_rlimit("fsize").is_err());
    assert!(parse_rlimit("fsize=-1").is_err());
}

#[test]
fn egress_table() {
    let e = parse_egress_flag("tcp,10.0.0.0/8,443,80").unwrap();
    assert_eq!(e.proto, Proto::Tcp);
    assert_eq!(e.prefix, 8);
    assert_eq!(e.ports, vec![80, 443]);
    assert!(parse_egress_flag("any,fd00::/8").is_ok());
    assert!(parse_egress_flag("icmp,192.168.1.1/32").is_ok());
    for bad in [
        "tcp",
        "sctp,10.0.0.0/8",
        "tcp,10.0.0.1",
        "tcp,10.0.0.1/33",
        "tcp,10.0.0.1/8",
        "tcp,300.0.0.0/8",
        "icmp,10.0.0.0/8,80",
        "tcp,10.0.0.0/8,0",
        "tcp,10.0.0.0/8,http",
    ] {
        assert!(parse_egress_flag(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn tap_table() {
    assert!(validate_tap("tap0").is_ok());
    for bad in ["", "tap0123456789abc", "tap/0", "tap 0"] {
        assert!(validate_tap(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        parse_tap("tap0").unwrap(),
        Tap {
            name: "tap0".into(),
            mac: None,
            addrs: vec![]
        }
    );
    let t = parse_tap("tap0,mac=02:00:0a:00:00:02,ip=10.0.0.2,ip=fd00::2").unwrap();
    assert_eq!(t.mac, Some([2, 0, 0x0a, 0, 0, 2]));
    assert_eq!(
        t.addrs,
        vec![
            "10.0.0.2".parse::<IpAddr>().unwrap(),
            "fd00::2".parse().unwrap()
        ]
    );
    for (bad, why) in [
        ("tap0,mac=01:00:5e:00:00:01", "not a unicast MAC"),
        ("tap0,mac=00:00:00:00:00:00", "not a unicast MAC"),
        ("tap0,mac=02:00:0a:00:00", "not a unicast MAC"),
        ("tap0,mac=02:00:0a:00:00:02:03", "not a unicast MAC"),
        (
            "tap0,mac=02:00:00:00:00:01,mac=02:00:00:00:00:02",
            "given twice",
        ),
        ("tap0,ip=10.0.0.0/24", "not an IPv4 or IPv6 address"),
        ("tap0,ip=0.0.0.0", "cannot be a guest's address"),
        ("tap0,ip=ff02::1", "cannot be a guest's address"),
        ("tap0,vlan=3", "expected mac=MAC or ip=ADDRESS"),
        ("tap/0,ip=10.0.0.2", "an interface name"),
    ] {
        let e = parse_tap(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn valid_command_line_and_defaults() {
    let c = parse_with(&["--", "--config-file", "/x.json"]).unwrap();
    assert_eq!(c.id, "vm-1");
    assert_eq!(c.uid, 1000);
    assert_eq!(c.cgroup.version, CgroupVersion::Auto);
    assert_eq!(c.cgroup.parent, PathBuf::from(&c.exec_name));
    assert_eq!(c.rlimits.get(&Rlimit::NoFile), Some(&DEFAULT_NO_FILE));
    assert_eq!(c.rlimits.get(&Rlimit::Core), Some(&0));
    // No network flag: an empty namespace of the jail's own, never the host's.
    assert_eq!(c.network.mode, NetnsMode::Private);
    let shared = parse_with(&["--share-host-netns"]).unwrap();
    assert_eq!(shared.network.mode, NetnsMode::Host);
    assert!(!c.network.firewall);
    assert_eq!(c.vmm_args, args(&["--config-file", "/x.json"]));
    assert_eq!(
        c.chroot_dir(),
        PathBuf::from("/tmp").join(&c.exec_name).join("vm-1/root")
    );
}

#[test]
fn flag_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "unknown flag"),
        (&["--daemonize=yes"], "takes no value"),
        (&["--uid", "5"], "given twice"),
        (&["--tap", "tap0"], "needs --netns or --new-netns"),
        (&["--firewall", "on"], "--firewall on needs"),
        (&["--firewall", "maybe"], "expected auto, on or off"),
        (
            &["--netns", "/x", "--new-netns"],
            "conflicts with --new-netns",
        ),
        (
            &["--netns", "/x", "--share-host-netns"],
            "--netns \"/x\" conflicts with --share-host-netns",
        ),
        (
            &["--new-netns", "--share-host-netns"],
            "--new-netns conflicts with --share-host-netns",
        ),
        (
            &["--share-host-netns", "--tap", "t0"],
            "needs --netns or --new-netns",
        ),
        (
            &[
                "--new-netns",
                "--tap",
                "t0",
                "--tap",
                "t0,mac=02:00:00:00:00:01",
            ],
            "given twice",
        ),
        (
            &["--share-host-netns", "--firewall", "on"],
            "--firewall on needs",
        ),
        (&["--cgroup-version", "3"], "expected 1, 2 or auto"),
        (&["--parent-cgroup", "../up"], "`..`"),
        (&["--parent-cgroup", "/abs"], "must be relative"),
        (&["--cgroup", "cgroup.procs=1"], "cgroup.* files"),
        (&["--resource-limit", "stack=1"], "unknown resource"),
        (&["--bind-ro", "/tmp"], "expected HOST:JAIL"),
        (&["--bind-ro", "/tmp:rel"], "must be absolute"),
        (&["--bind-ro", "/tmp:/dev/x"], "jail's own /dev"),
        (
            &["--bind-ro", "/tmp:/a", "--bind-rw", "/tmp:/a/b"],
            "overlaps",
        ),
        (&["--bind-ro", "/nonexistent-kiln:/a"], "--bind-ro"),
        (&["stray"], "unexpected argument"),
    ];
    for (extra, want) in cases {
        let err = parse_with(extra).unwrap_err();
        assert!(err.to_string().contains(want), "{extra:?}: {err}");
    }
}

#[test]
fn root_ids_are_refused() {
    let mut v = base();
    v[5] = "0";
    let err = parse(args(&v)).unwrap_err();
    assert_eq!(
        err,
        ArgsError::RootId {
            flag: "uid",
            value: 0
        }
    );
}

#[test]
fn missing_flags_are_named() {
    let err = parse(args(&["--id", "a"])).unwrap_err();
    assert_eq!(err, ArgsError::Argv(ArgvError::MissingFlag("exec-file")));
    let err = parse(args(&["cleanup", "--exec-file", "/x"])).unwrap_err();
    assert_eq!(err, ArgsError::Argv(ArgvError::MissingFlag("id")));
}

#[test]
fn the_shared_tokenizer_keeps_firecrackers_spellings_and_the_rest() {
    // `--flag=value` and `--flag value` alike; everything after `--` goes to the VMM as is.
    let c = parse_with(&["--cgroup-version=2", "--", "--id", "x", "stray"]).unwrap();
    assert_eq!(c.cgroup.version, CgroupVersion::V2);
    assert_eq!(c.vmm_args, args(&["--id", "x", "stray"]));
    // A switch given twice is refused like any other repeated flag (kiln-argv's rule).
    let err = parse_with(&["--daemonize", "--daemonize"]).unwrap_err();
    assert_eq!(err, ArgsError::Argv(ArgvError::RepeatedSwitch("daemonize")));
    assert_eq!(err.to_string(), "flag --daemonize given twice");
    // `jailer cleanup` passes nothing on: an argument after `--` is refused by name.
    let cleanup = [
        "cleanup",
        "--id",
        "a",
        "--exec-file",
        "/usr/bin/vmm",
        "--chroot-base-dir",
        "/tmp",
        "--",
    ];
    let err = parse(args(&[&cleanup[..], &["x"]].concat())).unwrap_err();
    assert_eq!(err, ArgsError::Argv(ArgvError::Positional("x".into())));
    assert!(matches!(parse(args(&cleanup)), Ok(Command::Cleanup(_))));
}

#[test]
fn cleanup_command() {
    match parse(args(&[
        "cleanup",
        "--id",
        "a-1",
        "--exec-file",
        "/usr/bin/vmm",
        "--chroot-base-dir",
        "/tmp",
    ]))
    .unwrap()
    {
        Command::Cleanup(c) => {
            assert_eq!(c.exec_name, "vmm");
            assert_eq!(c.jail_dir(), PathBuf::from("/tmp/vmm/a-1"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_chroot_base_resolves_under_its_nearest_existing_ancestor() {
    let dir = kiln_tests::ScratchDir::new("kiln-args-base");
    let link = dir.join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    let given = link.join("new/./deeper");
    let resolved = paths::resolve_chroot_base(given.to_str()).unwrap();
    let canonical = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(resolved, canonical.join("new/deeper"));
    assert!(!canonical.join("new").exists(), "the parser made the base");
    // A file on the way is not a directory; a `..` after a missing name cannot be resolved.
    std::fs::write(dir.join("file"), b"").unwrap();
    assert!(matches!(
        paths::resolve_chroot_base(dir.join("file").to_str()),
        Err(ArgsError::NotADirectory { .. })
    ));
    assert!(matches!(
        paths::resolve_chroot_base(dir.join("file/x").to_str()),
        Err(ArgsError::Resolve { .. })
    ));
    assert!(matches!(
        paths::resolve_chroot_base(dir.join("new/../x").to_str()),
        Err(ArgsError::InvalidPath { .. })
    ));
}

#[test]
fn the_default_tenant_profile_is_valid() {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/tenant/default.json"
    );
    let p = std::fs::canonicalize(p).unwrap();
    let c = parse_with(&["--profile", p.to_str().unwrap()]).unwrap();
    assert_eq!(c.cgroup.limits.pids_max, Some(64));
    assert_eq!(c.cgroup.limits.memory_bytes, Some(384 << 20));
    assert_eq!(c.rlimits.get(&Rlimit::NoFile), Some(&1024));
    assert_eq!(c.rlimits.get(&Rlimit::Core), Some(&0));
    // The VMM locks no memory.
    assert_eq!(c.rlimits.get(&Rlimit::Memlock), Some(&0));
    // A small /run; no huge pages.
    assert_eq!(
        c.run,
        RunLimits {
            size_bytes: 4 << 20,
            inodes: 64
        }
    );
    assert_eq!(c.cgroup.limits.hugetlb_bytes, None);
    assert!(c.network.egress.is_empty());
}

#[test]
fn run_limits_default_small_and_refuse_0() {
    let c = parse_with(&[]).unwrap();
    assert_eq!(
        c.run,
        RunLimits {
            size_bytes: DEFAULT_RUN_SIZE,
            inodes: DEFAULT_RUN_INODES
        }
    );
    let dir = std::env::temp_dir().join(format!("kiln-args-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = dir.join("p.json");
    let p = profile.to_str().unwrap();
    std::fs::write(&profile, r#"{"run": {"size_bytes": 65536, "inodes": 8}}"#).unwrap();
    let c = parse_with(&["--profile", p]).unwrap();
    assert_eq!(
        c.run,
        RunLimits {
            size_bytes: 65536,
            inodes: 8
        }
    );
    for (text, field) in [
        (r#"{"run": {"size_bytes": 0}}"#, "run.size_bytes"),
        (r#"{"run": {"inodes": 0}}"#, "run.inodes"),
    ] {
        std::fs::write(&profile, text).unwrap();
        let e = parse_with(&["--profile", p]).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{field} \"0\": must be greater than 0")),
            "{e}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn profile_merges_under_flags() {
    let dir = std::env::temp_dir().join(format!("kiln-args-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = dir.join("p.json");
    std::fs::write(
        &profile,
        r#"{"cgroup": {"pids_max": 10}, "rlimits": {"no_file": 100, "fsize": 5},
            "egress": {"allow": [{"proto": "udp", "cidr": "10.1.0.0/16", "ports": [53]}]}}"#,
    )
    .unwrap();
    let p = profile.to_str().unwrap();
    let c = parse_with(&[
        "--profile",
        p,
        "--new-netns",
        "--resource-limit",
        "no-file=50",
    ])
    .unwrap();
    assert_eq!(c.cgroup.limits.pids_max, Some(10));
    assert_eq!(c.rlimits.get(&Rlimit::NoFile), Some(&50));
    assert_eq!(c.rlimits.get(&Rlimit::Fsize), Some(&5));
    assert_eq!(c.network.egress.len(), 1);
    assert!(c.network.firewall);
    let c = parse_with(&[
        "--profile",
        p,
        "--new-netns",
        "--egress-allow",
        "tcp,10.2.0.0/16,80",
    ])
    .unwrap();
    assert_eq!(c.network.egress.len(), 1);
    assert_eq!(c.network.egress[0].proto, Proto::Tcp);

    std::fs::write(
        &profile,
        r#"{"egress": {"allow": [{"proto": "tcp", "cidr": "10.0.0.1/8"}]}}"#,
    )
    .unwrap();
    let err = parse_with(&["--profile", p]).unwrap_err().to_string();
    assert!(
        err.contains("egress.allow[0].cidr") && err.contains("10.0.0.1/8"),
        "{err}"
    );
    std::fs::write(
        &profile,
        r#"{"landlock": {"paths": [{"path": "/x", "access": "ro"}]}}"#,
    )
    .unwrap();
    let err = parse_with(&["--profile", p]).unwrap_err().to_string();
    assert!(err.contains("landlock.paths[0].path"), "{err}");
    std::fs::write(&profile, r#"{"cgroup": {"pids_max": 0}}"#).unwrap();
    let err = parse_with(&["--profile", p]).unwrap_err().to_string();
    assert!(err.contains("cgroup.pids_max"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_exec_file_link_names_the_jail_after_the_file_it_resolves_to() {
    let dir = std::env::temp_dir().join(format!("kiln-args-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("firecracker-v1.17.0");
    std::fs::copy(std::env::current_exe().unwrap(), &target).unwrap();
    let link = dir.join("firecracker");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut list = args(&base());
    list[3] = OsString::from(&link);
    let Command::Jail(c) = parse(list).unwrap() else {
        panic!("a jail")
    };
    assert_eq!(c.exec_file, std::fs::canonicalize(&target).unwrap());
    assert_eq!(c.exec_name, "firecracker-v1.17.0");
    // `jailer cleanup` finds the same directory through the link.
    let cleanup = [
        "cleanup",
        "--id",
        "vm-1",
        "--exec-file",
        link.to_str().unwrap(),
        "--chroot-base-dir",
        "/tmp",
    ];
    let Command::Cleanup(c) = parse(args(&cleanup)).unwrap() else {
        panic!("a cleanup")
    };
    assert_eq!(c.exec_name, "firecracker-v1.17.0");
    std::fs::remove_dir_all(&dir).unwrap();
}
