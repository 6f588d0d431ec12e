//! `/init` of Kiln's Linux guest (PID 1): mounts the pseudo file systems it needs, prints
//! [`READY_MARKER`] on the console for the host to wait for, then ends the VM.
//!
//! It is a static binary with no shell and no libraries, so it runs from a bare initramfs or
//! ext4 root. It refuses to run as any PID other than 1: on a host it would reboot the machine.

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

fn main() -> ExitCode {
    let pid = std::process::id();
    if pid != 1 {
        eprintln!(
            "kiln-init: refusing to run as PID {pid}: this is the /init of Kiln's Linux guest \
             and it restarts the machine it runs on"
        );
        return ExitCode::from(2);
    }
    match MOUNTS.iter().try_for_each(mount) {
        Ok(()) => say(READY_MARKER),
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
