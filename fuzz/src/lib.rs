//! Shared set-up of Kiln's fuzz targets (`fuzz_targets/*.rs`, see `fuzz/README.md`).
//!
//! - [`Input`]: reads fixed-size fields off the front of a fuzz input (zeros once it runs out),
//!   so every byte string is a valid input of every target.
//! - [`MemFile`]: a file in memory (`memfd`) with a path (`/proc/self/fd/N`), for the entry
//!   points that take a path (kernel loader, tenant profile, seccomp policy, disk image):
//!   nothing touches the disk and nothing is left behind.
//! - [`guest`]: a small guest memory with a virtqueue whose descriptor table, available ring
//!   and data come from the input, as a hostile driver would lay them out.
//! - [`setup`]: once per process: the VMM's log lines go to `/dev/null`, SIGPIPE is ignored.

pub mod guest;

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
pub fn debug(what: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("KILN_FUZZ_DEBUG").is_some()) {
        eprintln!("kiln-fuzz: {}", what());
    }
}
