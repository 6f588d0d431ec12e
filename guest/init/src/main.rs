//! `/init` of Kiln's Linux guest (PID 1): mounts the pseudo file systems it needs, prints
//! [`READY_MARKER`] on the console for the host to wait for, then, when the kernel command
//! line names a function executable (`kiln.exec=PATH`) or a Lambda function's configuration
//! (`kiln.lambda=PATH`; optionally `kiln.name=NAME`), serves it to the host worker over vsock
//! as the function agent (`kiln_init::agent`; a Lambda function through its Runtime API on
//! loopback, `kiln_init::lambda`, with the loopback interface brought up first) until the host
//! closes the stream; then it ends the VM.
//!
//! It is a static binary with no shell and no libraries, so it runs from a bare initramfs or
//! ext4 root. It refuses to run as any PID other than 1: on a host it would reboot the machine.
//! The one exception is `kiln-init agent --unix SOCKET (--exec PATH | --lambda CONFIG
//! --task-root DIR [--runtime-api ADDR]) [--name NAME]`, which only runs the agent over a Unix
//! socket (no mounts, no reboot): the host-side test of the agent.

use kiln_init::agent::{self, AgentConfig, Serve};
use kiln_init::lambda::config::{LambdaConfig, Layout};
use kiln_init::lambda::{InitState, LambdaRuntime};
use std::ffi::CStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::process::ExitCode;

/// `SIOCGIFFLAGS` and `SIOCSIFFLAGS`, typed as the C library's `ioctl` takes its request
/// (`unsigned long` in glibc, `int` in musl).
const SIOCGIFFLAGS: libc::Ioctl = 0x8913;
const SIOCSIFFLAGS: libc::Ioctl = 0x8914;
/// The line the host waits for on the guest's console.
const READY_MARKER: &str = "KILN-INIT: ready";

/// One pseudo file system to mount.
struct Mount {
    fstype: &'static CStr,
    target: &'static CStr,
}

/// What init mounts, in order. The kernel may already have mounted devtmpfs on /dev
/// (CONFIG_DEVTMPFS_MOUNT does so after mounting a disk root); that is not an error.
const MOUNTS: [Mount; 3] = [
    Mount {
        fstype: c"devtmpfs",
        target: c"/dev",
    },
    Mount {
        fstype: c"proc",
        target: c"/proc",
    },
    Mount {
        fstype: c"sysfs",
        target: c"/sys",
    },
];

#[derive(Debug)]
enum Error {
    Mount {
        fstype: &'static CStr,
        target: &'static CStr,
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Mount {
                fstype,
                target,
                source,
            } => write!(
                f,
                "cannot mount {} on {}: {source}",
                fstype.to_string_lossy(),
                target.to_string_lossy()
            ),
        }
    }
}

/// True when a failed mount means "something is already mounted there".
fn is_already_mounted(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EBUSY)
}

fn mount(m: &Mount) -> Result<(), Error> {
    // SAFETY: every pointer is a NUL-terminated string that outlives the call (or null for
    // the unused data argument); mount(2) only reads them.
    let rc = unsafe {
        libc::mount(
            m.fstype.as_ptr(),
            m.target.as_ptr(),
            m.fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    if is_already_mounted(&source) {
        return Ok(());
    }
    Err(Error::Mount {
        fstype: m.fstype,
        target: m.target,
        source,
    })
}

/// True when `a` and `b` are the same character device (stdout already is the console).
fn same_char_device(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.file_type().is_char_device() && a.rdev() == b.rdev(),
        _ => false,
    }
}

/// Writes `line` to /dev/console and to stdout (once when they are the same device).
/// Best effort: PID 1 has nowhere else to report a failed write.
fn say(line: &str) {
    let text = format!("{line}\n");
    let stdout = io::stdout().as_fd().try_clone_to_owned().map(File::from);
    let console = OpenOptions::new().write(true).open("/dev/console");
    if let Ok(mut console) = console.as_ref() {
        let _ = console.write_all(text.as_bytes());
    }
    if let Ok(mut stdout) = stdout.as_ref() {
        if !matches!(&console, Ok(console) if same_char_device(console, stdout)) {
            let _ = stdout.write_all(text.as_bytes());
        }
    }
}

/// Ends the VM: flushes the file systems, then asks the kernel to restart.
///
/// A restart rather than `RB_POWER_OFF`: Kiln's guest has no ACPI, so the kernel has no way
/// to power off and turns `RB_POWER_OFF` into a halt that leaves the VM running. A restart
/// reaches the VMM as a reset (`reboot=k`: the i8042 reset line, as under Firecracker;
/// `reboot=t`: a triple fault, which ends QEMU run with `-no-reboot`).
fn end_vm() -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // SAFETY: reboot with a valid command; on success it does not return.
    let rc = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    let err = io::Error::last_os_error();
    say(&format!("KILN-INIT: error: reboot returned {rc}: {err}"));
    // PID 1 must not exit (the kernel would panic with a less helpful message): wait forever.
    loop {
        // SAFETY: pause has no preconditions; it only blocks until a signal arrives.
        unsafe { libc::pause() };
    }
}

/// Answers to invocations never exceed the protocol's default payload limit.
const MAX_PAYLOAD: u32 = kiln_protocol::DEFAULT_MAX_PAYLOAD;
/// How long the agent keeps trying to reach the host (the vsock device may still be
/// probing when /init starts).
const CONNECT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Agent mode in the guest: connect to the host over vsock and serve until it hangs up.
fn run_agent(cfg: &AgentConfig) {
    let (what, mut handler): (String, Box<dyn agent::Handler>) = match &cfg.serve {
        Serve::Exec(exec) => (
            exec.display().to_string(),
            Box::new(Reaping(agent::Exec {
                path: exec.clone(),
                max_output: usize::try_from(MAX_PAYLOAD).unwrap_or(usize::MAX),
            })),
        ),
        Serve::Lambda(path) => {
            if let Err(e) = loopback_up() {
                say(&format!("KILN-INIT: error: cannot bring up lo: {e}"));
            }
            match start_lambda(path, Layout::guest()) {
                Ok((rt, line)) => {
                    say(&format!("KILN-INIT: {line}"));
                    (
                        format!("Lambda runtime API {}", rt.api_address()),
                        Box::new(rt),
                    )
                }
                Err(e) => {
                    say(&format!("KILN-INIT: error: {e}"));
                    return;
                }
            }
        }
    };
    say(&format!("KILN-INIT: agent for {} ({what})", cfg.name));
    let started = std::time::Instant::now();
    let mut stream = loop {
        match agent::connect_vsock(
            u32::try_from(kiln_protocol::HOST_CID).unwrap_or(2),
            kiln_protocol::GUEST_CONNECT_PORT,
        ) {
            Ok(s) => break s,
            Err(_) if started.elapsed() < CONNECT_PATIENCE => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => {
                say(&format!(
                    "KILN-INIT: error: cannot connect to the host over vsock: {e}"
                ));
                return;
            }
        }
    };
    match agent::serve(&mut stream, &cfg.name, MAX_PAYLOAD, handler.as_mut()) {
        Ok(()) => say("KILN-INIT: the host closed the stream"),
        Err(e) => say(&format!("KILN-INIT: error: agent: {e}")),
    }
}

/// Reads a Lambda function's configuration and starts its runtime (waiting for its init);
/// with the line that says how its init went.
fn start_lambda(
    config: &std::path::Path,
    layout: Layout,
) -> Result<(LambdaRuntime, String), String> {
    let bytes = std::fs::read(config).map_err(|e| {
        format!(
            "cannot read the Lambda configuration {}: {e}",
            config.display()
        )
    })?;
    let cfg = LambdaConfig::parse(&bytes).map_err(|e| format!("{}: {e}", config.display()))?;
    let (rt, init) = LambdaRuntime::start(cfg, layout).map_err(|e| e.to_string())?;
    let state = match init {
        InitState::Ready => "ready".to_string(),
        InitState::Slow => "still initialising".to_string(),
        InitState::Failed(why) => format!("init failed ({why}); retried at the first invocation"),
    };
    let line = format!(
        "Lambda runtime API on {}: runtime {state}",
        rt.api_address()
    );
    Ok((rt, line))
}

/// Brings the loopback interface up (the Runtime API listens on 127.0.0.1).
fn loopback_up() -> io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: socket(2) takes integers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data for which all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = libc::c_char::try_from(*src).unwrap_or(0);
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into the valid `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the union's flags member, the one read here.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let up = libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
    req.ifr_ifru.ifru_flags = flags | up;
    // SAFETY: SIOCSIFFLAGS reads the name and flags from the valid `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A handler run by PID 1: after each invocation, reaps the processes the handler left
/// behind (orphans are re-parented to init).
struct Reaping<H>(H);

impl<H: agent::Handler> agent::Handler for Reaping<H> {
    fn handle(&mut self, ctx: &agent::Context, event: &[u8]) -> agent::Handled {
        let result = self.0.handle(ctx, event);
        loop {
            // SAFETY: waitpid with a null status pointer only reaps; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
        }
        result
    }
}

/// `kiln-init agent --unix SOCKET (--exec PATH | --lambda CONFIG --task-root DIR
/// [--runtime-api ADDR]) [--name NAME]`: the agent over a Unix socket, as a host process
/// (tests). A Lambda function's runtime gets the agent's `PATH`, its code is in DIR, and the
/// Runtime API listens on ADDR (default: a free loopback port), printed on stderr. Exit code
/// 0 when the host closed the stream, 1 on an error, 2 on a bad command line.
fn host_agent(args: &[String]) -> ExitCode {
    const USAGE: &str = "use --unix SOCKET (--exec PATH | --lambda CONFIG --task-root DIR [--runtime-api ADDR]) [--name NAME]";
    let (mut socket, mut exec, mut name, mut lambda, mut task_root, mut api) =
        (None, None, None, None, None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let slot = match flag.as_str() {
            "--unix" => &mut socket,
            "--exec" => &mut exec,
            "--name" => &mut name,
            "--lambda" => &mut lambda,
            "--task-root" => &mut task_root,
            "--runtime-api" => &mut api,
            other => {
                eprintln!("kiln-init agent: unknown flag {other:?} ({USAGE})");
                return ExitCode::from(2);
            }
        };
        match it.next() {
            Some(v) => *slot = Some(v.clone()),
            None => {
                eprintln!("kiln-init agent: {flag} needs a value");
                return ExitCode::from(2);
            }
        }
    }
    let Some(socket) = socket else {
        eprintln!("kiln-init agent: --unix SOCKET is required ({USAGE})");
        return ExitCode::from(2);
    };
    let mut handler: Box<dyn agent::Handler> = match (exec, lambda, task_root) {
        (Some(exec), None, None) => Box::new(agent::Exec {
            path: exec.into(),
            max_output: usize::try_from(MAX_PAYLOAD).unwrap_or(usize::MAX),
        }),
        (None, Some(config), Some(root)) => {
            let layout = Layout::host(root.into(), api.unwrap_or_else(|| "127.0.0.1:0".into()));
            match start_lambda(std::path::Path::new(&config), layout) {
                Ok((rt, line)) => {
                    eprintln!("kiln-init agent: {line}");
                    Box::new(rt)
                }
                Err(e) => {
                    eprintln!("kiln-init agent: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        _ => {
            eprintln!("kiln-init agent: {USAGE}");
            return ExitCode::from(2);
        }
    };
    let name = name.unwrap_or_else(|| "function".into());
    let mut stream = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kiln-init agent: cannot connect to {socket}: {e}");
            return ExitCode::from(1);
        }
    };
    match agent::serve(&mut stream, &name, MAX_PAYLOAD, handler.as_mut()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-init agent: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("agent") {
        return host_agent(args.get(1..).unwrap_or_default());
    }
    let pid = std::process::id();
    if pid != 1 {
        eprintln!(
            "kiln-init: refusing to run as PID {pid}: this is the /init of Kiln's Linux guest \
             and it restarts the machine it runs on"
        );
        return ExitCode::from(2);
    }
    match MOUNTS.iter().try_for_each(mount) {
        Ok(()) => {
            say(READY_MARKER);
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            if let Some(cfg) = AgentConfig::from_cmdline(&cmdline) {
                run_agent(&cfg);
            }
        }
        Err(e) => say(&format!("KILN-INIT: error: {e}")),
    }
    end_vm()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ebusy_means_already_mounted() {
        assert!(is_already_mounted(&io::Error::from_raw_os_error(
            libc::EBUSY
        )));
        assert!(!is_already_mounted(&io::Error::from_raw_os_error(
            libc::ENOENT
        )));
        assert!(!is_already_mounted(&io::Error::from_raw_os_error(
            libc::EPERM
        )));
    }

    #[test]
    fn mounts_devtmpfs_first_then_proc_and_sys() {
        let table: Vec<_> = MOUNTS
            .iter()
            .map(|m| (m.fstype.to_str().ok(), m.target.to_str().ok()))
            .collect();
        assert_eq!(
            table,
            [
                (Some("devtmpfs"), Some("/dev")),
                (Some("proc"), Some("/proc")),
                (Some("sysfs"), Some("/sys")),
            ]
        );
    }

    #[test]
    fn mount_error_names_file_system_target_and_cause() {
        let e = Error::Mount {
            fstype: c"proc",
            target: c"/proc",
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        let text = e.to_string();
        assert!(text.starts_with("cannot mount proc on /proc: "), "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
    }

    #[test]
    fn a_file_is_not_the_same_char_device_as_itself() {
        let exe = File::open(std::env::current_exe().unwrap()).unwrap();
        assert!(!same_char_device(&exe, &exe));
    }

    #[test]
    fn dev_null_is_the_same_char_device_as_itself() {
        let a = File::open("/dev/null").unwrap();
        let b = File::open("/dev/null").unwrap();
        assert!(same_char_device(&a, &b));
    }
}
