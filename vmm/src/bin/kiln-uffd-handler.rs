//! `kiln-uffd-handler`: an example page-fault handler for `PUT /snapshot/load` with the
//! `Uffd` memory backend (docs/api.md, "Snapshots"). It serves guest pages from a snapshot's
//! memory file, one page per fault.
//!
//! ```text
//! kiln-uffd-handler --socket PATH --mem-file PATH
//! ```
//!
//! It binds the Unix socket `--socket` (which must not exist), prints `ready` on stdout,
//! accepts one connection (the VMM's), receives the guest memory regions (JSON) and the
//! userfaultfd (`SCM_RIGHTS`), maps the memory file privately, and then answers every
//! missing-page fault with `UFFDIO_COPY` of the page at the region's file offset. It ends
//! (exit code 0) when the VMM closes the connection, which it does when it exits. Errors
//! end it with exit code 1 and a message on stderr; the guest then waits at its next fault
//! (as with Firecracker, a handler must outlive its VMM).
//!
//! The protocol is Firecracker's, so this handler also serves Firecracker, and Firecracker's
//! example handlers serve Kiln.

/// `eprintln!` that drops a message stderr cannot take (a pipe nobody reads any more)
/// instead of panicking: `kiln_argv::stderr`.
macro_rules! eprintln {
    ($($arg:tt)*) => {
        kiln_argv::stderr::line(format_args!($($arg)*))
    };
}

use kiln_argv::{Flag, Table};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use vmm::persist::uffd::{receive_regions, Uffd, UffdRegion};

const PAGE: u64 = 4096;

const FLAGS: &[Flag] = &[Flag::single("socket"), Flag::single("mem-file")];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-uffd-handler: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The memory file, mapped read-only for the handler's life.
struct Mapping {
    addr: *const u8,
    len: u64,
}

impl Mapping {
    fn new(file: &File) -> Result<Mapping, String> {
        let len = file
            .metadata()
            .map_err(|e| format!("--mem-file: {e}"))?
            .len();
        let size = usize::try_from(len).map_err(|_| "--mem-file: too large".to_string())?;
        if size == 0 {
            return Err("--mem-file is empty".into());
        }
        // SAFETY: a new private read-only mapping of `size` bytes of `file` (open for the
        // call) at an address the kernel picks; nothing else in this process uses it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(format!(
                "cannot map --mem-file: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Mapping {
            addr: addr.cast(),
            len,
        })
    }

    /// The address of the page at `offset`, if the file holds it.
    fn page(&self, offset: u64) -> Option<*const u8> {
        let end = offset.checked_add(PAGE)?;
        if end > self.len {
            return None;
        }
        // In bounds (checked above): the result stays inside the mapping.
        Some(self.addr.wrapping_add(usize::try_from(offset).ok()?))
    }
}

fn run() -> Result<(), String> {
    let args = kiln_argv::parse(&Table::flags(FLAGS), std::env::args_os().skip(1))
        .map_err(|e| e.to_string())?;
    let socket = PathBuf::from(args.required("socket").map_err(|e| e.to_string())?);
    let mem_file = args.required("mem-file").map_err(|e| e.to_string())?;
    let file = File::open(mem_file).map_err(|e| format!("--mem-file {mem_file:?}: {e}"))?;
    let mapping = Mapping::new(&file)?;
    let listener =
        UnixListener::bind(&socket).map_err(|e| format!("--socket {}: {e}", socket.display()))?;
    println!("ready");
    let (stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let (regions, uffd) = receive_regions(&stream).map_err(|e| e.to_string())?;
    serve(&uffd, &regions, &mapping, stream.as_raw_fd())
}

/// Serves faults until the VMM's connection closes.
fn serve(uffd: &Uffd, regions: &[UffdRegion], map: &Mapping, conn: i32) -> Result<(), String> {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: conn,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is an array of two pollfd, valid for the call; poll writes revents.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if fds[1].revents != 0 {
            // The VMM closed the connection (or wrote to it, which it never does): done.
            return Ok(());
        }
        while let Some(fault) = uffd.read_fault().map_err(|e| format!("userfaultfd: {e}"))? {
            let page = fault.address & !(PAGE - 1);
            let region = regions
                .iter()
                .find(|r| (r.base_host_virt_addr..r.base_host_virt_addr + r.size).contains(&page))
                .ok_or_else(|| format!("fault at {page:#x} outside every region"))?;
            let offset = region.offset + (page - region.base_host_virt_addr);
            let src = map
                .page(offset)
                .ok_or_else(|| format!("the memory file has no page at offset {offset:#x}"))?;
            uffd.copy(page, src, PAGE)
                .map_err(|e| format!("UFFDIO_COPY to {page:#x}: {e}"))?;
        }
    }
}
