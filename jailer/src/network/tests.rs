//! The jail's rulesets, loaded over netlink by the jailer's encoder, against `nft` as the
//! oracle: each fixture under `testdata/` is the ruleset as text (what the jailer gave
//! `nft -f` before it spoke netlink itself); loaded by `nft` in one fresh network namespace
//! and by [`firewall::load`] in another, `nft list ruleset` must read the same in both, and
//! `nft --debug=netlink list ruleset` must show the same expressions (rule handles aside).
//!
//! Needs root and nft (Debian package nftables); fails loudly without them.

use std::process::Command;

use super::firewall;
use crate::args::{parse_egress_flag, parse_tap, EgressAllow, Tap};

/// Runs `f` on a thread of its own in a new network namespace holding the taps `taps`.
fn in_new_netns<T: Send + 'static>(taps: &[&str], f: impl FnOnce() -> T + Send + 'static) -> T {
    let taps: Vec<String> = taps.iter().map(|t| (*t).to_owned()).collect();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): these tests need root");
        for t in &taps {
            run("ip", &["tuntap", "add", "dev", t, "mode", "tap"], None);
        }
        f()
    })
    .join()
    .expect("the namespace's thread panicked")
}

/// Runs a program that must succeed; its stdout.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (install iproute2 and nftables)"));
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

/// `nft list ruleset` and the expressions of `nft --debug=netlink list ruleset` (without
/// handles, which count differently when `nft -f` adds a table and its contents apart).
fn listing() -> (String, Vec<String>) {
    let text = run("nft", &["list", "ruleset"], None);
    let debug = run("nft", &["--debug=netlink", "list", "ruleset"], None);
    // Rule headers ("inet kiln-a input 5 4": family, table, chain, handles) and their
    // expressions; the sets' listings between them are left out.
    let mut rules: Vec<String> = Vec::new();
    for line in debug.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        let header = words.len() >= 4
            && ["inet", "netdev"].contains(&words[0])
            && words[3..].iter().all(|w| w.parse::<u64>().is_ok());
        if header {
            rules.push(words[..3].join(" "));
        } else if line.starts_with("  [") {
            if let Some(rule) = rules.last_mut() {
                rule.push('\n');
                rule.push_str(line);
            }
        }
    }
    rules.sort();
    (text, rules)
}

fn tables<'a>(
    name: &'a str,
    taps: &'a [Tap],
    allow: &'a [EgressAllow],
    replace: bool,
) -> firewall::Tables<'a> {
    firewall::Tables {
        name,
        firewall: true,
        taps,
        allow,
        replace,
    }
}

fn assert_same_as_nft(fixture: &str, table: &str, taps: Vec<Tap>, allow: Vec<EgressAllow>) {
    assert_same_as_nft_each([fixture, fixture], table, taps, allow);
}

/// [`assert_same_as_nft`] with a fixture for a namespace the jailer made (`fixtures[0]`) and
/// one for a joined namespace, whose tables replace any of the same names (`fixtures[1]`).
fn assert_same_as_nft_each(
    fixtures: [&str; 2],
    table: &str,
    taps: Vec<Tap>,
    allow: Vec<EgressAllow>,
) {
    let names: Vec<String> = taps.iter().map(|t| t.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for (replace, fixture) in [false, true].into_iter().zip(fixtures) {
        let text = std::fs::read_to_string(format!(
            "{}/src/network/testdata/{fixture}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let by_nft = in_new_netns(&names, move || {
            run("nft", &["-f", "-"], Some(&text));
            listing()
        });
        let (table, taps, allow) = (table.to_owned(), taps.clone(), allow.clone());
        let by_jailer = in_new_netns(&names, move || {
            if replace {
                // Tables of the same names with other rules, to be replaced.
                let other = [parse_egress_flag("tcp,10.9.9.0/24,9").unwrap()];
                firewall::load(&tables(&table, &taps[..taps.len().min(1)], &other, false)).unwrap();
            }
            let socket = firewall::load(&tables(&table, &taps, &allow, replace)).unwrap();
            assert!(socket.is_some());
            listing()
        });
        let how = if replace { "replacing" } else { "fresh" };
        assert_eq!(
            by_jailer.0, by_nft.0,
            "nft list ruleset differs for {fixture} ({how})"
        );
        assert_eq!(
            by_jailer.1, by_nft.1,
            "the expressions differ for {fixture} ({how})"
        );
        assert!(by_nft.0.contains("policy drop"), "{}", by_nft.0);
        assert!(by_nft.1.len() >= 4, "no rules read back: {:?}", by_nft.1);
    }
}

fn allow(entries: &[&str]) -> Vec<EgressAllow> {
    entries
        .iter()
        .map(|e| parse_egress_flag(e).unwrap())
        .collect()
}

#[test]
fn the_default_profile_is_what_nft_made() {
    // Made by the jailer, nothing allowed: no connection tracking; joined: the
    // orchestrator's tracked connections keep their replies.
    assert_same_as_nft_each(
        ["default.nft", "default-joined.nft"],
        "kiln-c",
        vec![],
        vec![],
    );
}

#[test]
fn an_allow_list_of_every_kind_is_what_nft_made() {
    let allow = allow(&[
        "tcp,10.0.0.0/8,443,80",
        "udp,10.1.2.3/32",
        "icmp,192.168.0.0/16",
        "any,fd00::/8",
        "tcp,fd01::/16,22",
        "icmp,fd02::/16",
        "any,0.0.0.0/0",
    ]);
    assert_same_as_nft("allow-list.nft", "kiln-a", vec![], allow);
}

#[test]
fn tap_filters_configured_and_learned_are_what_nft_made() {
    let allow = allow(&[
        "tcp,10.0.0.0/8,443,80",
        "udp,10.1.2.3/32",
        "icmp,192.168.0.0/16",
        "any,fd00::/8",
        "tcp,fd01::/16,22",
        "icmp,fd02::/16",
        "any,0.0.0.0/0",
    ]);
    let taps = vec![
        parse_tap("kt0,mac=02:00:0a:00:00:02,ip=10.0.0.2,ip=fd00::2").unwrap(),
        parse_tap("kt1").unwrap(),
    ];
    assert_same_as_nft("tap-filters.nft", "kiln-a", taps, allow);
}

#[test]
fn several_pinned_addresses_and_unaligned_prefixes_are_what_nft_made() {
    let allow = allow(&["udp,10.16.0.0/12,53,5353", "tcp,fd00::/64,443"]);
    let tap = parse_tap("kt2,mac=02:00:0a:00:00:02,ip=10.0.0.2,ip=10.0.0.3,ip=fd00::2,ip=fd00::3")
        .unwrap();
    assert_same_as_nft("pinned-tap.nft", "kiln-b", vec![tap], allow);
}

#[test]
fn deleting_removes_the_tables_and_what_is_missing_is_no_error() {
    use jailer::nftables::Family;
    let tables = in_new_netns(&["kt3"], || {
        let taps = vec![parse_tap("kt3").unwrap()];
        firewall::load(&tables("kiln-d", &taps, &[], false)).unwrap();
        firewall::delete("kiln-d", &[Family::Inet, Family::Netdev]).unwrap();
        // Again: nothing left to delete.
        firewall::delete("kiln-d", &[Family::Inet, Family::Netdev]).unwrap();
        run("nft", &["list", "tables"], None)
    });
    assert_eq!(tables, "");
}

#[test]
fn a_refused_object_is_named_and_nothing_is_applied() {
    use jailer::nftables::{Batch, Family, Hook, Rule, Socket, Verdict};
    let (err, tables) = in_new_netns(&[], || {
        let mut batch = Batch::new(1);
        batch.add_table(Family::Inet, "kiln-e");
        let hook = Hook {
            num: jailer::nftables::batch::HOOK_INPUT,
            priority: 0,
            device: None,
        };
        batch.add_chain(Family::Inet, "kiln-e", "input", Some(&hook));
        let mut accept = Rule::new(Family::Inet);
        accept.verdict(Verdict::Accept);
        batch.add_rule(Family::Inet, "kiln-e", "input", accept);
        // A jump to a chain that does not exist.
        let mut jump = Rule::new(Family::Inet);
        jump.verdict(Verdict::Jump("nosuch".into()));
        batch.add_rule(Family::Inet, "kiln-e", "input", jump);
        let err = Socket::open().unwrap().apply(&batch.finish()).unwrap_err();
        (err.to_string(), run("nft", &["list", "tables"], None))
    });
    assert_eq!(
        err,
        "nftables refused rule 2 of chain inet kiln-e input: No such file or directory (os error 2)"
    );
    assert_eq!(tables, "", "the transaction was applied in part");
}

#[test]
fn many_taps_and_a_long_allow_list_go_in_one_transaction() {
    // Some hundred kilobytes and thousands of messages: more than the default netlink
    // send buffer, and far more messages than answers a socket buffer holds.
    let names: Vec<String> = (0..24).map(|i| format!("kt{i}")).collect();
    let taps: Vec<Tap> = names.iter().map(|n| parse_tap(n).unwrap()).collect();
    let entries: Vec<String> = (0..60)
        .map(|i| format!("tcp,10.{i}.0.0/16,{},{}", 1000 + i, 2000 + i))
        .collect();
    let entries: Vec<&str> = entries.iter().map(String::as_str).collect();
    let allow = allow(&entries);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (chains, rules) = in_new_netns(&names, move || {
        firewall::load(&tables("kiln-m", &taps, &allow, true)).unwrap();
        let text = run("nft", &["list", "ruleset"], None);
        (
            text.matches("\tchain ").count(),
            text.matches("tcp dport { ").count(),
        )
    });
    // inet: 3 chains; netdev: 7 per tap.
    assert_eq!(chains, 3 + 24 * 7);
    // Each entry in the forward and output chains, and in each tap's ip4 chain.
    assert_eq!(rules, 60 * (2 + 24));
}
