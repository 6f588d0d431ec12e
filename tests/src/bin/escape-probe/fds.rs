//! Descriptors: what the parent leaked into the jail, and a descriptor of a host directory
//! handed in over a unix socket (the test plays a careless or compromised host process).

use std::io::Read;
use std::os::fd::AsRawFd;

use kiln_tests::errno::io_name;
use kiln_tests::fdpass;

use crate::sys::sleep_ms;
use crate::{Attempt, Ctx, Outcome};

pub const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "fds.inherited",
        what: "use a descriptor leaked by the jailer's parent (the test leaks a host directory and a host file into the jailer)",
        run: inherited,
    },
    Attempt {
        name: "fds.passed-dir",
        what: "open a host file through a host directory descriptor received over a unix socket",
        run: passed_dir,
    },
];

/// Descriptors open in this process (0..4096).
pub fn open_fds() -> Vec<i32> {
    (0..4096)
        // SAFETY: F_GETFD only queries a descriptor number.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .collect()
}

fn inherited(ctx: &Ctx) -> Outcome {
    let extra: Vec<i32> = ctx
        .inherited_fds
        .iter()
        .copied()
        .filter(|&fd| fd > 2)
        .collect();
    if extra.is_empty() {
        return Outcome::Blocked("NONE (only 0, 1, 2 were open at start)".into());
    }
    // Try to read through each: a host directory or file would be an escape.
    let mut reached = Vec::new();
    for fd in extra {
        let mut st: libc::stat = unsafe_zeroed_stat();
        // SAFETY: fstat writes one stat into `st`.
        if unsafe { libc::fstat(fd, &mut st) } == 0 {
            reached.push(format!("fd {fd} (mode {:o})", st.st_mode));
        }
    }
    Outcome::Escaped(format!("inherited {}", reached.join(", ")))
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: stat is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn passed_dir(ctx: &Ctx) -> Outcome {
    let Some(path) = ctx.fd_socket.as_deref() else {
        return Outcome::Error("no --fd-socket".into());
    };
    // The test binds the socket once the jail's /run exists: wait for it (bounded).
    let mut stream = None;
    for _ in 0..300 {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => sleep_ms(10),
        }
    }
    let Some(stream) = stream else {
        return Outcome::Error(format!("cannot connect to {path}"));
    };
    let dir = match fdpass::recv_fd(stream.as_raw_fd()) {
        Ok(Some(d)) => d,
        Ok(None) => return Outcome::Error("no descriptor in the message".into()),
        Err(e) => return Outcome::Error(format!("recvmsg {}", io_name(&e))),
    };
    let mut file = match fdpass::open_in(&dir, "secret") {
        Ok(f) => f,
        Err(e) => return Outcome::Blocked(io_name(&e)),
    };
    let mut buf = [0u8; 64];
    let text = file
        .read(&mut buf)
        .ok()
        .and_then(|n| buf.get(..n))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    Outcome::Escaped(format!("read the host file: {:?}", text.trim()))
}
