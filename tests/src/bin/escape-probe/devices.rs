//! Device nodes: the host's disks and memory, making new nodes, and ioctls the jail's
//! devices should not take, or terminal ioctls on the inherited stdio (each on descriptors
//! 0, 1 and 2: input injection, the terminal's mode, its window size, its line discipline).

use crate::sys::{check, close, cstr, open, verdict, Fd};
use crate::{Attempt, Outcome};

/// RNDADDTOENTCNT: _IOW('R', 0x01, int).
const RNDADDTOENTCNT: libc::Ioctl = 0x4004_5201;

pub const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "devices.host-nodes",
        what:
            "open the host's memory, ports, disks and consoles (/dev/mem, /dev/port, /dev/sda, ...)",
        run: |_| host_nodes(),
    },
    Attempt {
        name: "devices.mknod-char",
        what: "create a character device node for /dev/mem (1:1) in /run",
        run: |_| {
            let p = cstr("/run/planted-mem");
            // SAFETY: a NUL-terminated path; plain integers.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_mknod,
                    p.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(1, 1),
                )
            };
            verdict(ret, false, "created a /dev/mem node")
        },
    },
    Attempt {
        name: "devices.mknod-block",
        what: "create a block device node for the host's disk (8:0) with mknodat",
        run: |_| {
            let p = cstr("/run/planted-disk");
            // SAFETY: a NUL-terminated path; plain integers.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_mknodat,
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    libc::S_IFBLK | 0o666,
                    libc::makedev(8, 0),
                )
            };
            verdict(ret, false, "created a disk node")
        },
    },
    Attempt {
        name: "devices.urandom-write",
        what: "open /dev/urandom for writing (the jail grants read only)",
        run: |_| {
            verdict(
                open("/dev/urandom", libc::O_WRONLY, 0),
                true,
                "opened /dev/urandom for writing",
            )
        },
    },
    Attempt {
        name: "devices.urandom-ioctl",
        what: "credit the host's entropy pool (RNDADDTOENTCNT on /dev/urandom)",
        run: |_| {
            let fd = match Fd::from_ret(open("/dev/urandom", libc::O_RDONLY, 0)) {
                Ok(fd) => fd,
                Err(e) => return Outcome::Error(format!("open /dev/urandom: {e}")),
            };
            let bits: libc::c_int = 4096;
            // SAFETY: RNDADDTOENTCNT reads one int.
            let ret = unsafe { libc::ioctl(fd.0, RNDADDTOENTCNT, &bits) };
            verdict(ret.into(), false, "credited the host's entropy pool")
        },
    },
    Attempt {
        name: "devices.tun-new-tap",
        what: "create a new tap interface through /dev/net/tun",
        run: |_| new_tap(),
    },
    Attempt {
        name: "devices.tiocsti",
        what: "inject input into the terminal on stdio (TIOCSTI)",
        run: |_| {
            let c = b'x';
            on_stdio("injected terminal input", |fd| {
                // SAFETY: TIOCSTI reads one byte.
                unsafe { libc::ioctl(fd, libc::TIOCSTI, &c) }
            })
        },
    },
    Attempt {
        name: "devices.tty-mode",
        what: "change the terminal's mode on stdio: no echo, no signals (TCSETS)",
        run: |_| {
            // SAFETY: termios is plain data; all-zero is a valid (raw, no echo) mode.
            let mode: libc::termios = unsafe { std::mem::zeroed() };
            on_stdio("changed the terminal's mode", |fd| {
                // SAFETY: TCSETS reads one termios.
                unsafe { libc::ioctl(fd, libc::TCSETS, &mode) }
            })
        },
    },
    Attempt {
        name: "devices.tty-winsize",
        what: "change the terminal's window size on stdio (TIOCSWINSZ)",
        run: |_| {
            let size = libc::winsize {
                ws_row: 3,
                ws_col: 7,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            on_stdio("changed the window size", |fd| {
                // SAFETY: TIOCSWINSZ reads one winsize.
                unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) }
            })
        },
    },
    Attempt {
        name: "devices.tty-ldisc",
        what: "change the terminal's line discipline on stdio (TIOCSETD, N_HDLC)",
        run: |_| {
            let ldisc: libc::c_int = 13;
            on_stdio("changed the line discipline", |fd| {
                // SAFETY: TIOCSETD reads one int.
                unsafe { libc::ioctl(fd, libc::TIOCSETD, &ldisc) }
            })
        },
    },
    Attempt {
        name: "devices.tioclinux",
        what: "console ioctl TIOCLINUX (selection paste) on stdin",
        run: |_| {
            let sub = [2u8; 8];
            on_stdio("used a console ioctl", |fd| {
                // SAFETY: TIOCLINUX reads a subcode buffer.
                unsafe { libc::ioctl(fd, libc::TIOCLINUX, sub.as_ptr()) }
            })
        },
    },
    Attempt {
        name: "devices.userfaultfd-node",
        what: "open /dev/userfaultfd (not given without --userfaultfd)",
        run: |_| {
            verdict(
                open("/dev/userfaultfd", libc::O_RDWR, 0),
                true,
                "opened /dev/userfaultfd",
            )
        },
    },
];

/// Makes `ioctl` on descriptors 0, 1 and 2: escaped if it works on any, else blocked with
/// the errors seen.
fn on_stdio(what: &str, ioctl: impl Fn(libc::c_int) -> libc::c_int) -> Outcome {
    let mut errors = Vec::new();
    for fd in 0..=2 {
        match check(ioctl(fd).into()) {
            Ok(_) => return Outcome::Escaped(format!("{what} (descriptor {fd})")),
            Err(e) => errors.push(e),
        }
    }
    errors.dedup();
    Outcome::Blocked(errors.join(","))
}

fn host_nodes() -> Outcome {
    let mut errors = Vec::new();
    for node in [
        "/dev/mem",
        "/dev/kmem",
        "/dev/port",
        "/dev/sda",
        "/dev/vda",
        "/dev/nvme0n1",
        "/dev/console",
        "/dev/tty",
        "/dev/kmsg",
        "/dev/null",
    ] {
        match check(open(node, libc::O_RDONLY, 0)) {
            Ok(fd) => {
                close(fd);
                return Outcome::Escaped(format!("opened {node}"));
            }
            Err(e) => errors.push(e),
        }
    }
    errors.sort();
    errors.dedup();
    Outcome::Blocked(errors.join(","))
}

fn new_tap() -> Outcome {
    let fd = match Fd::from_ret(open("/dev/net/tun", libc::O_RDWR, 0)) {
        Ok(fd) => fd,
        Err(e) => return Outcome::Blocked(format!("open: {e}")),
    };
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"kplanted0".iter()) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    req.ifr_ifru.ifru_flags = libc::c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI).unwrap_or(0);
    // SAFETY: TUNSETIFF reads and writes the ifreq.
    let ret = unsafe { libc::ioctl(fd.0, libc::TUNSETIFF, &mut req) };
    verdict(ret.into(), false, "created tap kplanted0")
}
