//! The jail's network: which namespace (`--netns`, `--new-netns`, `--share-host-netns`, or
//! by default an empty one of its own), its taps (`--tap`), the egress firewall
//! (`--firewall`) and its allow-list (`--egress-allow`, or the profile's `egress.allow`).

use std::net::IpAddr;
use std::path::PathBuf;

use kiln_argv::Args;

use super::error::ArgsError;
use super::flags::MAX_TAP_LEN;
use super::paths::check_host_path;
use crate::profile::Profile;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsMode {
    /// Neither flag: the jail process unshares an empty network namespace of its own (only
    /// `lo`, down), which ends with the jail. Nothing of the host's network is reachable,
    /// not even its abstract Unix sockets.
    Private,
    /// `--share-host-netns`: stay in the jailer's network namespace (Firecracker's
    /// default; unsafe: the host's abstract Unix sockets and interfaces are the jail's).
    Host,
    /// `--netns PATH`.
    Join(PathBuf),
    /// `--new-netns`: `/run/netns/<id>`.
    Create,
}

impl NetnsMode {
    /// A namespace with a host-side name, where taps and the firewall can be made.
    pub fn named(&self) -> bool {
        matches!(self, NetnsMode::Join(_) | NetnsMode::Create)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub mode: NetnsMode,
    pub taps: Vec<Tap>,
    /// The egress firewall in the jail's namespace (table `inet kiln-<id>`).
    pub firewall: bool,
    /// The guest filter at each tap (table `netdev kiln-<id>`): on unless `--firewall off`.
    pub tap_filter: bool,
    pub egress: Vec<EgressAllow>,
}

/// `--tap NAME[,mac=MAC][,ip=ADDRESS]...`: a tap, and what the guest behind it may claim to
/// be (its filter learns what is not given: the first source MAC, the first addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub addrs: Vec<IpAddr>,
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

/// `--tap NAME[,mac=MAC][,ip=ADDRESS]...`: the MAC a unicast address (six hex pairs), the
/// addresses IPv4 or IPv6 without a prefix.
pub fn parse_tap(value: &str) -> Result<Tap, ArgsError> {
    let bad = |reason: String| ArgsError::InvalidValue {
        flag: "tap",
        value: value.to_owned(),
        reason,
    };
    let mut parts = value.split(',');
    let name = validate_tap(parts.next().unwrap_or_default())?;
    let mut tap = Tap {
        name,
        mac: None,
        addrs: Vec::new(),
    };
    for part in parts {
        match part.split_once('=') {
            Some(("mac", mac)) => {
                if tap.mac.is_some() {
                    return Err(bad("mac= given twice".into()));
                }
                tap.mac = Some(parse_mac(mac).ok_or_else(|| {
                    bad(format!(
                        "{mac:?} is not a unicast MAC address (six hex pairs separated by ':')"
                    ))
                })?);
            }
            Some(("ip", addr)) => {
                let a: IpAddr = addr
                    .parse()
                    .map_err(|_| bad(format!("{addr:?} is not an IPv4 or IPv6 address")))?;
                if a.is_unspecified() || a.is_multicast() {
                    return Err(bad(format!("{addr} cannot be a guest's address")));
                }
                if !tap.addrs.contains(&a) {
                    tap.addrs.push(a);
                }
            }
            _ => return Err(bad(format!("{part:?}: expected mac=MAC or ip=ADDRESS"))),
        }
    }
    Ok(tap)
}

/// A unicast MAC address `xx:xx:xx:xx:xx:xx` (not all zero).
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    let unicast = mac[0] & 1 == 0 && mac != [0; 6];
    (parts.next().is_none() && unicast).then_some(mac)
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
    let share = argv.switch("share-host-netns");
    let mode = match (argv.single("netns"), argv.switch("new-netns")) {
        (Some(path), true) => {
            return Err(ArgsError::Conflict {
                flag: "netns",
                value: path.to_owned(),
                other: "new-netns",
            })
        }
        (Some(path), false) if share => {
            return Err(ArgsError::Conflict {
                flag: "netns",
                value: path.to_owned(),
                other: "share-host-netns",
            })
        }
        (None, true) if share => {
            return Err(ArgsError::Conflict {
                flag: "new-netns",
                value: String::new(),
                other: "share-host-netns",
            })
        }
        (Some(path), false) => {
            check_host_path("--netns", path)?;
            NetnsMode::Join(PathBuf::from(path))
        }
        (None, true) => NetnsMode::Create,
        (None, false) if share => NetnsMode::Host,
        (None, false) => NetnsMode::Private,
    };
    let mut taps: Vec<Tap> = Vec::new();
    for t in argv.multi("tap") {
        let tap = parse_tap(t)?;
        if !mode.named() {
            return Err(ArgsError::TapWithoutNetns { value: tap.name });
        }
        if taps.iter().any(|other| other.name == tap.name) {
            return Err(ArgsError::InvalidValue {
                flag: "tap",
                value: tap.name,
                reason: "given twice".into(),
            });
        }
        taps.push(tap);
    }
    let firewall_flag = argv.single("firewall").unwrap_or("auto");
    let firewall = match firewall_flag {
        "auto" => mode == NetnsMode::Create,
        "on" => {
            if !mode.named() {
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
        tap_filter: firewall_flag != "off",
        egress,
    })
}
