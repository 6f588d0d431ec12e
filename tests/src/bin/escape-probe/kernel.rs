//! Kernel interfaces a VMM never needs, each a known source of kernel exploits or of host
//! control: bpf, perf_event_open, keyrings, kexec, module loading, io_uring, userfaultfd,
//! port I/O, reboot, the kernel log, the clock, the hostname, swap, and running a program
//! from memory (memfd + execveat).

use crate::sys::{check, cstr, open, verdict, write_all, Fd};
use crate::{Attempt, Ctx, Outcome};

const BPF_PROG_LOAD: libc::c_long = 5;
const KEY_SPEC_PROCESS_KEYRING: libc::c_long = -2;
const LINUX_REBOOT_MAGIC1: libc::c_long = 0xfee1_dead;
const LINUX_REBOOT_MAGIC2: libc::c_long = 672_274_793;
const SYSLOG_ACTION_READ_ALL: libc::c_long = 3;

pub const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "kernel.bpf",
        what: "load a BPF program (bpf BPF_PROG_LOAD, socket filter)",
        run: |_| bpf(),
    },
    Attempt {
        name: "kernel.perf",
        what: "system-wide perf event (perf_event_open, cpu 0)",
        run: |_| {
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // PERF_TYPE_SOFTWARE
            attr[4..8].copy_from_slice(&128u32.to_ne_bytes()); // size
                                                               // SAFETY: a perf_event_attr buffer of the size it declares.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_perf_event_open,
                    attr.as_ptr(),
                    -1 as libc::c_long,
                    0 as libc::c_long,
                    -1 as libc::c_long,
                    0 as libc::c_long,
                )
            };
            verdict(ret, true, "opened a system-wide perf event")
        },
    },
    Attempt {
        name: "kernel.keyctl",
        what: "create a key in the kernel's keyrings (add_key)",
        run: |_| {
            let (kind, desc) = (cstr("user"), cstr("kiln-escape-probe"));
            let payload = b"planted";
            // SAFETY: NUL-terminated strings and a payload of the length given.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_add_key,
                    kind.as_ptr(),
                    desc.as_ptr(),
                    payload.as_ptr(),
                    payload.len(),
                    KEY_SPEC_PROCESS_KEYRING,
                )
            };
            verdict(ret, false, "created a kernel key")
        },
    },
    Attempt {
        name: "kernel.kexec",
        what: "load a new kernel (kexec_load)",
        run: |_| {
            // SAFETY: no segments; plain integers.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_kexec_load,
                    0 as libc::c_long,
                    0 as libc::c_long,
                    std::ptr::null::<u8>(),
                    0 as libc::c_long,
                )
            };
            verdict(ret, false, "kexec_load accepted")
        },
    },
    Attempt {
        name: "kernel.module",
        what: "load a kernel module (finit_module)",
        run: |ctx| {
            let fd = match Fd::from_ret(open(&ctx.exe, libc::O_RDONLY, 0)) {
                Ok(fd) => fd,
                Err(e) => return Outcome::Error(format!("open {}: {e}", ctx.exe)),
            };
            let params = cstr("");
            // SAFETY: a descriptor we own and an empty NUL-terminated parameter string.
            let ret = unsafe { libc::syscall(libc::SYS_finit_module, fd.0, params.as_ptr(), 0) };
            verdict(ret, false, "finit_module accepted")
        },
    },
    Attempt {
        name: "kernel.io-uring",
        what: "create an io_uring instance",
        run: |_| {
            let params = [0u8; 120];
            // SAFETY: an io_uring_params buffer the kernel reads and fills.
            let ret = unsafe { libc::syscall(libc::SYS_io_uring_setup, 8, params.as_ptr()) };
            verdict(ret, true, "created an io_uring")
        },
    },
    Attempt {
        name: "kernel.userfaultfd",
        what: "create a userfaultfd without the device (syscall; handles kernel faults too)",
        run: |_| {
            // SAFETY: plain flags.
            let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
            verdict(ret, true, "created a userfaultfd")
        },
    },
    Attempt {
        name: "kernel.iopl",
        what: "raw port I/O on the host (iopl 3)",
        run: |_| {
            // SAFETY: a plain integer.
            let ret = unsafe { libc::syscall(libc::SYS_iopl, 3) };
            verdict(ret, false, "iopl 3")
        },
    },
    Attempt {
        name: "kernel.reboot",
        what: "reboot() (with an invalid command: harmless even if allowed)",
        run: |_| {
            // SAFETY: plain integers; the command is invalid, so it does nothing either way.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_reboot,
                    LINUX_REBOOT_MAGIC1,
                    LINUX_REBOOT_MAGIC2,
                    0x0bad_c0de,
                    std::ptr::null::<u8>(),
                )
            };
            verdict(ret, false, "reboot() accepted the caller")
        },
    },
    Attempt {
        name: "kernel.syslog",
        what: "read the kernel log (syslog READ_ALL)",
        run: |_| {
            let mut buf = vec![0u8; 4096];
            // SAFETY: writes at most buf.len() bytes into buf.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_syslog,
                    SYSLOG_ACTION_READ_ALL,
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            verdict(ret, false, "read the kernel log")
        },
    },
    Attempt {
        name: "kernel.clock-settime",
        what: "set the host's clock (to the current time)",
        run: |_| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: writes one timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
            // SAFETY: reads one timespec.
            let ret = unsafe { libc::syscall(libc::SYS_clock_settime, libc::CLOCK_REALTIME, &ts) };
            verdict(ret, false, "set the clock")
        },
    },
    Attempt {
        name: "kernel.sethostname",
        what: "change the hostname",
        run: |_| {
            let name = b"planted";
            // SAFETY: a buffer of the length given.
            let ret = unsafe { libc::syscall(libc::SYS_sethostname, name.as_ptr(), name.len()) };
            verdict(ret, false, "changed the hostname")
        },
    },
    Attempt {
        name: "kernel.swapon",
        what: "enable swap on a file",
        run: |_| {
            let p = cstr("/run/planted-swap");
            // SAFETY: a NUL-terminated path; plain flags.
            let ret = unsafe { libc::syscall(libc::SYS_swapon, p.as_ptr(), 0) };
            verdict(ret, false, "swapon accepted")
        },
    },
    Attempt {
        name: "kernel.memfd-exec",
        what: "run a program from memory (memfd_create + execveat), no file on disk",
        run: memfd_exec,
    },
];

fn bpf() -> Outcome {
    // mov r0, 0; exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = cstr("GPL");
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // BPF_PROG_TYPE_SOCKET_FILTER
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: a bpf_attr buffer whose pointers (instructions, license) outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    verdict(ret, true, "loaded a BPF program")
}

fn memfd_exec(ctx: &Ctx) -> Outcome {
    let image = match std::fs::read(&ctx.exe) {
        Ok(i) => i,
        Err(e) => return Outcome::Error(format!("read {}: {e}", ctx.exe)),
    };
    let name = cstr("planted");
    // SAFETY: a NUL-terminated name; plain flags.
    let fd = match Fd::from_ret(unsafe {
        libc::syscall(libc::SYS_memfd_create, name.as_ptr(), libc::MFD_CLOEXEC)
    }) {
        Ok(fd) => fd,
        Err(e) => return Outcome::Blocked(format!("memfd_create: {e}")),
    };
    if let Err(e) = write_all(&fd, &image) {
        return Outcome::Error(format!("write: {e}"));
    }
    let empty = cstr("");
    let args = [
        cstr("planted"),
        cstr("--exec-marker"),
        cstr("kernel.memfd-exec"),
    ];
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: argv/envp are NUL-terminated arrays of NUL-terminated strings that outlive the
    // call; on success the new image reports and ends the process.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.0,
            empty.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    match check(ret) {
        Err(e) => Outcome::Blocked(e),
        Ok(_) => Outcome::Escaped("execveat returned".into()),
    }
}
