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
//! NAME through it), `kvm`, `tap NAME`, `nest DIR N` (N directories nested in DIR),
//! `abstract-listen NAME` (an abstract unix socket, kept listening), `mmap-huge MIB` (huge
//! pages), `tty-ioctls` (TCSETS, TIOCSWINSZ, TIOCSETD, TIOCSTI on descriptors 0 to 2),
//! `exit CODE`. The jailer's own arguments (`--id` and the `--*-time-us` ones) are ignored.

mod actions;
mod report;

use std::ffi::CString;
use std::io::{Read, Write};
use std::time::Duration;

use actions::{
    abstract_listen, alloc, connect_tcp, fork_children, kvm, mmap_huge, nest, open_many,
    open_result, orphans, recv_fd, send_udp, syscall, tap, threads, tty_ioctls, write_file,
};
use report::{open_fds, report};

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

/// One `key=value` line on stdout, flushed at once.
fn say(key: &str, value: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{key}={value}");
    let _ = out.flush();
}

/// A C string (paths and names here never hold NUL).
fn c(path: &str) -> CString {
    CString::new(path).unwrap_or_default()
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
            "orphans" => orphans(num(it.next())),
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
            "nest" => {
                let d = text(it.next());
                nest(&d, num(it.next()));
            }
            "abstract-listen" => abstract_listen(&text(it.next())),
            "mmap-huge" => mmap_huge(num(it.next())),
            "tty-ioctls" => tty_ioctls(),
            "tap" => tap(&text(it.next())),
            "exit" => std::process::exit(i32::try_from(num(it.next())).unwrap_or(1)),
            other => say("unknown-action", other),
        }
    }
    say("done", 1);
}
