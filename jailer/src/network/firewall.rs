//! The egress firewall: an nftables table `inet kiln-<id>` in the jail's network namespace
//! that drops everything but established/related replies and the tenant's allow-list, on the
//! output, forward (guest traffic from the taps) and input hooks; and the loading of it with
//! the taps' guest filters (`tap_filter.rs`, table `netdev kiln-<id>`) in one `nft` batch.
//! Loaded by Debian's `nft` (ruleset on stdin) rather than raw netlink: nftables' netlink
//! protocol is large and easy to get subtly wrong, and the jailer runs `nft` only before
//! dropping privileges, with a ruleset it generated from validated values.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{tap_filter, NetworkError};
use crate::args::{EgressAllow, Proto, Tap};

pub const NFT_PATHS: &[&str] = &["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"];

/// Name of the jail's nftables table.
pub fn table_name(id: &str) -> String {
    format!("kiln-{id}")
}

/// The match of one allow-list entry (also used by the tap filters).
pub fn allow_rule(a: &EgressAllow) -> String {
    let family = if a.addr.is_ipv4() { "ip" } else { "ip6" };
    let mut rule = format!("{family} daddr {}/{}", a.addr, a.prefix);
    let ports = a
        .ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match (a.proto, a.ports.is_empty()) {
        (Proto::Tcp, true) => rule.push_str(" meta l4proto tcp"),
        (Proto::Udp, true) => rule.push_str(" meta l4proto udp"),
        (Proto::Tcp, false) => rule.push_str(&format!(" tcp dport {{ {ports} }}")),
        (Proto::Udp, false) => rule.push_str(&format!(" udp dport {{ {ports} }}")),
        (Proto::Icmp, _) if a.addr.is_ipv4() => rule.push_str(" meta l4proto icmp"),
        (Proto::Icmp, _) => rule.push_str(" meta l4proto ipv6-icmp"),
        (Proto::Any, _) => {}
    }
    rule
}

/// The nftables ruleset: a fresh table (any previous one of that name is replaced).
pub fn ruleset(table: &str, allow: &[EgressAllow]) -> String {
    let mut rules = String::new();
    for a in allow {
        rules.push_str(&format!("    {} accept\n", allow_rule(a)));
    }
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority 0; policy drop;\n\
         \x20   iif \"lo\" accept\n\
         \x20   ct state established,related accept\n\
         \x20   icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept\n\
         \x20 }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority 0; policy drop;\n\
         \x20   ct state established,related accept\n\
         {rules}\
         \x20 }}\n\
         \x20 chain output {{\n\
         \x20   type filter hook output priority 0; policy drop;\n\
         \x20   oif \"lo\" accept\n\
         \x20   ct state established,related accept\n\
         \x20   icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept\n\
         {rules}\
         \x20 }}\n\
         }}\n"
    )
}

/// Runs `nft -f -` with `input` on stdin, in the calling thread's network namespace;
/// `action` and `table` name it in errors.
fn nft(action: &'static str, table: &str, input: &str) -> Result<(), NetworkError> {
    let nft = NFT_PATHS
        .iter()
        .find(|p| Path::new(p).is_file())
        .ok_or(NetworkError::NftMissing)?;
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetworkError::NftSpawn {
            nft: (*nft).to_owned(),
            source,
        })?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(input.as_bytes()));
    let output = child
        .wait_with_output()
        .map_err(|source| NetworkError::NftSpawn {
            nft: (*nft).to_owned(),
            source,
        })?;
    if !output.status.success() || matches!(written, Some(Err(_))) {
        return Err(NetworkError::NftFailed {
            action,
            table: table.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Loads, in one batch in the calling thread's namespace, the egress firewall (`inet`, when
/// `firewall`) and the filters of `taps` (`netdev`, when there are any); each table replaces
/// any of its name.
pub fn load(
    table: &str,
    firewall: bool,
    taps: &[Tap],
    allow: &[EgressAllow],
) -> Result<(), NetworkError> {
    let mut batch = String::new();
    if firewall {
        batch.push_str(&ruleset(table, allow));
    }
    if !taps.is_empty() {
        batch.push_str(&tap_filter::ruleset(table, taps, allow));
    }
    if batch.is_empty() {
        return Ok(());
    }
    nft("load", table, &batch)
}

/// Deletes the tables of these families (`table` first, so that deleting a table that is
/// not there is no error).
pub fn delete(table: &str, families: &[&str]) -> Result<(), NetworkError> {
    let mut batch = String::new();
    for family in families {
        batch.push_str(&format!(
            "table {family} {table}\ndelete table {family} {table}\n"
        ));
    }
    nft("delete", table, &batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse_egress_flag;

    #[test]
    fn ruleset_drops_by_default_and_allows_the_list() {
        let allow = vec![
            parse_egress_flag("tcp,10.0.0.0/8,443,80").unwrap(),
            parse_egress_flag("udp,10.1.2.3/32").unwrap(),
            parse_egress_flag("icmp,192.168.0.0/16").unwrap(),
            parse_egress_flag("any,fd00::/8").unwrap(),
        ];
        let r = ruleset("kiln-vm", &allow);
        assert!(r.starts_with("table inet kiln-vm\ndelete table inet kiln-vm\n"));
        assert_eq!(r.matches("policy drop").count(), 3);
        assert_eq!(r.matches("ct state established,related accept").count(), 3);
        // Each allow rule appears in the forward and the output chains.
        for rule in [
            "ip daddr 10.0.0.0/8 tcp dport { 80, 443 } accept",
            "ip daddr 10.1.2.3/32 meta l4proto udp accept",
            "ip daddr 192.168.0.0/16 meta l4proto icmp accept",
            "ip6 daddr fd00::/8 accept",
        ] {
            assert_eq!(r.matches(rule).count(), 2, "{rule}\n{r}");
        }
    }

    #[test]
    fn empty_allow_list_only_lets_replies_in() {
        let r = ruleset("kiln-x", &[]);
        assert!(!r.contains("daddr"));
    }
}
