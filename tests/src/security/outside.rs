//! The world outside a jail, as the escape probe attacks it: a host process to signal and
//! trace, listeners on the far side of a veth pair and an abstract unix socket (each
//! counting what reaches it), a host file's handle, and a host directory's descriptor handed
//! in over a socket in the jail.

use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::probe::RUN_TIMEOUT;
use crate::fdpass::send_fd;
use crate::netns::in_netns;
use crate::KillOnDrop;

/// A host process the probe tries to signal and trace: `sleep`, running as `uid` (the
/// jail's own uid: the hardest case, where the uid check alone lets a signal through).
pub struct Victim {
    child: KillOnDrop,
}

impl Victim {
    pub fn spawn(uid: u32) -> Victim {
        let child = Command::new("sleep")
            .arg("600")
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the victim (sleep)");
        Victim {
            child: KillOnDrop::new(child),
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    /// Still running (not killed by a probe).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Everything that reached the test's listeners (TCP connections, UDP datagrams, abstract
/// socket connections), counted by background threads until dropped.
pub struct Listeners {
    pub tcp: String,
    pub udp: String,
    pub other_tcp: String,
    pub abstract_name: String,
    pub tcp_hits: Arc<AtomicUsize>,
    pub udp_hits: Arc<AtomicUsize>,
    pub abstract_hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Listeners {
    /// TCP and UDP in `outside` at `<net>.2:port`, a second TCP listener at `<net>.3`
    /// (another tenant's address), and an abstract unix socket in `jail_ns` (`None`: the
    /// test's own namespace), named after `tag`.
    pub fn start(outside: &str, net: &str, jail_ns: Option<&str>, tag: &str) -> Listeners {
        let port = 20_000 + u16::try_from(std::process::id() % 20_000).unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp_hits, udp_hits, abstract_hits) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let l = Listeners {
            tcp: format!("{net}.2:{port}"),
            udp: format!("{net}.2:{port}"),
            other_tcp: format!("{net}.3:{port}"),
            abstract_name: format!("kiln-sec-{tag}"),
            tcp_hits,
            udp_hits,
            abstract_hits,
            stop,
        };
        for (addr, hits) in [
            (l.tcp.clone(), l.tcp_hits.clone()),
            (l.other_tcp.clone(), l.tcp_hits.clone()),
        ] {
            let listener = in_netns(Some(outside), move || TcpListener::bind(addr.as_str()))
                .expect("bind the outside TCP listener");
            listener.set_nonblocking(true).expect("nonblocking");
            spawn_counter(l.stop.clone(), hits, move || listener.accept().is_ok());
        }
        let udp_addr = l.udp.clone();
        let udp = in_netns(Some(outside), move || UdpSocket::bind(udp_addr.as_str()))
            .expect("bind the outside UDP receiver");
        udp.set_nonblocking(true).expect("nonblocking");
        spawn_counter(l.stop.clone(), l.udp_hits.clone(), move || {
            let mut b = [0u8; 64];
            udp.recv(&mut b).is_ok()
        });
        let name = l.abstract_name.clone();
        let owned = jail_ns.map(str::to_owned);
        let fd = in_netns(owned.as_deref(), move || abstract_listen(&name));
        spawn_counter(l.stop.clone(), l.abstract_hits.clone(), move || {
            // SAFETY: accept on a listening socket we own; the new descriptor is closed.
            let c = unsafe {
                libc::accept4(
                    fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if c >= 0 {
                // SAFETY: `c` was just returned by accept4.
                unsafe { libc::close(c) };
            }
            c >= 0
        });
        l
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn spawn_counter(
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    mut poll: impl FnMut() -> bool + Send + 'static,
) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if poll() {
                hits.fetch_add(1, Ordering::Relaxed);
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
}

/// A non-blocking listening abstract unix socket `@name` in the calling thread's network
/// namespace.
fn abstract_listen(name: &str) -> OwnedFd {
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    assert!(
        fd >= 0,
        "socket(AF_UNIX): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).expect("AF_UNIX");
    for (d, s) in sa.sun_path.iter_mut().skip(1).zip(name.bytes()) {
        *d = libc::c_char::from_ne_bytes([s]);
    }
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sa_family_t>() + 1 + name.len())
        .expect("length");
    // SAFETY: binds to an address struct of at least `len` bytes.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    assert_eq!(rc, 0, "bind @{name}: {}", std::io::Error::last_os_error());
    // SAFETY: plain integers.
    let rc = unsafe { libc::listen(fd.as_raw_fd(), 16) };
    assert_eq!(rc, 0, "listen @{name}");
    fd
}

/// `TYPE:HEX` of `path`'s file handle (name_to_handle_at), for `--handle`.
pub fn file_handle(path: &Path) -> String {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let mut buf = vec![0u8; 8 + 128];
    buf[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: a struct file_handle with room for 128 bytes of handle, a NUL-terminated path,
    // and an int for the mount id, all outliving the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id,
            0 as libc::c_long,
        )
    };
    assert_eq!(
        rc,
        0,
        "name_to_handle_at {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let len = usize::try_from(u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]])).unwrap_or(0);
    let kind = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let hex: String = buf[8..8 + len].iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}:{hex}")
}

/// Hands the probe a descriptor of `dir`: once the jail's `<chroot>/run` exists, binds
/// `fdpass.sock` there, accepts one connection and sends the descriptor. Gives up after
/// the run timeout.
pub fn serve_fd(chroot: PathBuf, dir: PathBuf) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        // `run` is the jail's own tmpfs: wait until it is mounted (a socket made in the
        // directory below it would be hidden).
        let run = chroot.join("run");
        let mounted = || {
            use std::os::unix::fs::MetadataExt;
            match (std::fs::metadata(&chroot), std::fs::metadata(&run)) {
                (Ok(c), Ok(r)) => r.is_dir() && r.dev() != c.dev(),
                _ => false,
            }
        };
        while !mounted() {
            if start.elapsed() > RUN_TIMEOUT {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let sock = run.join("fdpass.sock");
        let Ok(listener) = UnixListener::bind(&sock) else {
            return;
        };
        let _ = std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777));
        let _ = listener.set_nonblocking(true);
        let Ok(handle) = std::fs::File::open(&dir) else {
            return;
        };
        while start.elapsed() < RUN_TIMEOUT {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = send_fd(&stream, &handle);
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}
