//! `/init` of Kiln's Linux guest (PID 1): mounts the pseudo file systems it needs, prints
//! [`READY_MARKER`] on the console for the host to wait for, then, when the kernel command
//! line names a function executable (`kiln.exec=PATH`, optionally `kiln.name=NAME`), serves
//! it to the host worker over vsock as the function agent (`kiln_init::agent`) until the host
//! closes the stream; then it ends the VM.
//!
//! It is a static binary with no shell and no libraries, so it runs from a bare initramfs or
//! ext4 root. It refuses to run as any PID other than 1: on a host it would reboot the machine.
//! The one exception is `kiln-init agent --unix SOCKET --exec PATH [--name NAME]`, which only
//! runs the agent's protocol loop over a Unix socket (no mounts, no reboot): the host-side
//! test of the agent.

use kiln_init::agent::{self, AgentConfig};
use std::ffi::CStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::process::ExitCode;

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
    say(&format!(
        "KILN-INIT: agent for {} ({})",
        cfg.name,
        cfg.exec.display()
    ));
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
    let mut handler = Reaping(agent::Exec {
        path: cfg.exec.clone(),
        max_output: usize::try_from(MAX_PAYLOAD).unwrap_or(usize::MAX),
    });
    match agent::serve(&mut stream, &cfg.name, MAX_PAYLOAD, &mut handler) {
        Ok(()) => say("KILN-INIT: the host closed the stream"),
        Err(e) => say(&format!("KILN-INIT: error: agent: {e}")),
    }
}

/// A handler run by PID 1: after each invocation, reaps the processes the handler left
/// behind (orphans are re-parented to init).
struct Reaping<H>(H);

impl<H: agent::Handler> agent::Handler for Reaping<H> {
    fn handle(&mut self, event: &[u8]) -> Result<Vec<u8>, agent::Failure> {
        let result = self.0.handle(event);
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

/// `kiln-init agent --unix SOCKET --exec PATH [--name NAME]`: the agent over a Unix socket,
/// as a host process (tests). Exit code 0 when the host closed the stream, 1 on an error,
/// 2 on a bad command line.
fn host_agent(args: &[String]) -> ExitCode {
    let mut socket = None;
    let mut exec = None;
    let mut name = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let slot = match flag.as_str() {
            "--unix" => &mut socket,
            "--exec" => &mut exec,
            "--name" => &mut name,
            other => {
                eprintln!("kiln-init agent: unknown flag {other:?} (use --unix SOCKET --exec PATH [--name NAME])");
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
    let (Some(socket), Some(exec)) = (socket, exec) else {
        eprintln!("kiln-init agent: --unix SOCKET and --exec PATH are required");
        return ExitCode::from(2);
    };
    let mut cmdline = format!("kiln.exec={exec}");
    if let Some(n) = name {
        cmdline.push_str(&format!(" kiln.name={n}"));
    }
    let Some(cfg) = AgentConfig::from_cmdline(&cmdline) else {
        eprintln!("kiln-init agent: --exec {exec:?} names no executable");
        return ExitCode::from(2);
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kiln-init agent: cannot connect to {socket}: {e}");
            return ExitCode::from(1);
        }
    };
    let mut handler = agent::Exec {
        path: cfg.exec.clone(),
        max_output: usize::try_from(MAX_PAYLOAD).unwrap_or(usize::MAX),
    };
    match agent::serve(&mut stream, &cfg.name, MAX_PAYLOAD, &mut handler) {
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
