//! The `Uffd` memory backend: guest memory served by an external page-fault handler, as
//! Firecracker does (its docs/snapshotting/handling-page-faults-on-snapshot-resume.md).
//!
//! The VMM maps anonymous guest memory, creates a userfaultfd (`/dev/userfaultfd`, which
//! the jailer makes with `--userfaultfd`; outside a jail the `userfaultfd` system call
//! when the device is missing, never under a seccomp filter: the jail's kills it),
//! registers every region for missing-page faults, connects to the handler's Unix socket
//! (`backend_path`) and sends it, in one message, the regions as JSON with the userfaultfd
//! attached (`SCM_RIGHTS`):
//!
//! ```json
//! [{"base_host_virt_addr": 140084449497088, "size": 134217728, "offset": 0,
//!   "page_size": 4096, "page_size_kib": 4096}]
//! ```
//!
//! (Firecracker's fields, `page_size_kib` included, which holds bytes despite its name.)
//! `offset` is where the region's bytes are in the memory file. From then on, every first
//! touch of a guest page (by a vCPU, by KVM, or by the VMM) waits until the handler has
//! copied the page in (`UFFDIO_COPY`). The handler must serve pages until the VMM exits; if
//! it dies, the guest hangs at its next fault (as with Firecracker).
//!
//! This module also has the handler's side ([`Uffd::copy`], [`Uffd::read_fault`],
//! [`receive_regions`]), which `src/bin/kiln-uffd-handler.rs`, the example handler, uses.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The userfaultfd device (Linux 6.1).
pub const DEVICE: &str = "/dev/userfaultfd";
// The requests are 32-bit numbers; the C library's `ioctl` takes an `unsigned long` (glibc)
// or an `int` (musl), which the kernel truncates to 32 bits either way.
/// `USERFAULTFD_IOC_NEW`: `_IO(0xAA, 0x00)`.
const IOC_NEW: libc::Ioctl = 0xaa00;
/// `UFFDIO_API`: `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::Ioctl = 0xc018_aa3f_u32 as libc::Ioctl;
/// `UFFDIO_REGISTER`: `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::Ioctl = 0xc020_aa00_u32 as libc::Ioctl;
/// `UFFDIO_COPY`: `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: libc::Ioctl = 0xc028_aa03_u32 as libc::Ioctl;
const UFFD_API: u64 = 0xaa;
const REGISTER_MODE_MISSING: u64 = 1;
/// `UFFD_EVENT_PAGEFAULT`.
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// Largest region message accepted by the handler.
const MAX_MESSAGE: usize = 64 << 10;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffd_msg` (32 bytes); for a page fault, `arg` starts with flags then address.
#[repr(C)]
#[derive(Default)]
struct UffdMsg {
    event: u8,
    reserved: [u8; 7],
    flags: u64,
    address: u64,
    rest: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    #[error("cannot create a userfaultfd: {0} (in a jail, run the jailer with --userfaultfd)")]
    Create(std::io::Error),
    #[error("UFFDIO_API failed: {0}")]
    Api(std::io::Error),
    #[error("UFFDIO_REGISTER of guest memory at {addr:#x} ({len} bytes) failed: {source}")]
    Register {
        addr: u64,
        len: u64,
        source: std::io::Error,
    },
    #[error("cannot connect to the page-fault handler's socket {path:?}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot send the userfaultfd to the page-fault handler: {0}")]
    Send(String),
    #[error("the VMM's message is invalid: {0}")]
    Message(String),
}

/// One guest memory region as the handler sees it (Firecracker's
/// `GuestRegionUffdMapping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UffdRegion {
    pub base_host_virt_addr: u64,
    pub size: u64,
    pub offset: u64,
    pub page_size: u64,
    /// Firecracker's deprecated duplicate of `page_size` (in bytes, despite the name).
    pub page_size_kib: u64,
}

/// A userfaultfd.
#[derive(Debug)]
pub struct Uffd(OwnedFd);

impl From<Uffd> for OwnedFd {
    fn from(u: Uffd) -> OwnedFd {
        u.0
    }
}

/// One page fault read from the userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub address: u64,
}

impl Uffd {
    /// A new userfaultfd for this process's memory (faults in kernel mode included: KVM
    /// touches guest memory), non-blocking, close-on-exec, API handshake done.
    pub fn create() -> Result<Uffd, UffdError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // std opens with O_CLOEXEC.
        let fd = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEVICE)
        {
            Ok(dev) => {
                // SAFETY: USERFAULTFD_IOC_NEW takes an int of flags by value and returns a
                // new descriptor or -1; `dev` is open for the call.
                unsafe { libc::ioctl(dev.as_raw_fd(), IOC_NEW, flags) }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Under a seccomp filter at this point (before the VMM's own), the VMM runs
                // in a jail, whose filter kills the process at the system call: its
                // userfaultfds come from the jailer's device.
                // SAFETY: PR_GET_SECCOMP takes no argument and only returns the mode.
                if unsafe { libc::prctl(libc::PR_GET_SECCOMP) } == 2 {
                    return Err(UffdError::Create(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("there is no {DEVICE} and the system call is filtered"),
                    )));
                }
                // SAFETY: the userfaultfd system call takes flags by value and returns a new
                // descriptor or -1.
                let rc = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
                i32::try_from(rc).unwrap_or(-1)
            }
            Err(e) => return Err(UffdError::Create(e)),
        };
        if fd < 0 {
            return Err(UffdError::Create(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor this function owns from here on.
        let uffd = Uffd(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut api = UffdioApi {
            api: UFFD_API,
            ..Default::default()
        };
        // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, which `api` is
        // (repr(C), same layout), alive for the call.
        if unsafe { libc::ioctl(uffd.0.as_raw_fd(), UFFDIO_API, &mut api) } < 0 {
            return Err(UffdError::Api(std::io::Error::last_os_error()));
        }
        Ok(uffd)
    }

    /// The handler's side: a userfaultfd received from the VMM.
    pub fn from_received(fd: OwnedFd) -> Uffd {
        Uffd(fd)
    }

    pub fn as_raw_fd(&self) -> i32 {
        self.0.as_raw_fd()
    }

    /// Registers `[addr, addr + len)` of this process for missing-page faults.
    fn register(&self, addr: u64, len: u64) -> Result<(), UffdError> {
        let mut r = UffdioRegister {
            start: addr,
            len,
            mode: REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register` (repr(C),
        // alive for the call); registering only changes how faults in the range are served.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), UFFDIO_REGISTER, &mut r) } < 0 {
            return Err(UffdError::Register {
                addr,
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The handler's side: copies `len` bytes at `src` (the handler's own memory) to `dst`
    /// (the VMM's registered memory) and wakes the faulting thread. `Ok(false)`: the page
    /// was already there (another fault got it first).
    pub fn copy(&self, dst: u64, src: *const u8, len: u64) -> std::io::Result<bool> {
        let mut c = UffdioCopy {
            dst,
            src: src as u64,
            len,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads `len` bytes at `src` in this process (the caller's
        // mapping, which it keeps for the call) and writes into the registered range of the
        // process that created the userfaultfd, never into this one's memory; `c` is one
        // `struct uffdio_copy`, alive for the call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), UFFDIO_COPY, &mut c) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EEXIST) => Ok(false),
            _ => Err(e),
        }
    }

    /// The handler's side: the next page fault, `Ok(None)` when none is pending (the
    /// descriptor is non-blocking) or the event is not a page fault.
    pub fn read_fault(&self) -> std::io::Result<Option<Fault>> {
        let mut msg = UffdMsg::default();
        let size = std::mem::size_of::<UffdMsg>();
        // SAFETY: reads at most `size` bytes into `msg`, a plain repr(C) struct of integers
        // of that size, alive for the call.
        let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut msg as *mut UffdMsg).cast(), size) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        if usize::try_from(n).ok() != Some(size) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the userfaultfd is closed",
            ));
        }
        Ok((msg.event == EVENT_PAGEFAULT).then_some(Fault {
            address: msg.address,
        }))
    }
}

/// The regions of `mem` as the handler sees them (each at its offset in the memory file).
pub fn regions_of(mem: &GuestMemoryMmap) -> Vec<UffdRegion> {
    let mut offset = 0;
    mem.iter()
        .map(|r| {
            let region = UffdRegion {
                base_host_virt_addr: r.as_ptr() as u64,
                size: r.len(),
                offset,
                page_size: 4096,
                page_size_kib: 4096,
            };
            offset += r.len();
            region
        })
        .collect()
}

/// Registers all of `mem` with a new userfaultfd and hands both to the handler listening
/// at `socket`. Returns the userfaultfd and the connection, which the microVM keeps open
/// for its life: a guest page the handler never served then waits instead of silently
/// reading zeros, and the handler sees the connection close when the VMM exits.
pub fn hand_over(mem: &GuestMemoryMmap, socket: &Path) -> Result<(Uffd, UnixStream), UffdError> {
    let uffd = Uffd::create()?;
    let regions = regions_of(mem);
    for r in &regions {
        uffd.register(r.base_host_virt_addr, r.size)?;
    }
    let stream = UnixStream::connect(socket).map_err(|source| UffdError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    let message = serde_json::to_vec(&regions).map_err(|e| UffdError::Send(e.to_string()))?;
    stream
        .send_with_fd(&message[..], uffd.as_raw_fd())
        .map_err(|e| UffdError::Send(e.to_string()))?;
    Ok((uffd, stream))
}

/// The handler's side: reads the VMM's message (regions and userfaultfd) from `stream`.
pub fn receive_regions(stream: &UnixStream) -> Result<(Vec<UffdRegion>, Uffd), UffdError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, file) = stream
        .recv_with_fd(&mut buf)
        .map_err(|e| UffdError::Message(format!("receiving it: {e}")))?;
    let file: File = file.ok_or_else(|| UffdError::Message("no descriptor attached".into()))?;
    let regions: Vec<UffdRegion> = serde_json::from_slice(buf.get(..n).unwrap_or(&[]))
        .map_err(|e| UffdError::Message(e.to_string()))?;
    Ok((regions, Uffd(OwnedFd::from(file))))
}
