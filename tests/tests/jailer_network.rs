//! The jailer's network end to end, as root on this host: the egress firewall of a joined
//! namespace (only the allow-list gets out, from inside a real jail around `jail-probe`), a
//! new namespace with its tap and default-drop policy (removed at the end), and a failure
//! on the host side (a tap that exists already) undone without touching what was there,
//! also when it is the network thread's while the main thread makes the cgroups.
//!
//! Needs root, nft (Debian package nftables) and ip (iproute2). Build both packages first:
//! `cargo test -p jailer -p kiln-tests --test jailer_network` does.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln_tests::jail::{run, sh, Jail, Running};
use kiln_tests::netns::{in_netns, NetNs, NsPair};
use kiln_tests::require_program;

const T: Duration = Duration::from_secs(20);

/// jail.json that also lets the probe open IPv4 sockets.
fn policy_with_inet(jail: &Jail) -> PathBuf {
    jail.seccomp_policy_with(serde_json::json!([
        {"syscall": "socket", "args": [{"index": 0, "type": "dword", "op": "eq", "val": 2}]}
    ]))
}

/// A TCP listener in namespace `ns`: the peers that connected within 5 s.
fn listen_in(ns: &str, port: u16) -> std::thread::JoinHandle<Vec<String>> {
    let listener = in_netns(Some(ns), move || {
        std::net::TcpListener::bind(("0.0.0.0", port))
    })
    .expect("listen in the namespace");
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut peers = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            match listener.accept() {
                Ok((_, peer)) => peers.push(peer.to_string()),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            if !peers.is_empty() {
                // One connection is all the test makes; give a straggler a moment.
                std::thread::sleep(Duration::from_millis(200));
                if let Ok((_, peer)) = listener.accept() {
                    peers.push(peer.to_string());
                }
                break;
            }
        }
        peers
    })
}

#[test]
fn the_egress_firewall_drops_everything_but_the_allow_list() {
    require_program("nft", "nftables");
    let jail = Jail::new("jl-egress");
    let pair = NsPair::new(&jail.id);
    let port = 18_000 + (std::process::id() % 1000) as u16;
    let (allowed, denied) = (format!("{}.2", pair.net), format!("{}.3", pair.net));
    let listener = listen_in(&pair.b, port);
    let policy = policy_with_inet(&jail);
    let profile = jail.write_profile(&format!(r#"{{"landlock": {{"tcp_connect": [{port}]}}}}"#));
    let done = run(
        &mut jail.command(
            &[
                "--cleanup-on-exit",
                "--netns",
                &pair.a_path(),
                "--firewall",
                "on",
                "--egress-allow",
                &format!("tcp,{allowed}/32,{port}"),
                "--seccomp-policy",
                policy.to_str().unwrap(),
                "--profile",
                profile.to_str().unwrap(),
            ],
            &[
                "connect-tcp",
                &format!("{allowed}:{port}"),
                "3000",
                "connect-tcp",
                &format!("{denied}:{port}"),
                "500",
                "send-udp",
                &format!("{denied}:{port}"),
                "send-udp",
                &format!("{allowed}:{port}"),
            ],
        ),
        T,
    );
    let peers = listener.join().unwrap();
    let r = &done.report;
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(
        r.get(&format!("connect.{allowed}:{port}")),
        "ok",
        "{}",
        done.describe()
    );
    assert_eq!(
        peers.len(),
        1,
        "exactly the allowed connection arrived: {peers:?}"
    );
    assert!(peers[0].starts_with(&format!("{}.1:", pair.net)));
    // Same host, same port, other address: dropped (a SYN that never gets an answer).
    assert_eq!(r.get(&format!("connect.{denied}:{port}")), "ETIMEDOUT");
    // UDP is not on the list: the output hook drops it and sendto says EPERM.
    assert_eq!(r.get(&format!("udp.{denied}:{port}")), "EPERM");
    assert_eq!(r.get(&format!("udp.{allowed}:{port}")), "EPERM");
    // In a joined namespace the jailer removes its table, and only its table.
    let tables = sh("ip", &["netns", "exec", &pair.a, "nft", "list", "tables"]);
    assert!(!tables.contains(&format!("kiln-{}", jail.id)), "{tables}");
}

#[test]
fn a_new_netns_gets_the_tap_and_the_default_policy_and_is_removed() {
    require_program("nft", "nftables");
    let jail = Jail::new("jl-netns");
    let before = jail.snapshot();
    let mut run = Running::spawn(&mut jail.command(
        &["--cleanup-on-exit", "--new-netns", "--tap", "kt0"],
        &["tap", "kt0", "hold"],
    ));
    run.wait_for("ready", T);
    assert_eq!(
        run.report.get("tap.kt0"),
        "ok",
        "the VMM's uid attaches without capabilities"
    );
    let vmm = run.report.get("pid").to_owned();
    assert!(sh("ip", &["netns", "list"])
        .lines()
        .any(|l| l.starts_with(&jail.id)));
    let link = sh("ip", &["-n", &jail.id, "-d", "link", "show", "kt0"]);
    assert!(
        link.contains("tun type tap") && link.contains(&format!("user {}", jail.uid)),
        "{link}"
    );
    let ruleset = sh(
        "ip",
        &[
            "netns",
            "exec",
            &jail.id,
            "nft",
            "list",
            "table",
            "inet",
            &format!("kiln-{}", jail.id),
        ],
    );
    assert_eq!(ruleset.matches("policy drop").count(), 3, "{ruleset}");
    // The default profile allows nothing out: no reply to accept, no connection tracking
    // (the allow-list test proves replies pass when something is allowed).
    assert!(!ruleset.contains("ct state"), "{ruleset}");
    assert_eq!(ruleset.matches("icmpv6 type").count(), 2, "{ruleset}");
    let ns_file = std::fs::metadata(format!("/run/netns/{}", jail.id)).unwrap();
    let vmm_ns = std::fs::metadata(format!("/proc/{vmm}/ns/net")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        ns_file.ino(),
        vmm_ns.ino(),
        "the VMM is in the new namespace"
    );
    let done = run.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert_eq!(
        jail.snapshot(),
        before,
        "namespace, mount, cgroup or files left"
    );
}

#[test]
fn in_a_joined_namespace_the_tap_filter_and_the_firewall_are_removed_with_the_tap() {
    require_program("nft", "nftables");
    let jail = Jail::new("jl-tapf");
    let netns = NetNs::new(&format!("{}-n", jail.id));
    let ns = netns.name().to_owned();
    let table = format!("kiln-{}", jail.id);
    let mut run = Running::spawn(&mut jail.command(
        &[
            "--cleanup-on-exit",
            "--netns",
            &format!("/run/netns/{ns}"),
            "--firewall",
            "on",
            "--tap",
            "kt5,mac=02:00:00:00:00:05,ip=10.9.0.2",
        ],
        &["hold"],
    ));
    run.wait_for("ready", T);
    let tables = sh("ip", &["netns", "exec", &ns, "nft", "list", "tables"]);
    assert!(tables.contains(&format!("table inet {table}")), "{tables}");
    assert!(
        tables.contains(&format!("table netdev {table}")),
        "{tables}"
    );
    let chain = sh(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "nft",
            "list",
            "chain",
            "netdev",
            &table,
            "guest-kt5",
        ],
    );
    assert!(
        chain.contains("type filter hook ingress device \"kt5\"")
            && chain.contains("ether saddr != 02:00:00:00:00:05"),
        "{chain}"
    );
    let done = run.finish(T);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    // The orchestrator's namespace keeps only what it had.
    let tables = sh("ip", &["netns", "exec", &ns, "nft", "list", "tables"]);
    assert!(!tables.contains(&table), "{tables}");
    let links = sh("ip", &["-n", &ns, "link", "show"]);
    assert!(!links.contains("kt5"), "{links}");
}

#[test]
fn a_failure_on_the_network_thread_is_named_and_undone_and_never_touches_what_was_there() {
    // The joined namespace already has a tap named kt9: `--tap kt9` must fail (it would
    // take over the orchestrator's interface), and the undo must leave it alone. The network
    // (step 4) is set up on a thread of its own while the main thread fills the root and
    // makes the cgroups with their limits (steps 2 and 3): its failure must come back named
    // by its step, and the undo must remove what both threads made (the tap kt8 made first,
    // the cgroups, the jail directory) and nothing that was there.
    let jail = Jail::new("jl-hostfail");
    let netns = NetNs::new(&format!("{}-n", jail.id));
    let ns = netns.name();
    sh(
        "ip",
        &["-n", ns, "tuntap", "add", "dev", "kt9", "mode", "tap"],
    );
    let before = jail.snapshot();
    let done = run(
        &mut jail.command(
            &[
                "--netns",
                &format!("/run/netns/{ns}"),
                "--cgroup",
                "pids.max=32",
                "--tap",
                "kt8",
                "--tap",
                "kt9",
                "--timing",
            ],
            &[],
        ),
        T,
    );
    assert_eq!(done.code(), Some(1), "{}", done.describe());
    // What is undone below was made: the cgroups (step 3 ended) and the tap kt8.
    for made in [
        "jailer timing: 3 cgroups:",
        "jailer timing: 4 host network › 2 tap kt8:",
    ] {
        assert!(
            done.stderr.contains(made),
            "no {made:?}: {}",
            done.describe()
        );
    }
    let busy = std::io::Error::from_raw_os_error(libc::EBUSY);
    assert!(
        done.stderr.contains(&format!(
            "jailer: 4 host network: --tap kt9: create (TUNSETIFF): {busy}"
        )),
        "{}",
        done.describe()
    );
    assert!(
        !jail.jail_dir().exists(),
        "the jail directory was left: {}",
        done.describe()
    );
    assert!(
        !jail.cgroup_dir("pids").exists(),
        "the jail's cgroup was left: {}",
        done.describe()
    );
    let links = sh("ip", &["-n", ns, "link", "show"]);
    assert!(
        links.contains("kt9"),
        "the existing tap was removed: {links}"
    );
    assert!(
        !links.contains("kt8"),
        "the tap the jailer made was left: {links}"
    );
    let mut now = jail.snapshot();
    now.netns.retain(|n| !n.starts_with(ns));
    let mut was = before;
    was.netns.retain(|n| !n.starts_with(ns));
    assert_eq!(now, was);
}
