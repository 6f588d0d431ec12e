//! jail-probe: the jailer's tests exec this instead of the VMM. It reports what it sees from
//! inside the jail as `key=value` lines on stdout, then performs the actions named on its
//! command line, one `key=value` line each (an errno name on failure).
//!
//! Reported: argv, pid/ppid, uid/gid/groups, capability sets, no_new_privs, seccomp mode,
//! hostname, environment, open descriptors, `/` and `/dev` listings, rlimits, CPU affinity,
//! and `start_delay_us` (now minus the jailer's `--start-time-us`).
//!
//! Actions: `hold` (print `ready`, wait for stdin EOF), `sleep MS`, `threads N`, `fork N`,
//! `alloc MIB`, `open PATH`, `open-rw PATH`, `write-file PATH BYTES`, `open-fds N`,
//! `connect-tcp ADDR:PORT MS`, `send-udp ADDR:PORT`, `syscall fork|mount|ptrace|unshare|
//! socket-inet`, `recv-fd SOCKET NAME` (receive a descriptor over a unix socket, then openat
//! NAME through it), `kvm`, `tap NAME`, `exit CODE`. The jailer's own arguments (`--id` and
//! the `--*-time-us` ones) are ignored.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::ENODEV => "ENODEV",
        _ => return format!("E{e}"),
    };
    name.to_owned()
}

fn io_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => errno_name(n),
        None => format!("{:?}", e.kind()),
    }
}

fn say(key: &str, value: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{key}={value}");
    let _ = out.flush();
}

fn list(dir: &str) -> String {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names.join(",")
        }
        Err(e) => format!("error:{}", io_name(&e)),
    }
}

fn describe_node(path: &str) -> String {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            let kind = if m.file_type().is_char_device() {
                "c"
            } else if m.is_dir() {
                "d"
            } else if m.is_file() {
                "f"
            } else {
                "?"
            };
            let rdev = m.rdev();
            format!(
                "{kind}:{}:{}:{}:{}:{:o}",
                libc::major(rdev),
                libc::minor(rdev),
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            )
        }
        Err(e) => format!("error:{}", io_name(&e)),
    }
}

fn dev_listing() -> String {
    let mut out = Vec::new();
    let mut stack = vec!["/dev".to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            out.push(format!("{dir}=unreadable"));
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let path = format!("{dir}/{}", e.file_name().to_string_lossy());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(format!("{path}={}", describe_node(&path)));
        }
    }
    out.sort();
    out.join(";")
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capabilities() -> Option<(u64, u64, u64)> {
    let mut header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget reads the header and writes two CapData entries (version 3).
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if ret != 0 {
        return None;
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Some((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

fn cap_mask(option: libc::c_int, extra: libc::c_ulong) -> u64 {
    let mut mask = 0u64;
    for cap in 0..64u64 {
        // SAFETY: PR_CAPBSET_READ / PR_CAP_AMBIENT(IS_SET) only read.
        let r = unsafe {
            if extra == 0 {
                libc::prctl(option, cap, 0, 0, 0)
            } else {
                libc::prctl(option, extra, cap, 0, 0)
            }
        };
        if r < 0 {
            break;
        }
        if r == 1 {
            mask |= 1 << cap;
        }
    }
    mask
}

fn report(argv: &[String], start_delay: Option<u64>) {
    say("argv", argv.join(" "));
    if let Some(d) = start_delay {
        say("start_delay_us", d);
    }
    // SAFETY: getpid/getppid have no preconditions.
    say("pid", unsafe { libc::getpid() });
    // SAFETY: as above.
    say("ppid", unsafe { libc::getppid() });
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid/getresgid write three ids each.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    say("uid", format!("{r},{e},{s}"));
    // SAFETY: as above.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    say("gid", format!("{r},{e},{s}"));
    let mut groups = [0 as libc::gid_t; 64];
    // SAFETY: getgroups writes at most 64 entries.
    let n = unsafe { libc::getgroups(64, groups.as_mut_ptr()) };
    let groups: Vec<String> = groups
        .iter()
        .take(usize::try_from(n).unwrap_or(0))
        .map(|g| g.to_string())
        .collect();
    say("groups", groups.join(","));
    match capabilities() {
        Some((eff, prm, inh)) => {
            say("cap_eff", format!("{eff:x}"));
            say("cap_prm", format!("{prm:x}"));
            say("cap_inh", format!("{inh:x}"));
        }
        None => say("cap_eff", format!("error:{}", errno_name(errno()))),
    }
    say(
        "cap_bnd",
        format!("{:x}", cap_mask(libc::PR_CAPBSET_READ, 0)),
    );
    say(
        "cap_amb",
        format!(
            "{:x}",
            cap_mask(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong
            )
        ),
    );
    // SAFETY: these prctl queries only read.
    say("no_new_privs", unsafe {
        libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
    });
    // SAFETY: as above.
    say("seccomp", unsafe {
        libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0)
    });
    // SAFETY: uname fills a utsname.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::uname(&mut uts) };
    // SAFETY: nodename is NUL-terminated by the kernel.
    let host = unsafe { std::ffi::CStr::from_ptr(uts.nodename.as_ptr()) };
    say("hostname", host.to_string_lossy());
    let env: Vec<String> = std::env::vars_os()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    say("env_count", env.len());
    say("env", env.join(","));
    say("root", list("/"));
    say("dev", dev_listing());
    // The jail has no /proc: membership is checked from outside (/proc/PID/cgroup).
    say(
        "cgroup",
        std::fs::read_to_string("/proc/self/cgroup")
            .map(|c| c.lines().collect::<Vec<_>>().join(";"))
            .unwrap_or_else(|e| format!("error:{}", io_name(&e))),
    );
    say(
        "proc",
        if std::path::Path::new("/proc/self").exists() {
            "present"
        } else {
            "absent"
        },
    );
    for (name, res) in [
        ("nofile", libc::RLIMIT_NOFILE),
        ("fsize", libc::RLIMIT_FSIZE),
        ("memlock", libc::RLIMIT_MEMLOCK),
        ("nproc", libc::RLIMIT_NPROC),
        ("core", libc::RLIMIT_CORE),
    ] {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit.
        unsafe { libc::getrlimit(res, &mut lim) };
        let show = |v: u64| {
            if v == libc::RLIM_INFINITY {
                "unlimited".to_owned()
            } else {
                v.to_string()
            }
        };
        say(
            &format!("rlimit.{name}"),
            format!("{}/{}", show(lim.rlim_cur), show(lim.rlim_max)),
        );
    }
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let cpus: Vec<String> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the set.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .map(|c| c.to_string())
        .collect();
    say("cpus", cpus.join(","));
    say(
        "cwd",
        std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| format!("error:{}", io_name(&e))),
    );
}

fn open_fds() -> String {
    let mut fds = Vec::new();
    for fd in 0..4096 {
        // SAFETY: F_GETFD only queries a descriptor number.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            fds.push(fd.to_string());
        }
    }
    fds.join(",")
}

fn c(path: &str) -> CString {
    CString::new(path).unwrap_or_default()
}

fn open_result(path: &str, flags: libc::c_int) -> String {
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

fn threads(n: usize) {
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
fn fork_children(n: usize) {
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

fn alloc(mib: usize) {
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

fn write_file(path: &str, bytes: usize) {
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

fn open_many(n: usize) {
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

fn connect_tcp(addr: &str, ms: u64) {
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

fn send_udp(addr: &str) {
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

fn syscall(name: &str) {
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

fn recv_fd(socket: &str, name: &str) {
    let key = format!("recvfd.{name}");
    let stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return say(&key, format!("connect:{}", io_name(&e))),
    };
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(libc::c_int::BITS / 8) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; all pointers set below point into live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: recvmsg fills the buffers described by `msg`.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return say(&key, format!("recvmsg:{}", errno_name(errno())));
    }
    // SAFETY: `msg` was filled by recvmsg; the first header, if any, lies in `control`.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return say(&key, "no-descriptor");
    }
    // SAFETY: an SCM_RIGHTS header carries at least one descriptor.
    let fd: RawFd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
    // SAFETY: the descriptor was just received and is owned by nobody else.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
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
    let n = c(name);
    // SAFETY: openat relative to the received directory descriptor.
    let file = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if file < 0 {
        return say(&key, errno_name(errno()));
    }
    // SAFETY: `file` was just opened.
    let mut f = unsafe { std::fs::File::from_raw_fd(file) };
    let mut content = String::new();
    let _ = f.read_to_string(&mut content);
    say(&key, format!("ok:{}", content.trim()));
}

fn kvm() {
    let p = c("/dev/kvm");
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return say("kvm", errno_name(errno()));
    }
    // SAFETY: KVM_GET_API_VERSION (_IO(0xAE, 0)) takes no argument.
    let v = unsafe { libc::ioctl(fd, 0xAE00) };
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

fn tap(name: &str) {
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

fn main() {
    let start = now_us();
    let fds = open_fds();
    let argv: Vec<String> = std::env::args().collect();
    let mut start_time = None;
    let mut actions = Vec::new();
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--id" | "--start-time-cpu-us" | "--parent-cpu-time-us" => {
                it.next();
            }
            "--start-time-us" => start_time = it.next().and_then(|v| v.parse::<u64>().ok()),
            other => actions.push(other.to_owned()),
        }
    }
    say("fds", fds);
    report(&argv, start_time.map(|t| start.saturating_sub(t)));
    let mut it = actions.iter();
    let num = |v: Option<&String>| v.and_then(|s| s.parse::<usize>().ok()).unwrap_or(0);
    let text = |v: Option<&String>| v.cloned().unwrap_or_default();
    while let Some(action) = it.next() {
        match action.as_str() {
            "hold" => {
                say("ready", 1);
                let mut sink = Vec::new();
                let _ = std::io::stdin().read_to_end(&mut sink);
            }
            "sleep" => std::thread::sleep(Duration::from_millis(num(it.next()) as u64)),
            "threads" => threads(num(it.next())),
            "fork" => fork_children(num(it.next())),
            "alloc" => alloc(num(it.next())),
            "open" => {
                let p = text(it.next());
                say(&format!("open.{p}"), open_result(&p, libc::O_RDONLY));
            }
            "open-rw" => {
                let p = text(it.next());
                say(&format!("open-rw.{p}"), open_result(&p, libc::O_RDWR));
            }
            "write-file" => {
                let p = text(it.next());
                write_file(&p, num(it.next()));
            }
            "open-fds" => open_many(num(it.next())),
            "connect-tcp" => {
                let a = text(it.next());
                connect_tcp(&a, num(it.next()) as u64);
            }
            "send-udp" => send_udp(&text(it.next())),
            "syscall" => syscall(&text(it.next())),
            "recv-fd" => {
                let s = text(it.next());
                recv_fd(&s, &text(it.next()));
            }
            "kvm" => kvm(),
            "tap" => tap(&text(it.next())),
            "exit" => std::process::exit(i32::try_from(num(it.next())).unwrap_or(1)),
            other => say("unknown-action", other),
        }
    }
    say("done", 1);
}
