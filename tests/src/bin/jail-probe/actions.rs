//! The actions named on the probe's command line, each reported as `key=value` lines (an
//! errno name when the jail refuses it).

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use kiln_tests::errno::{errno, errno_name, io_name};
use kiln_tests::fdpass;

use crate::{c, say};

pub fn open_result(path: &str, flags: libc::c_int) -> String {
    let p = c(path);
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return errno_name(errno());
    }
    // SAFETY: fd was just opened.
    unsafe { libc::close(fd) };
    "ok".into()
}

pub fn threads(n: usize) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let mut handles = Vec::new();
    let mut error = String::from("none");
    for _ in 0..n {
        let rx = rx.clone();
        match std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = rx.lock().map(|r| r.recv());
            }) {
            Ok(h) => handles.push(h),
            Err(e) => {
                error = io_name(&e);
                break;
            }
        }
    }
    say("threads.created", handles.len());
    say("threads.error", error);
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
}

/// Forks `n` children that exit after half a second (needs a policy that allows fork).
pub fn fork_children(n: usize) {
    let mut created = 0;
    let mut error = String::from("none");
    for _ in 0..n {
        // SAFETY: the child only sleeps and exits.
        match unsafe { libc::fork() } {
            0 => {
                std::thread::sleep(Duration::from_millis(500));
                // SAFETY: _exit has no preconditions.
                unsafe { libc::_exit(0) };
            }
            -1 => {
                error = errno_name(errno());
                break;
            }
            _ => created += 1,
        }
    }
    say("fork.created", created);
    say("fork.error", error);
    for _ in 0..created {
        // SAFETY: waits for any child; the status is not needed.
        unsafe { libc::wait(std::ptr::null_mut()) };
    }
}

/// Forks `n` children that sleep for a minute and leaves them behind (the probe goes on, and
/// ends without waiting for them): what the jail's keeper must kill when the jail ends.
pub fn orphans(n: usize) {
    let mut created = 0;
    for _ in 0..n {
        // SAFETY: the child only sleeps and exits.
        match unsafe { libc::fork() } {
            0 => {
                std::thread::sleep(Duration::from_secs(60));
                // SAFETY: _exit has no preconditions.
                unsafe { libc::_exit(0) };
            }
            -1 => break,
            _ => created += 1,
        }
    }
    say("orphans.created", created);
}

pub fn alloc(mib: usize) {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        let mut b = vec![0u8; 1 << 20];
        for page in b.chunks_mut(4096) {
            page[0] = 1;
        }
        blocks.push(b);
        if i % 16 == 0 {
            say("alloc.progress_mib", i + 1);
        }
    }
    say("alloc", format!("ok:{}", blocks.len()));
}

pub fn write_file(path: &str, bytes: usize) {
    // SAFETY: ignoring SIGXFSZ turns the signal into EFBIG.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let mut f = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return say("write", format!("open:{}", io_name(&e))),
    };
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0;
    while written < bytes {
        let len = chunk.len().min(bytes - written);
        match f.write(&chunk[..len]) {
            Ok(n) => written += n,
            Err(e) => return say("write", format!("{}:{written}", io_name(&e))),
        }
    }
    say("write", format!("ok:{written}"));
}

pub fn open_many(n: usize) {
    let mut files = Vec::new();
    let mut error = "none".to_owned();
    for _ in 0..n {
        match std::fs::File::open("/dev/urandom") {
            Ok(f) => files.push(f),
            Err(e) => {
                error = io_name(&e);
                break;
            }
        }
    }
    say("open_fds.count", files.len());
    say("open_fds.error", error);
}

pub fn connect_tcp(addr: &str, ms: u64) {
    let key = format!("connect.{addr}");
    let Ok(sa) = addr.parse::<SocketAddr>() else {
        return say(&key, "bad-address");
    };
    match std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(ms)) {
        Ok(_) => say(&key, "ok"),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => say(&key, "ETIMEDOUT"),
        Err(e) => say(&key, io_name(&e)),
    }
}

pub fn send_udp(addr: &str) {
    let key = format!("udp.{addr}");
    let sock = match UdpSocket::bind("0.0.0.0:0") {
        Ok(s) => s,
        Err(e) => return say(&key, format!("socket:{}", io_name(&e))),
    };
    match sock.send_to(b"kiln-probe", addr) {
        Ok(_) => say(&key, "ok"),
        Err(e) => say(&key, io_name(&e)),
    }
}

pub fn syscall(name: &str) {
    say(&format!("syscall.{name}"), "attempting");
    // SAFETY: each call is made with harmless arguments; the point is whether seccomp lets
    // it through.
    let ret = unsafe {
        match name {
            "fork" => {
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                pid as libc::c_long
            }
            "mount" => libc::syscall(
                libc::SYS_mount,
                c"none".as_ptr(),
                c"/run".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                0,
            ),
            "ptrace" => libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0),
            "unshare" => libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER),
            "socket-inet" => libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0),
            _ => return say(&format!("syscall.{name}"), "unknown"),
        }
    };
    let result = if ret < 0 {
        errno_name(errno())
    } else {
        "ok".into()
    };
    say(&format!("syscall.{name}"), result);
}

/// Receives a descriptor of a host directory over the unix socket `socket`, lists what it
/// reaches and opens `name` through it.
pub fn recv_fd(socket: &str, name: &str) {
    let key = format!("recvfd.{name}");
    let stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return say(&key, format!("connect:{}", io_name(&e))),
    };
    let dir = match fdpass::recv_fd(stream.as_raw_fd()) {
        Ok(Some(dir)) => dir,
        Ok(None) => return say(&key, "no-descriptor"),
        Err(e) => return say(&key, format!("recvmsg:{}", io_name(&e))),
    };
    say("recvfd.received", "ok");
    // Listing needs no new open: it shows what the descriptor reaches.
    // SAFETY: dup of a descriptor we own; fdopendir takes ownership of the copy.
    let names = unsafe {
        let copy = libc::dup(dir.as_raw_fd());
        let d = libc::fdopendir(copy);
        let mut names = Vec::new();
        if !d.is_null() {
            loop {
                let e = libc::readdir(d);
                if e.is_null() {
                    break;
                }
                let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned();
                if name != "." && name != ".." {
                    names.push(name);
                }
            }
            libc::closedir(d);
        }
        names
    };
    say("recvfd.list", names.join(","));
    let mut f = match fdpass::open_in(&dir, name) {
        Ok(f) => f,
        Err(e) => return say(&key, io_name(&e)),
    };
    let mut content = String::new();
    let _ = f.read_to_string(&mut content);
    say(&key, format!("ok:{}", content.trim()));
}

pub fn kvm() {
    let p = c("/dev/kvm");
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return say("kvm", errno_name(errno()));
    }
    // SAFETY: KVM_GET_API_VERSION (_IO(0xAE, 0)) takes no argument, and KVM refuses one
    // that is not 0 (the C library's variadic ioctl passes whatever is in the register).
    let v = unsafe { libc::ioctl(fd, 0xAE00, 0) };
    // SAFETY: fd was just opened.
    unsafe { libc::close(fd) };
    say(
        "kvm",
        if v < 0 {
            errno_name(errno())
        } else {
            format!("api{v}")
        },
    );
}

pub fn tap(name: &str) {
    let key = format!("tap.{name}");
    let p = c("/dev/net/tun");
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return say(&key, format!("open:{}", errno_name(errno())));
    }
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        libc::c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR).unwrap_or(0);
    // SAFETY: TUNSETIFF reads/writes the ifreq.
    let r = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) };
    let result = if r < 0 {
        errno_name(errno())
    } else {
        "ok".into()
    };
    // SAFETY: fd was just opened.
    unsafe { libc::close(fd) };
    say(&key, result);
}

/// Nests `n` directories named `d` in `dir`, one descriptor at a time: `nest=ok:N`, or the
/// errno name and the depth reached.
pub fn nest(dir: &str, n: usize) {
    let top = c(dir);
    // SAFETY: a NUL-terminated path; the result is checked.
    let mut cur = unsafe {
        libc::open(
            top.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if cur < 0 {
        return say("nest", format!("open:{}", errno_name(errno())));
    }
    for depth in 0..n {
        // SAFETY: mkdirat and openat relative to a descriptor we own, a NUL-terminated name.
        let next = unsafe {
            if libc::mkdirat(cur, c"d".as_ptr(), 0o700) != 0 {
                -1
            } else {
                libc::openat(
                    cur,
                    c"d".as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            }
        };
        if next < 0 {
            let e = errno_name(errno());
            // SAFETY: closes the descriptor we own.
            unsafe { libc::close(cur) };
            return say("nest", format!("{e}:{depth}"));
        }
        // SAFETY: closes the descriptor we own; `next` replaces it.
        unsafe { libc::close(cur) };
        cur = next;
    }
    // SAFETY: closes the descriptor we own.
    unsafe { libc::close(cur) };
    say("nest", format!("ok:{n}"));
}

/// Binds and listens on the abstract unix socket `@name` in the jail's network namespace and
/// keeps it (the descriptor stays open until the probe exits).
pub fn abstract_listen(name: &str) {
    let key = format!("abstract.{name}");
    use std::os::linux::net::SocketAddrExt;
    let addr = match std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()) {
        Ok(a) => a,
        Err(e) => return say(&key, io_name(&e)),
    };
    match std::os::unix::net::UnixListener::bind_addr(&addr) {
        Ok(listener) => {
            std::mem::forget(listener);
            say(&key, "listening");
        }
        Err(e) => say(&key, io_name(&e)),
    }
}

/// Maps `mib` MiB of huge pages (MAP_HUGETLB) and touches each page: `huge=ok:MIB`, or the
/// errno name.
pub fn mmap_huge(mib: usize) {
    let len = mib << 20;
    // SAFETY: a fresh anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return say("huge", errno_name(errno()));
    }
    for off in (0..len).step_by(2 << 20) {
        // SAFETY: inside the mapping of `len` bytes.
        unsafe { p.cast::<u8>().add(off).write_volatile(1) };
    }
    say("huge", format!("ok:{mib}"));
}

/// The terminal ioctls a jail must not make, on descriptors 0, 1 and 2: `tty.NAME.FD=` ok or
/// the errno name.
pub fn tty_ioctls() {
    // SAFETY: termios is plain data; all-zero is a valid (raw, no echo) mode.
    let mode: libc::termios = unsafe { std::mem::zeroed() };
    let size = libc::winsize {
        ws_row: 3,
        ws_col: 7,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let ldisc: libc::c_int = 13;
    let byte = b'x';
    for fd in 0..=2 {
        // SAFETY: each ioctl reads the argument given, which outlives the call.
        let results = unsafe {
            [
                ("tcsets", libc::ioctl(fd, libc::TCSETS, &mode)),
                ("tiocswinsz", libc::ioctl(fd, libc::TIOCSWINSZ, &size)),
                ("tiocsetd", libc::ioctl(fd, libc::TIOCSETD, &ldisc)),
                ("tiocsti", libc::ioctl(fd, libc::TIOCSTI, &byte)),
            ]
        };
        for (name, ret) in results {
            let result = if ret < 0 {
                errno_name(errno())
            } else {
                "ok".into()
            };
            say(&format!("tty.{name}.{fd}"), result);
        }
    }
}
