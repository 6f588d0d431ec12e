//! Exhausting the host: threads, processes, memory (anonymous and memfd/shmem), huge pages
//! (outside the memory cgroup), locked memory, a huge file, the host's file system through
//! `/run` (bytes, inodes, `fallocate`), descriptors. Each stops at a bound of its own just
//! above the jail's limit, so that with a limit switched off it proves the limit was what
//! stopped it without taking the host down.

use std::sync::{Arc, Condvar, Mutex};

use crate::sys::{
    check, close, cstr, errno_name, ignore_sigxfsz, last_error, mmap, open, verdict, write_all, Fd,
};
use crate::{Attempt, Outcome};

/// Threads or processes the bombs try for (the default profile allows 64 tasks).
const TASKS: usize = 200;
/// Memory the hogs touch (the default profile allows 384 MiB).
const HOG_BYTES: usize = 448 << 20;
/// Locked memory asked for (the default profile allows none; the host's limit is 8 MiB).
const MLOCK_BYTES: usize = 1 << 20;
/// Bytes written to /run (the default profile's /run holds 4 MiB).
const RUN_FILL_BYTES: usize = 64 << 20;
/// Files created in /run (the default profile's /run holds 64).
const RUN_FILES: usize = 10_000;
/// Bytes `fallocate` asks for in /run.
const RUN_FALLOCATE: i64 = 1 << 30;
/// A huge page mapping (2 MiB pages).
const HUGE_PAGE_BYTES: usize = 2 << 20;
/// Offset of the byte written by the huge-file attempt (the default profile allows 16 GiB).
const HUGE_OFFSET: i64 = 17 << 30;
/// Descriptors opened (the default profile allows 1024).
const FDS: usize = 1100;

pub const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "resources.thread-bomb",
        what: "start 200 threads",
        run: |_| thread_bomb(),
    },
    Attempt {
        name: "resources.fork-bomb",
        what: "fork 200 processes",
        run: |_| fork_bomb(),
    },
    Attempt {
        name: "resources.memory-hog",
        what: "touch 448 MiB of anonymous memory",
        run: |_| memory_hog(false),
    },
    Attempt {
        name: "resources.memfd-hog",
        what: "fill 448 MiB of shared memory (memfd, shmem pages)",
        run: |_| memory_hog(true),
    },
    Attempt {
        name: "resources.hugetlb",
        what: "map 2 MiB of huge pages (mmap MAP_HUGETLB), which no memory cgroup counts",
        run: |_| hugetlb(),
    },
    Attempt {
        name: "resources.mlock",
        what: "lock 1 MiB of memory (mmap MAP_LOCKED, which the filter allows)",
        run: |_| mlock(),
    },
    Attempt {
        name: "resources.huge-file",
        what: "write a byte at 17 GiB into a file in /run (lseek + write)",
        run: |_| huge_file(),
    },
    Attempt {
        name: "resources.run-fill",
        what: "fill the host's file system through /run: write up to 64 MiB",
        run: |_| run_fill(),
    },
    Attempt {
        name: "resources.run-inodes",
        what: "use up the host's inodes through /run: create up to 10000 empty files",
        run: |_| run_inodes(),
    },
    Attempt {
        name: "resources.run-fallocate",
        what: "reserve 1 GiB of the host's disk through /run (fallocate)",
        run: |_| run_fallocate(),
    },
    Attempt {
        name: "resources.fd-exhaust",
        what: "open 1100 descriptors",
        run: |_| fd_exhaust(),
    },
];

fn thread_bomb() -> Outcome {
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let mut handles = Vec::new();
    let mut error = None;
    for _ in 0..TASKS {
        let g = gate.clone();
        match std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let (lock, cv) = &*g;
                let mut open = lock.lock().unwrap_or_else(|p| p.into_inner());
                while !*open {
                    open = cv.wait(open).unwrap_or_else(|p| p.into_inner());
                }
            }) {
            Ok(h) => handles.push(h),
            Err(e) => {
                error = Some(e.raw_os_error().map_or_else(|| e.to_string(), errno_name));
                break;
            }
        }
    }
    let started = handles.len();
    {
        let (lock, cv) = &*gate;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
    for h in handles {
        let _ = h.join();
    }
    match error {
        Some(e) => Outcome::Blocked(format!("{e} after {started} threads")),
        None => Outcome::Escaped(format!("{started} threads")),
    }
}

fn fork_bomb() -> Outcome {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Outcome::Error(format!("pipe2: {}", last_error()));
    }
    let (read_end, write_end) = (Fd(fds[0]), Fd(fds[1]));
    let mut children = 0;
    let mut error = None;
    for _ in 0..TASKS {
        // SAFETY: the child only calls async-signal-safe functions (close, read, _exit).
        let pid = unsafe { libc::syscall(libc::SYS_fork) };
        match check(pid) {
            Ok(0) => {
                let mut b = [0u8; 1];
                // SAFETY: the child waits for the parent to close the pipe, then exits.
                unsafe {
                    libc::close(write_end.0);
                    libc::read(read_end.0, b.as_mut_ptr().cast(), 1);
                    libc::_exit(0);
                }
            }
            Ok(_) => children += 1,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    drop(write_end);
    for _ in 0..children {
        // SAFETY: reaps any child; the status is not needed.
        unsafe { libc::wait(std::ptr::null_mut()) };
    }
    match error {
        Some(e) => Outcome::Blocked(format!("{e} after {children} processes")),
        None => Outcome::Escaped(format!("{children} processes")),
    }
}

fn memory_hog(shared: bool) -> Outcome {
    let (flags, fd) = if shared {
        let name = cstr("hog");
        // SAFETY: a NUL-terminated name; plain flags.
        let fd = match Fd::from_ret(unsafe {
            libc::syscall(libc::SYS_memfd_create, name.as_ptr(), libc::MFD_CLOEXEC)
        }) {
            Ok(fd) => fd,
            Err(e) => return Outcome::Blocked(format!("memfd_create: {e}")),
        };
        let len = libc::off_t::try_from(HOG_BYTES).unwrap_or(0);
        // SAFETY: a descriptor we own.
        if unsafe { libc::ftruncate(fd.0, len) } != 0 {
            return Outcome::Blocked(format!("ftruncate: {}", last_error()));
        }
        (libc::MAP_SHARED, Some(fd))
    } else {
        (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, None)
    };
    let p = match mmap(
        HOG_BYTES,
        libc::PROT_READ | libc::PROT_WRITE,
        flags,
        fd.as_ref().map_or(-1, |f| f.0),
    ) {
        Ok(p) => p,
        Err(e) => return Outcome::Blocked(format!("mmap: {e}")),
    };
    let base = p.cast::<u8>();
    for off in (0..HOG_BYTES).step_by(4096) {
        // SAFETY: inside the mapping of HOG_BYTES bytes.
        unsafe { base.add(off).write_volatile(1) };
    }
    // SAFETY: unmaps the mapping made above.
    unsafe { libc::munmap(p, HOG_BYTES) };
    Outcome::Escaped(format!("touched {} MiB", HOG_BYTES >> 20))
}

/// An anonymous private mapping of `len` bytes with `extra` flags; unmapped again.
fn map_with(len: usize, extra: libc::c_int, what: &str) -> Outcome {
    let p = match mmap(
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
        -1,
    ) {
        Ok(p) => p,
        Err(e) => return Outcome::Blocked(e),
    };
    // SAFETY: touches the first byte of the mapping made above, then unmaps it.
    unsafe {
        p.cast::<u8>().write_volatile(1);
        libc::munmap(p, len);
    }
    Outcome::Escaped(what.to_owned())
}

fn hugetlb() -> Outcome {
    map_with(
        HUGE_PAGE_BYTES,
        libc::MAP_HUGETLB,
        "mapped and touched a huge page",
    )
}

fn mlock() -> Outcome {
    map_with(
        MLOCK_BYTES,
        libc::MAP_LOCKED,
        &format!("locked {} MiB", MLOCK_BYTES >> 20),
    )
}

/// A new file in /run (never truncated: the jail may not), opened for writing.
fn create_in_run(path: &str) -> Result<Fd, String> {
    Fd::from_ret(open(
        path,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0o600,
    ))
}

fn huge_file() -> Outcome {
    ignore_sigxfsz();
    let path = "/run/planted-huge";
    let fd = match create_in_run(path) {
        Ok(fd) => fd,
        Err(e) => return Outcome::Error(format!("create {path}: {e}")),
    };
    // SAFETY: seeks a descriptor we own.
    if unsafe { libc::lseek(fd.0, HUGE_OFFSET, libc::SEEK_SET) } < 0 {
        return Outcome::Error(format!("lseek: {}", last_error()));
    }
    match write_all(&fd, &[1u8]) {
        Err(e) => Outcome::Blocked(e),
        Ok(()) => Outcome::Escaped("a 17 GiB file".into()),
    }
}

fn run_fill() -> Outcome {
    ignore_sigxfsz();
    let fd = match create_in_run("/run/planted-fill") {
        Ok(fd) => fd,
        Err(e) => return Outcome::Blocked(format!("{e} (create)")),
    };
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = 0;
    while written < RUN_FILL_BYTES {
        if let Err(e) = write_all(&fd, &chunk) {
            return Outcome::Blocked(format!("{e} after {} KiB", written >> 10));
        }
        written += chunk.len();
    }
    Outcome::Escaped(format!("wrote {} MiB", written >> 20))
}

fn run_inodes() -> Outcome {
    for i in 0..RUN_FILES {
        if let Err(e) = create_in_run(&format!("/run/planted-{i}")) {
            return Outcome::Blocked(format!("{e} after {i} files"));
        }
    }
    Outcome::Escaped(format!("{RUN_FILES} files"))
}

fn run_fallocate() -> Outcome {
    let fd = match create_in_run("/run/planted-fallocate") {
        Ok(fd) => fd,
        Err(e) => return Outcome::Error(format!("create: {e}")),
    };
    // SAFETY: fallocate on a descriptor we own; plain integers.
    let ret = unsafe { libc::syscall(libc::SYS_fallocate, fd.0, 0, 0i64, RUN_FALLOCATE) };
    verdict(ret, false, "reserved 1 GiB")
}

fn fd_exhaust() -> Outcome {
    let mut fds = Vec::new();
    let mut error = None;
    for _ in 0..FDS {
        match check(open("/dev/urandom", libc::O_RDONLY, 0)) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let n = fds.len();
    for fd in fds {
        close(fd);
    }
    match error {
        Some(e) => Outcome::Blocked(format!("{e} after {n} descriptors")),
        None => Outcome::Escaped(format!("{n} descriptors")),
    }
}
