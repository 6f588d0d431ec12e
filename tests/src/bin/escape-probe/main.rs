//! escape-probe: what a compromised VMM would try, run by the jailer in place of the VMM.
//!
//! The security suite (`tests/tests/security_jail.rs`, `security_tenants.rs`) puts this
//! binary in a real jail (the jailer's `--exec-file`) under the full default profile, and
//! again with one protection layer switched off at a time. Each *attempt* is one way out of
//! the jail; it reports what happened, and the test compares that with the exact outcome it
//! expects for that configuration (an errno name, `SIGSYS`, `SIGKILL`...), so a layer that
//! stops working shows up even when another layer still catches the attempt.
//!
//! Families (one module each): `fs` (files outside the jail, `..`, `/proc` tricks,
//! `openat2`, file handles, links, exec), `devices` (device nodes, ioctls), `mount`
//! (mounting, pivot_root/chroot), `caps` (regaining privileges), `signals` (ptrace and
//! signals to the host or another tenant), `net` (the host and other tenants over the
//! network, unix sockets), `kernel` (bpf, perf, keyctl, kexec, modules, io_uring,
//! userfaultfd, ...), `kvm` (`/dev/kvm` abuse), `resources` (fork/thread bombs, memory,
//! huge files, descriptors), `fds` (descriptors leaked by the parent or passed in).
//!
//! Command line (after the jailer's own `--id`/`--start-time-*` arguments, which are
//! ignored):
//!
//! ```text
//! --list                      print `NAME<TAB>FAMILY<TAB>alone|batch<TAB>DESCRIPTION`
//!                             per attempt (`alone`: run it in a jail of its own), exit
//! --attempts A,B,...|all      run these attempts in order
//! --victim PID                host pid of a process to signal/ptrace (the test's)
//! --tcp ADDR:PORT             a TCP listener the test runs outside the jail
//! --udp ADDR:PORT             a UDP receiver the test runs outside the jail
//! --abstract NAME             an abstract unix socket the test listens on outside the jail
//! --fd-socket PATH            a unix socket in the jail's /run where the test passes a
//!                             descriptor of a host directory holding `secret`
//! --decoy PATH                host path of a file of another tenant (its chroot)
//! --handle TYPE:HEX           a file handle (name_to_handle_at) of a host file
//! --other-socket PATH         host path of another tenant's API/vsock socket
//! --other-addr ADDR:PORT      another tenant's network address (TCP)
//! --hold                      after the attempts, print `holding` and wait for stdin EOF
//! --exec-marker NAME          (internal) the image an exec attempt managed to start
//! ```
//!
//! Output, one line each, flushed at once (so a process killed mid-attempt still names the
//! attempt that killed it):
//!
//! ```text
//! begin NAME
//! result NAME blocked HOW       HOW: errno name, or a word (NONE, ...) and details
//! result NAME escaped WHAT      the attempt got through
//! result NAME error WHAT        the attempt could not be made (a test set-up problem)
//! done
//! ```

mod caps;
mod devices;
mod fds;
mod fs;
mod kernel;
mod kvm;
mod mount;
mod net;
mod resources;
mod signals;
mod sys;

use std::io::Write;

/// What one attempt achieved.
pub enum Outcome {
    /// Stopped; how (an errno name, or a word and details).
    Blocked(String),
    /// It got through; what it achieved.
    Escaped(String),
    /// The attempt could not be made (missing test set-up).
    Error(String),
}

/// Everything the test told the probe about the world outside the jail.
#[derive(Default)]
pub struct Ctx {
    pub victim: Option<i32>,
    pub tcp: Option<String>,
    pub udp: Option<String>,
    pub abstract_name: Option<String>,
    pub fd_socket: Option<String>,
    pub decoy: Option<String>,
    pub handle: Option<String>,
    pub other_socket: Option<String>,
    pub other_addr: Option<String>,
    /// The probe's own path in the jail (argv[0]).
    pub exe: String,
    /// Descriptors open when the probe started (before it opened any).
    pub inherited_fds: Vec<i32>,
}

/// One way out of the jail.
pub struct Attempt {
    pub name: &'static str,
    pub what: &'static str,
    pub run: fn(&Ctx) -> Outcome,
}

/// Every family, in the order `all` runs them.
const FAMILIES: &[(&str, &[Attempt])] = &[
    ("fds", fds::ATTEMPTS),
    ("fs", fs::ATTEMPTS),
    ("devices", devices::ATTEMPTS),
    ("mount", mount::ATTEMPTS),
    ("caps", caps::ATTEMPTS),
    ("signals", signals::ATTEMPTS),
    ("net", net::ATTEMPTS),
    ("kernel", kernel::ATTEMPTS),
    ("kvm", kvm::ATTEMPTS),
    ("resources", resources::ATTEMPTS),
];

/// Attempts that change the process when they get through (its root, identity, image or
/// memory) or may end it: the test runs each of them in a jail of its own.
pub const ALONE: &[&str] = &[
    "fs.chroot-escape",
    "fs.exec-from-run",
    "caps.setuid-root",
    "caps.setgid-root",
    "caps.setgroups",
    "caps.capset",
    "caps.userns",
    "caps.unshare-ns",
    "caps.clone-thread-ns",
    "kernel.memfd-exec",
    "kernel.sethostname",
    "resources.memory-hog",
    "resources.memfd-hog",
    "resources.hugetlb",
    "resources.run-fill",
    "resources.run-inodes",
    "resources.run-fallocate",
];

fn all_attempts() -> impl Iterator<Item = (&'static str, &'static Attempt)> {
    FAMILIES
        .iter()
        .flat_map(|(family, list)| list.iter().map(move |a| (*family, a)))
}

fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn report(name: &str, outcome: &Outcome) {
    let (kind, text) = match outcome {
        Outcome::Blocked(how) => ("blocked", how),
        Outcome::Escaped(what) => ("escaped", what),
        Outcome::Error(what) => ("error", what),
    };
    line(&format!("result {name} {kind} {}", text.replace('\n', " ")));
}

fn main() {
    // Before anything opens a descriptor: what the jailer let through.
    let inherited_fds = fds::open_fds();
    let mut args = std::env::args();
    let exe = args.next().unwrap_or_default();
    let mut ctx = Ctx {
        exe,
        inherited_fds,
        ..Ctx::default()
    };
    let mut attempts: Vec<String> = Vec::new();
    let mut list = false;
    let mut hold = false;
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--id" | "--start-time-us" | "--start-time-cpu-us" | "--parent-cpu-time-us" => {
                value();
            }
            "--list" => list = true,
            "--hold" => hold = true,
            "--attempts" => attempts.extend(value().split(',').map(str::to_owned)),
            "--victim" => ctx.victim = value().parse().ok(),
            "--tcp" => ctx.tcp = Some(value()),
            "--udp" => ctx.udp = Some(value()),
            "--abstract" => ctx.abstract_name = Some(value()),
            "--fd-socket" => ctx.fd_socket = Some(value()),
            "--decoy" => ctx.decoy = Some(value()),
            "--handle" => ctx.handle = Some(value()),
            "--other-socket" => ctx.other_socket = Some(value()),
            "--other-addr" => ctx.other_addr = Some(value()),
            "--exec-marker" => {
                // An exec attempt got this far: the new image says so and ends.
                let name = value();
                report(
                    &name,
                    &Outcome::Escaped("a new program image was executed".into()),
                );
                line("done");
                std::process::exit(0);
            }
            other => {
                line(&format!("error unknown argument {other:?}"));
                std::process::exit(2);
            }
        }
    }
    if list {
        for (family, a) in all_attempts() {
            let mode = if ALONE.contains(&a.name) {
                "alone"
            } else {
                "batch"
            };
            line(&format!("{}\t{family}\t{mode}\t{}", a.name, a.what));
        }
        return;
    }
    if attempts.iter().any(|a| a == "all") {
        attempts = all_attempts().map(|(_, a)| a.name.to_owned()).collect();
    }
    for name in &attempts {
        let Some((_, attempt)) = all_attempts().find(|(_, a)| a.name == name) else {
            report(name, &Outcome::Error("no such attempt".into()));
            continue;
        };
        line(&format!("begin {name}"));
        let outcome = (attempt.run)(&ctx);
        report(name, &outcome);
    }
    line("done");
    if hold {
        // Stay alive (a tenant being attacked, then killed) until stdin closes.
        line("holding");
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    }
}
