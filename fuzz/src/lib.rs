//! Shared set-up of Kiln's fuzz targets (`fuzz_targets/*.rs`, see `fuzz/README.md`).
//!
//! - [`Input`]: reads fixed-size fields off the front of a fuzz input (zeros once it runs out),
//!   so every byte string is a valid input of every target.
//! - [`MemFile`]: a file in memory (`memfd`) with a path (`/proc/self/fd/N`), for the entry
//!   points that take a path (kernel loader, tenant profile, seccomp policy, disk image):
//!   nothing touches the disk and nothing is left behind.
//! - [`guest`]: a small guest memory with a virtqueue whose placement, descriptor table,
//!   available ring and data come from the input, as a hostile driver would lay them out.
//! - [`machine`]: a virtio device as the VMM runs it, without KVM: behind its virtio-mmio
//!   transport on the MMIO bus, served by the VMM thread's event loop, with the checks of
//!   what it may write; [`driver`]: the guest's driver for it, as structured input.
//! - [`http`]: a client's bytes cut into reads, and the walk over a server's answers.
//! - [`host`]: the host side of device targets (a tap stand-in, sockets, vsock's directory).
//! - [`setup`]: once per process: the VMM's log lines go to `/dev/null`, SIGPIPE is ignored.
//! - [`Quiet`]: standard error sent to `/dev/null` around code that prints (the worker).

pub mod bpf;
pub mod driver;
pub mod guest;
pub mod host;
pub mod http;
pub mod machine;

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Once;

/// A cursor over a fuzz input: each read takes the next bytes, or zeros past the end.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// The next `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A file in memory with a path that `open(2)` accepts, reused by every run of a target.
pub struct MemFile {
    file: File,
    path: String,
}

impl MemFile {
    /// A new empty in-memory file; `name` shows in `/proc/self/fd` listings only.
    pub fn new(name: &str) -> MemFile {
        let cname = std::ffi::CString::new(name).expect("a memfd name has no NUL");
        // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call;
        // memfd_create only reads it and returns a new descriptor (or -1).
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        MemFile { file, path }
    }

    /// Replaces the contents with `data`.
    pub fn set(&mut self, data: &[u8]) -> &str {
        self.file.set_len(0).expect("memfd truncate");
        self.file.seek(SeekFrom::Start(0)).expect("memfd seek");
        self.file.write_all(data).expect("memfd write");
        &self.path
    }

    /// Makes the file `len` bytes long (sparse: reads as zeros beyond what was written).
    pub fn set_len(&mut self, len: u64) -> &str {
        self.file.set_len(len).expect("memfd resize");
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Per-process set-up; call at the start of every run (it acts once):
///
/// - the VMM's log lines go to `/dev/null`, at the most verbose level so that every log
///   statement's formatting still runs;
/// - SIGPIPE is ignored, as the Rust runtime does for the VMM binary (libFuzzer's `main` is
///   not Rust's).
pub fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN has no memory effects.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let cfg = vmm::resources::LoggerConfig {
            log_path: Some("/dev/null".into()),
            level: Some(vmm::resources::LogLevel::Trace),
            show_level: Some(true),
            show_log_origin: Some(true),
            module: None,
        };
        vmm::logger::configure(&cfg).expect("the logger opens /dev/null");
    });
}

/// With `KILN_FUZZ_DEBUG` set, prints what a run decided (for checking that seeds reach the
/// code they are meant for: `KILN_FUZZ_DEBUG=1 cargo fuzz run TARGET corpus/TARGET -- -runs=0`).
///
/// A failed write is ignored: `eprintln!` would panic when standard error is a closed pipe
/// (`... | head`; [`setup`] ignores SIGPIPE), and libFuzzer would report that panic as a crash
/// of whatever input was running.
pub fn debug(what: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("KILN_FUZZ_DEBUG").is_some()) {
        let _ = writeln!(std::io::stderr().lock(), "kiln-fuzz: {}", what());
    }
}

/// While alive, standard error goes to `/dev/null` (code under test that prints on every
/// input would drown libFuzzer's output). A panic restores it first, so its message shows.
pub struct Quiet {
    saved: i32,
}

static SAVED_STDERR: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

impl Quiet {
    pub fn new() -> Quiet {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let saved = SAVED_STDERR.load(std::sync::atomic::Ordering::SeqCst);
                if saved >= 0 {
                    // SAFETY: dup2 of a descriptor this module saved onto 2; no memory involved.
                    unsafe { libc::dup2(saved, 2) };
                }
                previous(info)
            }));
        });
        // SAFETY: dup of fd 2 (open for the process's life); the copy is closed in drop.
        let saved = unsafe { libc::dup(2) };
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null opens");
        // SAFETY: dup2 of an open descriptor onto 2; `null` stays open until after the call.
        unsafe { libc::dup2(null.as_raw_fd(), 2) };
        SAVED_STDERR.store(saved, std::sync::atomic::Ordering::SeqCst);
        Quiet { saved }
    }
}

impl Default for Quiet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        SAVED_STDERR.store(-1, std::sync::atomic::Ordering::SeqCst);
        if self.saved >= 0 {
            // SAFETY: restores fd 2 from the copy made in `new`, then closes the copy.
            unsafe {
                libc::dup2(self.saved, 2);
                libc::close(self.saved);
            }
        }
    }
}

/// Removes `path` (a scratch directory of this process) when the process exits normally (a
/// fuzzing run that ends at its time or run limit).
pub fn remove_at_exit(path: std::path::PathBuf) {
    static PATHS: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
    extern "C" fn remove_all() {
        if let Ok(paths) = PATHS.lock() {
            for p in paths.iter() {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a function with no captured state, which only takes a lock and
        // removes files; atexit has no other effect.
        unsafe { libc::atexit(remove_all) };
    });
    if let Ok(mut paths) = PATHS.lock() {
        paths.push(path);
    }
}
