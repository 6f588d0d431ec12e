//! The jail's network: which namespace (`--netns`, `--new-netns`), its taps (`--tap`), the
//! egress firewall (`--firewall`) and its allow-list (`--egress-allow`, or the profile's
//! `egress.allow`).

use std::net::IpAddr;
use std::path::PathBuf;

use kiln_argv::Args;

use super::error::ArgsError;
use super::flags::MAX_TAP_LEN;
use super::paths::check_host_path;
use crate::profile::Profile;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsMode {
    /// Stay in the jailer's network namespace (Firecracker's default).
    Inherit,
    /// `--netns PATH`.
    Join(PathBuf),
    /// `--new-netns`: `/run/netns/<id>`.
    Create,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub mode: NetnsMode,
    pub taps: Vec<String>,
    pub firewall: bool,
    pub egress: Vec<EgressAllow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Any,
}

/// One validated egress allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressAllow {
    pub proto: Proto,
    pub addr: IpAddr,
    pub prefix: u8,
    pub ports: Vec<u16>,
}

/// A tap device name.
pub fn validate_tap(value: &str) -> Result<String, ArgsError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TAP_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ArgsError::InvalidValue {
            flag: "tap",
            value: value.to_owned(),
            reason: format!(
                "an interface name is 1 to {MAX_TAP_LEN} characters, alphanumeric, '-' or '_'"
            ),
        })
    }
}

/// One egress entry; `field` names where it came from (`--egress-allow` or
/// `egress.allow[N]` in the profile).
pub fn egress_entry(
    field: &str,
    proto: &str,
    cidr: &str,
    ports: &[u16],
) -> Result<EgressAllow, ArgsError> {
    let err = |what: &str, value: &str, reason: String| ArgsError::InvalidEgress {
        field: format!("{field}{what}"),
        value: value.to_owned(),
        reason,
    };
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "icmp" => Proto::Icmp,
        "any" => Proto::Any,
        other => {
            return Err(err(
                ".proto",
                other,
                "expected tcp, udp, icmp or any".into(),
            ))
        }
    };
    let (addr_text, prefix_text) = cidr
        .split_once('/')
        .ok_or_else(|| err(".cidr", cidr, "expected ADDRESS/PREFIX".into()))?;
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| err(".cidr", cidr, "not an IPv4 or IPv6 address".into()))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix_text
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| err(".cidr", cidr, format!("the prefix must be 0 to {max}")))?;
    if !host_bits_clear(addr, prefix) {
        return Err(err(
            ".cidr",
            cidr,
            "host bits are set below the prefix".into(),
        ));
    }
    if !ports.is_empty() && !matches!(proto, Proto::Tcp | Proto::Udp) {
        return Err(err(
            ".ports",
            &format!("{ports:?}"),
            "ports only apply to tcp and udp".into(),
        ));
    }
    if ports.contains(&0) {
        return Err(err(".ports", "0", "port 0 is not a port".into()));
    }
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    Ok(EgressAllow {
        proto,
        addr,
        prefix,
        ports,
    })
}

fn host_bits_clear(addr: IpAddr, prefix: u8) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            prefix >= 32 || bits.checked_shl(u32::from(prefix)).unwrap_or(0) == 0
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            prefix >= 128 || bits.checked_shl(u32::from(prefix)).unwrap_or(0) == 0
        }
    }
}

/// `--egress-allow PROTO,CIDR[,PORT...]`.
pub fn parse_egress_flag(value: &str) -> Result<EgressAllow, ArgsError> {
    let bad = |reason: String| ArgsError::InvalidEgress {
        field: "--egress-allow".into(),
        value: value.to_owned(),
        reason,
    };
    let mut parts = value.split(',');
    let proto = parts.next().unwrap_or_default();
    let Some(cidr) = parts.next() else {
        return Err(bad("expected PROTO,CIDR[,PORT...]".into()));
    };
    let mut ports = Vec::new();
    for p in parts {
        let port = p
            .parse::<u16>()
            .map_err(|_| bad(format!("{p:?} is not a port number")))?;
        ports.push(port);
    }
    egress_entry("--egress-allow", proto, cidr, &ports)
}

/// The network flags; the allow-list comes from `--egress-allow` if given (it replaces the
/// profile's list), else from the profile. The namespace of `--new-netns` is named after the
/// jail id, which is already validated.
pub(super) fn network_config(argv: &Args, profile: &Profile) -> Result<Network, ArgsError> {
    let mode = match (argv.single("netns"), argv.switch("new-netns")) {
        (Some(path), true) => {
            return Err(ArgsError::Conflict {
                flag: "netns",
                value: path.to_owned(),
                other: "new-netns",
            })
        }
        (Some(path), false) => {
            check_host_path("--netns", path)?;
            NetnsMode::Join(PathBuf::from(path))
        }
        (None, true) => NetnsMode::Create,
        (None, false) => NetnsMode::Inherit,
    };
    let mut taps = Vec::new();
    for t in argv.multi("tap") {
        let tap = validate_tap(t)?;
        if mode == NetnsMode::Inherit {
            return Err(ArgsError::TapWithoutNetns { value: tap });
        }
        if taps.contains(&tap) {
            return Err(ArgsError::InvalidValue {
                flag: "tap",
                value: tap,
                reason: "given twice".into(),
            });
        }
        taps.push(tap);
    }
    let firewall = match argv.single("firewall").unwrap_or("auto") {
        "auto" => mode == NetnsMode::Create,
        "on" => {
            if mode == NetnsMode::Inherit {
                return Err(ArgsError::FirewallWithoutNetns);
            }
            true
        }
        "off" => false,
        other => {
            return Err(ArgsError::InvalidValue {
                flag: "firewall",
                value: other.to_owned(),
                reason: "expected auto, on or off".into(),
            })
        }
    };
    let flags = argv.multi("egress-allow");
    let egress = if flags.is_empty() {
        profile
            .egress
            .allow
            .iter()
            .enumerate()
            .map(|(i, e)| egress_entry(&format!("egress.allow[{i}]"), &e.proto, &e.cidr, &e.ports))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        flags
            .iter()
            .map(|f| parse_egress_flag(f))
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(Network {
        mode,
        taps,
        firewall,
        egress,
    })
}
