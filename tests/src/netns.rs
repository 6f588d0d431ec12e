//! Network namespaces and tap devices a test makes for itself (removed when dropped), two
//! namespaces joined by a veth pair, code run inside a namespace, and raw Ethernet frames on
//! a tap from the host side: an `AF_PACKET` socket opened inside the namespace. Test traffic
//! never leaves the namespaces the test made.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{require_program, require_root, unique_id};

/// `ETH_P_ALL` (0x0003) in network byte order, as `socket` and `sockaddr_ll` want it.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();
/// `AF_PACKET` and `AF_INET` as the address structs' family fields want them.
const AF_PACKET_FAMILY: u16 = 17;
const AF_INET_FAMILY: libc::sa_family_t = 2;

/// A network namespace (`ip netns add`), deleted when dropped with everything in it.
pub struct NetNs {
    name: String,
}

fn ip(args: &[&str]) {
    let ip = require_program("ip", "iproute2");
    let out = Command::new(&ip)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", ip.display()));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Creates a fresh namespace with its loopback up. Needs root.
    pub fn new(prefix: &str) -> NetNs {
        require_root();
        let name = unique_id(prefix);
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a tap device (`ip tuntap add ... mode tap`), IPv6 off (no router solicitations
    /// or other chatter), with `addr` (CIDR) if given, and brings it up.
    pub fn add_tap(&self, tap: &str, addr: Option<&str>) {
        ip(&["-n", &self.name, "tuntap", "add", "dev", tap, "mode", "tap"]);
        let mut sysctl = self.command("sh");
        sysctl.args([
            "-c",
            &format!("echo 1 > /proc/sys/net/ipv6/conf/{tap}/disable_ipv6"),
        ]);
        let out = sysctl.output().expect("run sh in the namespace");
        assert!(
            out.status.success(),
            "cannot disable IPv6 on {tap}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(a) = addr {
            ip(&["-n", &self.name, "addr", "add", a, "dev", tap]);
        }
        ip(&["-n", &self.name, "link", "set", tap, "up"]);
    }

    /// Runs `f` inside the namespace (see [`in_netns`]).
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(Some(&self.name), f)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(require_program("ip", "iproute2"));
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// An `AF_PACKET` socket bound to interface `ifname` of this namespace.
    pub fn packet_socket(&self, ifname: &str) -> PacketSocket {
        let ifname = ifname.to_string();
        // The socket stays in the namespace it was opened in.
        self.run_inside(move || -> PacketSocket {
            let cname = CString::new(ifname.clone()).expect("interface name");
            // SAFETY: if_nametoindex reads a NUL-terminated string we own.
            let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
            assert!(index != 0, "no interface {ifname} in the namespace");
            // SAFETY: plain socket creation; the result is checked.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    i32::from(ETH_P_ALL_BE),
                )
            };
            assert!(
                fd >= 0,
                "socket(AF_PACKET): {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd is a fresh descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = AF_PACKET_FAMILY;
            sll.sll_protocol = ETH_P_ALL_BE;
            sll.sll_ifindex = i32::try_from(index).expect("ifindex");
            // SAFETY: binds the socket to an address struct we own, with its size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    socklen::<libc::sockaddr_ll>(),
                )
            };
            assert_eq!(
                rc,
                0,
                "bind(AF_PACKET): {}",
                std::io::Error::last_os_error()
            );
            PacketSocket(fd)
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new(require_program("ip", "iproute2"))
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// A name for a tap device: `prefix`, then digits unique to this process and call, within
/// IFNAMSIZ (15 bytes).
pub fn tap_name(prefix: &str) -> String {
    let digits: String = unique_id("").chars().filter(char::is_ascii_digit).collect();
    let room = 15usize.saturating_sub(prefix.len());
    format!("{prefix}{}", &digits[digits.len().saturating_sub(room)..])
}

/// Runs `f` on a short-lived thread inside network namespace `ns` (`None`: the test's
/// own): `setns` changes the calling thread's namespace only. A socket opened there stays in
/// that namespace.
pub fn in_netns<T: Send + 'static>(ns: Option<&str>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.map(|n| format!("/run/netns/{n}"));
    std::thread::spawn(move || {
        if let Some(path) = path {
            let file =
                std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
            // SAFETY: setns on a namespace file we hold open; affects this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Two network namespaces joined by a veth pair, deleted when dropped: `a` for the jail
/// (`va`, 10.252.N.1/24), `b` the outside world (`vb`, 10.252.N.2 and .3). Only traffic
/// between them is ever sent.
pub struct NsPair {
    pub a: String,
    pub b: String,
    /// `10.252.N`.
    pub net: String,
}

impl NsPair {
    pub fn new(tag: &str) -> NsPair {
        require_root();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = (std::process::id() % 40) * 6 + NEXT.fetch_add(1, Ordering::Relaxed) % 6 + 1;
        let id = unique_id(tag);
        let pair = NsPair {
            a: format!("{id}-a"),
            b: format!("{id}-b"),
            net: format!("10.252.{n}"),
        };
        let (a, b, net) = (pair.a.as_str(), pair.b.as_str(), pair.net.as_str());
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        ip(&[
            "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b,
        ]);
        for (ns, dev, host) in [(a, "va", 1), (b, "vb", 2), (b, "vb", 3)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{net}.{host}/24"),
                "dev",
                dev,
            ]);
        }
        for (ns, dev) in [(a, "va"), (b, "vb"), (a, "lo"), (b, "lo")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    /// `/run/netns/<a>`, for the jailer's `--netns`.
    pub fn a_path(&self) -> String {
        format!("/run/netns/{}", self.a)
    }
}

impl Drop for NsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Raw Ethernet frames on one interface.
pub struct PacketSocket(OwnedFd);

impl PacketSocket {
    /// Sends one frame (destination MAC first) out of the interface.
    pub fn send(&self, frame: &[u8]) -> std::io::Result<usize> {
        // SAFETY: reads frame.len() bytes from frame.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }

    /// The first frame for which `want` is true, waiting at most `timeout`.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        mut want: impl FnMut(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: polls one pollfd we own.
            unsafe { libc::poll(&mut pfd, 1, ms) };
            // SAFETY: writes at most buf.len() bytes into buf.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if let Ok(n) = usize::try_from(n) {
                if let Some(frame) = buf.get(..n).filter(|f| want(f)) {
                    return Some(frame.to_vec());
                }
            }
        }
    }
}

impl NetNs {
    /// Sends ICMP echo requests to `addr` from inside the namespace, one a second, until one
    /// is answered or `timeout` passes; returns the answered request's round-trip time.
    /// (A raw ICMP socket: no `ping` binary needed.)
    pub fn ping(&self, addr: std::net::Ipv4Addr, timeout: Duration) -> Option<Duration> {
        self.run_inside(move || -> Option<Duration> {
            // SAFETY: plain socket creation; the result is checked.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_ICMP,
                )
            };
            assert!(fd >= 0, "socket(ICMP): {}", std::io::Error::last_os_error());
            // SAFETY: fd is a fresh descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_in is plain old data; all-zero is valid.
            let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            to.sin_family = AF_INET_FAMILY;
            to.sin_addr.s_addr = u32::from_ne_bytes(addr.octets());
            let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(0x4b4c);
            let deadline = Instant::now() + timeout;
            let mut buf = [0u8; 1500];
            for seq in 1u16.. {
                if Instant::now() >= deadline {
                    return None;
                }
                let mut req = [0u8; 16];
                req[0] = 8; // echo request
                req[4..6].copy_from_slice(&id.to_be_bytes());
                req[6..8].copy_from_slice(&seq.to_be_bytes());
                req[8..].copy_from_slice(b"kiln-png");
                let sum = checksum(&req);
                req[2..4].copy_from_slice(&sum.to_be_bytes());
                let sent = Instant::now();
                // SAFETY: sends req to an address struct we own, with its size.
                unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        req.as_ptr().cast(),
                        req.len(),
                        0,
                        (&to as *const libc::sockaddr_in).cast(),
                        socklen::<libc::sockaddr_in>(),
                    )
                };
                let wait_until = (sent + Duration::from_secs(1)).min(deadline);
                while Instant::now() < wait_until {
                    let left = wait_until.saturating_duration_since(Instant::now());
                    let mut pfd = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(1000);
                    // SAFETY: polls one pollfd we own.
                    if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                        continue;
                    }
                    // SAFETY: writes at most buf.len() bytes into buf.
                    let n = unsafe {
                        libc::recv(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            libc::MSG_DONTWAIT,
                        )
                    };
                    let Ok(n) = usize::try_from(n) else { continue };
                    let pkt = &buf[..n];
                    let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0xf) * 4;
                    let (Some(src), Some(icmp)) = (pkt.get(12..16), pkt.get(ihl..)) else {
                        continue;
                    };
                    let reply = icmp.len() >= 8
                        && icmp[0] == 0
                        && src == addr.octets()
                        && icmp[4..6] == id.to_be_bytes()
                        && icmp[6..8] == seq.to_be_bytes();
                    if reply {
                        return Some(sent.elapsed());
                    }
                }
            }
            None
        })
    }
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// The size of an address struct, as `bind`/`sendto` want it.
fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_ifnamsiz_and_differ() {
        let (a, b) = (tap_name("kiln-tap"), tap_name("kiln-tap"));
        assert!(a.starts_with("kiln-tap") && a.len() <= 15, "{a}");
        assert_ne!(a, b);
    }
}
