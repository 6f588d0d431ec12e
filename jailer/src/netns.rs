//! Step 4 (host side): the jail's network namespace, its taps and its egress firewall.
//!
//! * `--netns PATH` joins an existing namespace (Firecracker's meaning).
//! * `--new-netns` creates one and pins it at `/run/netns/<id>` (where `ip netns` finds it):
//!   the jailer unshares a namespace, bind-mounts it there and returns to its own.
//! * `--tap NAME` creates a persistent tap owned by the jail's uid:gid in that namespace, so
//!   the VMM can attach to it without any capability.
//! * The firewall is an nftables table `kiln-<id>` loaded by Debian's `nft` (ruleset on
//!   stdin) inside the namespace: drop everything but established/related replies and the
//!   tenant's allow-list, on the output, forward (guest traffic from the taps) and input
//!   hooks. `nft` rather than raw netlink: nftables' netlink protocol is large and easy to get
//!   subtly wrong, and the jailer runs `nft` only before dropping privileges, with a ruleset
//!   it generated from validated values.
//!
//! The jail process joins the namespace later (`namespaces.rs`) with the descriptor returned
//! here.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::args::{Config, EgressAllow, NetnsMode, Proto};
use crate::state::{Journal, NetnsRecord, StateError};
use crate::sys::{cstr, cstring, cvt};

pub const NETNS_RUN_DIR: &str = "/run/netns";
const NFT_PATHS: &[&str] = &["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"];

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("--netns {path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("--netns {path}: not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("opening the jailer's own network namespace: {0}")]
    OwnNamespace(#[source] io::Error),
    #[error("setns into the network namespace {what}: {source}")]
    Setns { what: String, source: io::Error },
    #[error("--new-netns: creating {path}: {source}")]
    CreateFile { path: PathBuf, source: io::Error },
    #[error("--new-netns: unshare(CLONE_NEWNET): {0}")]
    Unshare(#[source] io::Error),
    #[error("--new-netns: bind-mounting the new namespace on {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("--tap {name}: {op}: {source}")]
    Tap {
        name: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("bringing up interface {name}: {source}")]
    LinkUp { name: String, source: io::Error },
    #[error("--firewall: nft not found in {NFT_PATHS:?}; install the Debian package nftables")]
    NftMissing,
    #[error("--firewall: running {nft}: {source}")]
    NftSpawn { nft: String, source: io::Error },
    #[error("--firewall: nft {action} table {table} failed ({status}): {stderr}")]
    NftFailed {
        action: &'static str,
        table: String,
        status: String,
        stderr: String,
    },
    #[error("removing the network namespace {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Name of the jail's nftables table.
pub fn table_name(id: &str) -> String {
    format!("kiln-{id}")
}

/// Prepares the jail's network namespace; returns a descriptor to join it with, or `None`
/// when the jail stays in the jailer's namespace.
pub fn prepare(config: &Config, journal: &mut Journal) -> Result<Option<OwnedFd>, NetnsError> {
    let net = &config.network;
    let ns = match &net.mode {
        NetnsMode::Inherit => return Ok(None),
        NetnsMode::Join(path) => {
            journal.record(|s| {
                s.netns = Some(NetnsRecord {
                    path: path.clone(),
                    ..Default::default()
                })
            })?;
            open_netns(path)?
        }
        NetnsMode::Create => create(&config.id, journal)?,
    };
    within(&ns, "of the jail", || {
        if matches!(net.mode, NetnsMode::Create) {
            link_up("lo")?;
        }
        for tap in &net.taps {
            // Journaled once it exists (and before it is made persistent): an interface
            // that was already there is never recorded, so never removed.
            create_tap(tap, config.uid, config.gid, || {
                journal.record(|s| {
                    if let Some(n) = s.netns.as_mut() {
                        n.taps.push(tap.clone());
                    }
                })?;
                Ok(())
            })?;
        }
        if net.firewall {
            let table = table_name(&config.id);
            journal.record(|s| {
                if let Some(n) = s.netns.as_mut() {
                    n.table = Some(table.clone());
                }
            })?;
            nft("load", &table, &ruleset(&table, &net.egress))?;
        }
        Ok(())
    })?;
    Ok(Some(ns))
}

fn open_netns(path: &Path) -> Result<OwnedFd, NetnsError> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only reports the namespace type of the
    // descriptor, which `file` keeps open.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(NetnsError::NotNetns {
            path: path.to_path_buf(),
        });
    }
    Ok(file.into())
}

fn own_netns() -> Result<OwnedFd, NetnsError> {
    File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(NetnsError::OwnNamespace)
}

/// Joins a network namespace (used by the jail process too).
pub fn join(ns: &OwnedFd, what: &str) -> Result<(), NetnsError> {
    // SAFETY: setns takes a namespace descriptor kept open by `ns` and a namespace type.
    cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }).map_err(|source| {
        NetnsError::Setns {
            what: what.to_owned(),
            source,
        }
    })?;
    Ok(())
}

/// Runs `f` inside the namespace `ns`, then returns to the jailer's own namespace (also on
/// error).
fn within<T>(
    ns: &OwnedFd,
    what: &str,
    f: impl FnOnce() -> Result<T, NetnsError>,
) -> Result<T, NetnsError> {
    let own = own_netns()?;
    join(ns, what)?;
    let result = f();
    join(&own, "of the jailer")?;
    result
}

/// Creates `/run/netns/<id>` holding a new network namespace.
fn create(id: &str, journal: &mut Journal) -> Result<OwnedFd, NetnsError> {
    let dir = Path::new(NETNS_RUN_DIR);
    let path = dir.join(id);
    let err = |source| NetnsError::CreateFile {
        path: path.clone(),
        source,
    };
    match std::fs::create_dir(dir) {
        // As `ip netns` makes it (the umask is 077).
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)
        .map_err(err)?;
    let recorded = journal.record(|s| {
        s.netns = Some(NetnsRecord {
            path: path.clone(),
            created: true,
            mounted: true,
            ..Default::default()
        })
    });
    if let Err(e) = recorded {
        // Not journaled: nothing would remove it later.
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    let own = own_netns()?;
    // SAFETY: unshare with CLONE_NEWNET only moves this (single-threaded) process to a new
    // network namespace.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) }).map_err(NetnsError::Unshare)?;
    let mounted = bind_namespace(&path);
    // Back to the jailer's namespace whatever happened: the jail joins it by descriptor.
    join(&own, "of the jailer")?;
    mounted?;
    open_netns(&path)
}

fn bind_namespace(path: &Path) -> Result<(), NetnsError> {
    let err = |source| NetnsError::Mount {
        path: path.to_path_buf(),
        source,
    };
    let src = cstr("/proc/thread-self/ns/net").map_err(err)?;
    let dst = cstring(path).map_err(err)?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call; a bind mount
    // takes no filesystem type or data.
    cvt(unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
    .map_err(err)?;
    Ok(())
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name and a union of integers and pointers); all-zero is
    // a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn open_tun(name: &str) -> Result<File, NetnsError> {
    File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|source| NetnsError::Tap {
            name: name.to_owned(),
            op: "open /dev/net/tun",
            source,
        })
}

fn tun_ioctl(
    tun: &File,
    name: &str,
    op: &'static str,
    request: libc::Ioctl,
    arg: libc::c_ulong,
) -> Result<(), NetnsError> {
    // SAFETY: the TUNSET* requests used here take an integer argument by value.
    cvt(unsafe { libc::ioctl(tun.as_raw_fd(), request, arg) }).map_err(|source| {
        NetnsError::Tap {
            name: name.to_owned(),
            op,
            source,
        }
    })?;
    Ok(())
}

const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// `ifr_flags` is a C `short` holding a bit pattern (IFF_TUN_EXCL is bit 15): keeping the
/// low 16 bits is exactly what C does with these `int` constants.
#[allow(clippy::cast_possible_truncation)]
fn ifr_flags(flags: libc::c_int) -> libc::c_short {
    flags as libc::c_short
}

/// A persistent tap owned by uid:gid (the VMM attaches with TUNSETIFF, no capability
/// needed), brought up. `record` journals it between creation and persistence: if that
/// fails, closing the descriptor removes the still non-persistent interface.
fn create_tap(
    name: &str,
    uid: u32,
    gid: u32,
    record: impl FnOnce() -> Result<(), NetnsError>,
) -> Result<(), NetnsError> {
    let tun = open_tun(name)?;
    let mut req = ifreq(name);
    // IFF_TUN_EXCL: fail rather than take over an interface that already exists.
    req.ifr_ifru.ifru_flags = ifr_flags(TAP_FLAGS | libc::IFF_TUN_EXCL);
    // SAFETY: TUNSETIFF reads and writes the ifreq, which lives for the call.
    cvt(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) }).map_err(|source| {
        NetnsError::Tap {
            name: name.to_owned(),
            op: "create (TUNSETIFF)",
            source,
        }
    })?;
    tun_ioctl(
        &tun,
        name,
        "set owner",
        libc::TUNSETOWNER,
        libc::c_ulong::from(uid),
    )?;
    tun_ioctl(
        &tun,
        name,
        "set group",
        libc::TUNSETGROUP,
        libc::c_ulong::from(gid),
    )?;
    record()?;
    tun_ioctl(&tun, name, "make persistent", libc::TUNSETPERSIST, 1)?;
    drop(tun);
    link_up(name)
}

fn delete_tap(name: &str) -> Result<(), NetnsError> {
    let tun = open_tun(name)?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = ifr_flags(TAP_FLAGS);
    // SAFETY: as in create_tap.
    cvt(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) }).map_err(|source| {
        NetnsError::Tap {
            name: name.to_owned(),
            op: "attach for removal (TUNSETIFF)",
            source,
        }
    })?;
    // Not persistent any more: the interface goes away when `tun` is closed.
    tun_ioctl(&tun, name, "clear persistence", libc::TUNSETPERSIST, 0)
}

fn link_up(name: &str) -> Result<(), NetnsError> {
    let err = |source| NetnsError::LinkUp {
        name: name.to_owned(),
        source,
    };
    // SAFETY: socket takes integer arguments; the descriptor is owned right away.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
        .map_err(err)?;
    // SAFETY: `fd` was just returned by socket and is owned by nothing else.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq, which lives for the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) }).map_err(err)?;
    // SAFETY: SIOCGIFFLAGS initialised the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | ifr_flags(libc::IFF_UP);
    // SAFETY: SIOCSIFFLAGS reads the ifreq, which lives for the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map_err(err)?;
    Ok(())
}

/// The nftables ruleset: a fresh table (any previous one of that name is replaced).
pub fn ruleset(table: &str, allow: &[EgressAllow]) -> String {
    let mut rules = String::new();
    for a in allow {
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
        rules.push_str(&format!("    {rule} accept\n"));
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

fn nft(action: &'static str, table: &str, input: &str) -> Result<(), NetnsError> {
    let nft = NFT_PATHS
        .iter()
        .find(|p| Path::new(p).is_file())
        .ok_or(NetnsError::NftMissing)?;
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetnsError::NftSpawn {
            nft: (*nft).to_owned(),
            source,
        })?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(input.as_bytes()));
    let output = child
        .wait_with_output()
        .map_err(|source| NetnsError::NftSpawn {
            nft: (*nft).to_owned(),
            source,
        })?;
    if !output.status.success() || matches!(written, Some(Err(_))) {
        return Err(NetnsError::NftFailed {
            action,
            table: table.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Removes what the jailer made: its taps and table (in a joined namespace), or the whole
/// namespace it created. What is already gone is skipped.
pub fn remove(record: &NetnsRecord) -> Result<(), NetnsError> {
    let ns = match open_netns(&record.path) {
        Ok(ns) => Some(ns),
        Err(NetnsError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
        // The file exists but holds no namespace (crash before the bind mount).
        Err(NetnsError::NotNetns { .. }) => None,
        Err(e) => return Err(e),
    };
    if let Some(ns) = &ns {
        within(ns, "of the jail", || {
            for tap in &record.taps {
                delete_tap(tap)?;
            }
            if let (Some(table), false) = (&record.table, record.created) {
                // `table` first so that deleting a table that is not there is no error.
                nft(
                    "delete",
                    table,
                    &format!("table inet {table}\ndelete table inet {table}\n"),
                )?;
            }
            Ok(())
        })?;
    }
    if record.created {
        let err = |source| NetnsError::Remove {
            path: record.path.clone(),
            source,
        };
        let path = cstring(&record.path).map_err(err)?;
        // SAFETY: a NUL-terminated path that outlives the call.
        match cvt(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) }) {
            Ok(_) => {}
            // Not mounted (any more), or gone.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {}
            Err(e) => return Err(err(e)),
        }
        match std::fs::remove_file(&record.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
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
