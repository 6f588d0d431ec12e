//! The network: TCP and UDP to addresses the test set up outside the jail (`--tcp`,
//! `--udp`: a listener in a namespace joined to the jail's by a veth pair), listening on a
//! TCP port, raw packets, changing addresses over netlink, an abstract unix socket the test
//! listens on outside the jail, and another tenant's API socket and address.

use std::net::SocketAddrV4;

use crate::sys::{check, errno_name, last_error, verdict, Fd};
use crate::{Attempt, Ctx, Outcome};

/// `ETH_P_ALL` in network byte order.
const ETH_P_ALL_BE: libc::c_int = 0x0300;
const RTM_NEWADDR: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

pub const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "net.tcp-host",
        what: "TCP connection to a listener outside the jail (the test's, across a veth pair)",
        run: |ctx| tcp_connect(ctx.tcp.as_deref()),
    },
    Attempt {
        name: "net.udp-host",
        what: "UDP datagram to a receiver outside the jail",
        run: udp_send,
    },
    Attempt {
        name: "net.tcp-listen",
        what: "listen on a TCP port (a service reachable from outside)",
        run: |_| tcp_listen(),
    },
    Attempt {
        name: "net.packet-socket",
        what: "raw packet socket (sniff or forge frames)",
        run: |_| {
            // SAFETY: plain integers.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_socket,
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    ETH_P_ALL_BE,
                )
            };
            verdict(ret, true, "opened a raw packet socket")
        },
    },
    Attempt {
        name: "net.netlink-addr",
        what: "add an IP address to an interface (rtnetlink RTM_NEWADDR)",
        run: |_| netlink_add_addr(),
    },
    Attempt {
        name: "net.abstract-unix",
        what: "connect to an abstract unix socket the test listens on outside the jail",
        run: abstract_unix,
    },
    Attempt {
        name: "net.other-tenant-socket",
        what: "connect to another tenant's API socket by its host path (and through ..)",
        run: other_socket,
    },
    Attempt {
        name: "net.other-tenant-tcp",
        what: "TCP connection to another tenant's address",
        run: |ctx| tcp_connect(ctx.other_addr.as_deref()),
    },
];

/// `socket(domain, kind | SOCK_CLOEXEC, protocol)` as a raw syscall: the descriptor, or the
/// errno name.
fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> Result<Fd, String> {
    // SAFETY: plain integers.
    Fd::from_ret(unsafe {
        libc::syscall(
            libc::SYS_socket,
            domain,
            kind | libc::SOCK_CLOEXEC,
            protocol,
        )
    })
}

fn sockaddr_in(addr: &SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2);
    sa.sin_port = addr.port().to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes(addr.ip().octets());
    sa
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(0)
}

fn tcp_connect(target: Option<&str>) -> Outcome {
    let Some(addr) = target.and_then(|t| t.parse::<SocketAddrV4>().ok()) else {
        return Outcome::Error("no target address".into());
    };
    let sock = match socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) {
        Ok(s) => s,
        Err(e) => return Outcome::Blocked(format!("socket: {e}")),
    };
    let sa = sockaddr_in(&addr);
    // SAFETY: an address struct of the size given.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_connect,
            sock.0,
            &sa as *const libc::sockaddr_in,
            socklen::<libc::sockaddr_in>(),
        )
    };
    if ret == 0 {
        return Outcome::Escaped(format!("connected to {addr}"));
    }
    let e = last_error();
    if e != "EINPROGRESS" {
        return Outcome::Blocked(e);
    }
    let mut pfd = libc::pollfd {
        fd: sock.0,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: polls one pollfd we own, for at most a second.
    let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
    if n == 0 {
        return Outcome::Blocked("ETIMEDOUT".into());
    }
    let mut err: libc::c_int = 0;
    let mut len = socklen::<libc::c_int>();
    // SAFETY: SO_ERROR writes one int.
    unsafe {
        libc::getsockopt(
            sock.0,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if err == 0 {
        Outcome::Escaped(format!("connected to {addr}"))
    } else {
        Outcome::Blocked(errno_name(err))
    }
}

fn udp_send(ctx: &Ctx) -> Outcome {
    let Some(addr) = ctx
        .udp
        .as_deref()
        .and_then(|t| t.parse::<SocketAddrV4>().ok())
    else {
        return Outcome::Error("no --udp".into());
    };
    let sock = match socket(libc::AF_INET, libc::SOCK_DGRAM, 0) {
        Ok(s) => s,
        Err(e) => return Outcome::Blocked(format!("socket: {e}")),
    };
    let sa = sockaddr_in(&addr);
    let msg = b"kiln-escape-probe";
    // SAFETY: a buffer and an address struct of the sizes given.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            sock.0,
            msg.as_ptr(),
            msg.len(),
            0,
            &sa as *const libc::sockaddr_in,
            socklen::<libc::sockaddr_in>(),
        )
    };
    verdict(ret, false, &format!("sent a datagram to {addr}"))
}

fn tcp_listen() -> Outcome {
    let sock = match socket(libc::AF_INET, libc::SOCK_STREAM, 0) {
        Ok(s) => s,
        Err(e) => return Outcome::Blocked(format!("socket: {e}")),
    };
    let sa = sockaddr_in(&SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 8080));
    // SAFETY: an address struct of the size given.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bind,
            sock.0,
            &sa as *const libc::sockaddr_in,
            socklen::<libc::sockaddr_in>(),
        )
    };
    if let Err(e) = check(ret) {
        return Outcome::Blocked(e);
    }
    // SAFETY: plain integers.
    verdict(
        unsafe { libc::syscall(libc::SYS_listen, sock.0, 1) },
        false,
        "listening on TCP port 8080",
    )
}

fn netlink_add_addr() -> Outcome {
    let sock = match socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE) {
        Ok(s) => s,
        Err(e) => return Outcome::Blocked(format!("socket: {e}")),
    };
    let mut msg: Vec<u8> = Vec::new();
    msg.extend_from_slice(&40u32.to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWADDR.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // ifaddrmsg: AF_INET, /32, flags 0, scope host, interface 1 (lo).
    msg.extend_from_slice(&[2, 32, 0, 254]);
    msg.extend_from_slice(&1u32.to_ne_bytes());
    for kind in [IFA_LOCAL, IFA_ADDRESS] {
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&[10, 99, 99, 1]);
    }
    // SAFETY: sockaddr_nl is plain data; all-zero (the kernel, no groups) is what we want.
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::sa_family_t::try_from(libc::AF_NETLINK).unwrap_or(16);
    // SAFETY: a buffer and an address struct of the sizes given.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            sock.0,
            msg.as_ptr(),
            msg.len(),
            0,
            &to as *const libc::sockaddr_nl,
            socklen::<libc::sockaddr_nl>(),
        )
    };
    if let Err(e) = check(ret) {
        return Outcome::Blocked(format!("sendto: {e}"));
    }
    let mut buf = [0u8; 256];
    // SAFETY: writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::recv(
            sock.0,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let Ok(n) = usize::try_from(n) else {
        return Outcome::Error(format!("recv: {}", last_error()));
    };
    let reply = buf.get(..n).unwrap_or_default();
    let kind = reply.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let error = reply
        .get(16..20)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (kind, error) {
        (Some(NLMSG_ERROR), Some(0)) => Outcome::Escaped("added 10.99.99.1 to lo".into()),
        (Some(NLMSG_ERROR), Some(e)) => Outcome::Blocked(errno_name(-e)),
        _ => Outcome::Error("no netlink answer".into()),
    }
}

fn unix_connect(addr: &[u8]) -> Result<(), String> {
    let sock = socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)?;
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap_or(1);
    if addr.len() >= sa.sun_path.len() {
        return Err("ENAMETOOLONG".into());
    }
    for (d, s) in sa.sun_path.iter_mut().zip(addr) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sa_family_t>() + addr.len())
        .unwrap_or(0);
    // SAFETY: an address struct of at least `len` bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_connect,
            sock.0,
            &sa as *const libc::sockaddr_un,
            len,
        )
    };
    check(ret).map(|_| ())
}

fn abstract_unix(ctx: &Ctx) -> Outcome {
    let Some(name) = ctx.abstract_name.as_deref() else {
        return Outcome::Error("no --abstract".into());
    };
    let mut addr = vec![0u8];
    addr.extend_from_slice(name.as_bytes());
    match unix_connect(&addr) {
        Ok(()) => Outcome::Escaped(format!("connected to @{name}")),
        Err(e) => Outcome::Blocked(e),
    }
}

fn other_socket(ctx: &Ctx) -> Outcome {
    let Some(path) = ctx.other_socket.as_deref() else {
        return Outcome::Error("no --other-socket".into());
    };
    let mut errors = Vec::new();
    for p in [path.to_owned(), format!("/../../../../../..{path}")] {
        match unix_connect(p.as_bytes()) {
            Ok(()) => return Outcome::Escaped(format!("connected to {p}")),
            Err(e) => errors.push(e),
        }
    }
    errors.dedup();
    Outcome::Blocked(errors.join(","))
}
