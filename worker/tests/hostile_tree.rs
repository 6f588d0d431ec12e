//! `kiln serve` against what a compromised VMM could leave in its instance directory (the
//! vsock directory is bound read-write into the jail): a tree nested 25,000 deep, names of
//! any bytes, a FIFO, links to the host's files. The worker runs at an orchestrator's usual
//! limit of 1,024 descriptors. When the instance ends (its VMM is killed), its directory is
//! removed completely, nothing the links point to is touched, and the worker goes on
//! serving.
//!
//! (The jail itself can no longer make such a tree: its filter has no mkdir and Landlock
//! grants only sockets there, as the security suite shows; the worker does not rely on it.)
//! Needs root, /dev/kvm, and the jailer and vmm binaries.

mod common;

use common::{wait_until, Env, Server};
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

/// Nests `depth` directories named `d` in `top`, one descriptor at a time.
fn nest(top: &Path, depth: usize) {
    let c = std::ffi::CString::new(top.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; the result is owned at once.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0);
    // SAFETY: just opened, owned by nothing else.
    let mut cur = unsafe { OwnedFd::from_raw_fd(fd) };
    for _ in 0..depth {
        // SAFETY: mkdirat/openat relative to a descriptor we own; a NUL-terminated name.
        let next = unsafe {
            assert_eq!(libc::mkdirat(cur.as_raw_fd(), c"d".as_ptr(), 0o700), 0);
            libc::openat(
                cur.as_raw_fd(),
                c"d".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(next >= 0);
        // SAFETY: just opened, owned by nothing else.
        cur = unsafe { OwnedFd::from_raw_fd(next) };
    }
}

/// A tmpfs mounted on a directory for the test's life (unmounted, detached, when dropped).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256m,mode=0755", "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount a tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_hostile_tree_in_an_instance_directory_is_removed_and_kiln_serve_survives() {
    let env = Env::new("hostile");
    // The state directory on a tmpfs, as the worker's default (/run/kiln) is: removing
    // 25,000 directories from a disk file system mounted with online discard can take
    // minutes on a loaded virtual disk, which says nothing about the remover.
    let _state = Tmpfs::mount(&env.state_dir);
    let mut cmd = env.kiln("serve");
    // SAFETY: setrlimit is async-signal-safe and only touches the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = Server::start_with(&env, cmd, &[]);
    let r = server.invoke("echo", b"{}");
    assert_eq!(r.status, 200, "{r}");
    let id = r.vm_id();
    let instance = env.state_dir.join("instances").join(&id);
    let vsock = instance.join("vsock");
    assert!(vsock.is_dir(), "{}", vsock.display());

    // What a jail with its layers off could leave there.
    let outside = env.root.join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("keep"), "the host's").unwrap();
    std::fs::write(outside.join("sub/keep"), "the host's").unwrap();
    std::os::unix::fs::symlink(&outside, vsock.join("to-host")).unwrap();
    let odd = vsock.join(OsStr::from_bytes(b"\n\xff odd"));
    std::fs::create_dir(&odd).unwrap();
    std::os::unix::fs::symlink(outside.join("sub"), odd.join("to-sub")).unwrap();
    let fifo = std::ffi::CString::new(vsock.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::create_dir(vsock.join("deep")).unwrap();
    nest(&vsock.join("deep"), 25_000);

    // The instance ends: its VMM is killed (pid file in the jail's root).
    let pid_file = env.chroot_base.join("vmm").join(&id).join("root/vmm.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: kill(2) with a pid and a signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_until(
        "the ended instance's directory to be removed",
        Duration::from_secs(60),
        || !instance.exists(),
    );
    // The worker serves on, and nothing outside the tree was touched.
    let r = server.invoke("echo", b"{\"again\":1}");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        std::fs::read_to_string(outside.join("keep")).unwrap(),
        "the host's"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("sub/keep")).unwrap(),
        "the host's"
    );
    let second = r.vm_id();
    let stderr = server.stop();
    assert!(!stderr.contains("overflow"), "{stderr}");
    assert!(!stderr.contains("cannot remove"), "{stderr}");
    env.assert_nothing_left(&[id, second]);
}
