use super::*;

use std::os::unix::fs::symlink;
use std::process::Command;

/// A scratch directory (removed with the remover itself, which these tests trust only once
/// they passed; `std::fs::remove_dir_all` as a fallback).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if remove_tree(&self.0).is_err() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("kiln-remove-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "MISSING PRECONDITION: this test mounts a tmpfs and needs root"
    );
}

fn mount_tmpfs(at: &Path, options: &str) {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(at)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount tmpfs on {}", at.display());
}

fn umount(at: &Path) {
    let status = Command::new("umount").arg(at).status().expect("run umount");
    assert!(status.success(), "umount {}", at.display());
}

/// Nests `depth` directories named `d` below `top`, with a file at the bottom, through
/// directory descriptors (no path grows with the depth, one descriptor at a time).
fn nest(top: &Path, depth: usize) {
    let mut cur = open_dir(libc::AT_FDCWD, &c_path(top.as_os_str()).unwrap()).unwrap();
    for _ in 0..depth {
        // SAFETY: a NUL-terminated name; mkdirat creates one directory.
        let rc = unsafe { libc::mkdirat(cur.as_raw_fd(), c"d".as_ptr(), 0o755) };
        assert_eq!(rc, 0, "mkdirat: {}", io::Error::last_os_error());
        cur = open_dir(cur.as_raw_fd(), c"d").unwrap();
    }
    // SAFETY: as above, a file at the bottom.
    let fd = unsafe {
        libc::openat(
            cur.as_raw_fd(),
            c"bottom".as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        )
    };
    assert!(fd >= 0);
    // SAFETY: a descriptor just opened.
    unsafe { libc::close(fd) };
}

#[test]
fn removes_every_kind_of_entry_and_odd_names() {
    let s = scratch("kinds");
    let top = s.0.join("tree");
    std::fs::create_dir_all(top.join("a/b/c")).unwrap();
    std::fs::write(top.join("a/b/c/file"), "x").unwrap();
    std::fs::write(top.join("a/plain"), "y").unwrap();
    let odd = OsStr::from_bytes(b"new\nline \xff\xfe not utf-8");
    std::fs::create_dir(top.join(odd)).unwrap();
    std::fs::write(top.join(odd).join("f"), "z").unwrap();
    let long = "n".repeat(255);
    std::fs::create_dir(top.join(&long)).unwrap();
    std::fs::write(top.join(&long).join(&long), "w").unwrap();
    let fifo = c_path(top.join("fifo").as_os_str()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(top.join("sock")).unwrap();
    // A directory with no permissions at all: root removes it anyway.
    std::fs::create_dir(top.join("locked")).unwrap();
    std::fs::write(top.join("locked/x"), "x").unwrap();
    std::fs::set_permissions(
        top.join("locked"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    remove_tree(&top).unwrap();
    assert!(!top.exists());
    // Again: what is gone is removed already.
    remove_tree(&top).unwrap();
}

#[test]
fn links_are_removed_never_followed() {
    let s = scratch("links");
    let outside = s.0.join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("keep"), "host file").unwrap();
    std::fs::write(outside.join("sub/keep"), "host file").unwrap();
    let top = s.0.join("tree");
    std::fs::create_dir_all(top.join("x")).unwrap();
    symlink(&outside, top.join("to-dir")).unwrap();
    symlink(outside.join("keep"), top.join("x/to-file")).unwrap();
    symlink("../../outside/sub", top.join("x/relative")).unwrap();
    symlink("/nonexistent", top.join("dangling")).unwrap();
    remove_tree(&top).unwrap();
    assert!(!top.exists());
    assert_eq!(
        std::fs::read_to_string(outside.join("keep")).unwrap(),
        "host file"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("sub/keep")).unwrap(),
        "host file"
    );
    // A link at the top is removed itself; its target stays.
    let link = s.0.join("link");
    symlink(&outside, &link).unwrap();
    remove_tree(&link).unwrap();
    assert!(std::fs::symlink_metadata(&link).is_err());
    assert!(outside.join("keep").exists());
    // So is a file.
    let file = s.0.join("file");
    std::fs::write(&file, "f").unwrap();
    remove_tree(&file).unwrap();
    assert!(!file.exists());
}

#[test]
fn another_mount_is_never_entered_and_is_reported() {
    require_root();
    let s = scratch("mount");
    let top = s.0.join("tree");
    let mnt = top.join("a/mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(top.join("a/file"), "x").unwrap();
    mount_tmpfs(&mnt, "size=64k");
    std::fs::write(mnt.join("inside"), "on the other mount").unwrap();
    let e = remove_tree(&top).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, RemoveError::Incomplete { left: 1, .. }),
        "{text}"
    );
    // rmdir refuses a mount point (EBUSY) before the walk would look inside; a mount seen
    // from another namespace would be refused by its mount id instead ("another mount").
    let busy = std::io::Error::from_raw_os_error(libc::EBUSY);
    assert!(
        text.contains(&format!(
            "\"mnt\" (depth 1): cannot remove the directory: {busy}"
        )),
        "{text}"
    );
    // Nothing on the mount was touched; everything else is gone.
    assert_eq!(
        std::fs::read_to_string(mnt.join("inside")).unwrap(),
        "on the other mount"
    );
    assert!(!top.join("a/file").exists());
    // A bind mount of the same file system (same device, other mount id) is not entered
    // either.
    umount(&mnt);
    let source = s.0.join("bind-source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("keep"), "bound").unwrap();
    let status = Command::new("mount")
        .arg("--bind")
        .arg(&source)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success());
    let e = remove_tree(&top).unwrap_err();
    umount(&mnt);
    assert!(e.to_string().contains(&busy.to_string()), "{e}");
    assert_eq!(
        std::fs::read_to_string(source.join("keep")).unwrap(),
        "bound"
    );
    // Once unmounted, a second run finishes the job.
    remove_tree(&top).unwrap();
    assert!(!top.exists());
}

/// The bounds, in a child process (the descriptor limit is per process): 100,000 nested
/// directories and a directory of 20,000 entries are removed under RLIMIT_NOFILE = 16, on a
/// thread with a 64 KiB stack.
#[test]
fn deep_and_wide_trees_within_constant_descriptors_and_stack() {
    require_root();
    let s = scratch("bounded");
    mount_tmpfs(&s.0, "size=64m,nr_inodes=200000");
    let deep = s.0.join("deep");
    std::fs::create_dir(&deep).unwrap();
    nest(&deep, 100_000);
    let wide = s.0.join("wide");
    std::fs::create_dir(&wide).unwrap();
    for i in 0..20_000 {
        std::fs::write(wide.join(format!("f{i}")), "").unwrap();
    }
    for i in 0..200 {
        std::fs::create_dir(wide.join(format!("d{i}"))).unwrap();
        std::fs::write(wide.join(format!("d{i}/x")), "").unwrap();
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "remove::tests::bounded_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KILN_REMOVE_CHILD", &s.0)
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = !deep.exists() && !wide.exists();
    umount(&s.0);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("bounded removal: ok"), "{text}");
    assert!(gone, "{text}");
}

#[test]
#[ignore = "run by deep_and_wide_trees_within_constant_descriptors_and_stack in a child process"]
fn bounded_child() {
    let dir = PathBuf::from(std::env::var_os("KILN_REMOVE_CHILD").expect("KILN_REMOVE_CHILD"));
    let limit = libc::rlimit {
        rlim_cur: 16,
        rlim_max: 16,
    };
    // SAFETY: setrlimit reads one rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let worker = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            remove_tree(&dir.join("deep"))?;
            remove_tree(&dir.join("wide"))
        })
        .unwrap();
    match worker.join().unwrap() {
        Ok(()) => println!("bounded removal: ok"),
        Err(e) => panic!("bounded removal failed: {e}"),
    }
}

#[test]
fn what_cannot_be_removed_is_counted_and_named_and_the_rest_goes() {
    require_root();
    let s = scratch("stuck");
    let top = s.0.join("tree");
    std::fs::create_dir_all(top.join("keep")).unwrap();
    std::fs::write(top.join("keep/a"), "").unwrap();
    std::fs::write(top.join("other"), "").unwrap();
    // An immutable file cannot be removed, even by root.
    let status = Command::new("chattr")
        .arg("+i")
        .arg(top.join("keep/a"))
        .status()
        .expect("chattr (e2fsprogs)");
    assert!(status.success());
    let e = remove_tree(&top).unwrap_err();
    let _ = Command::new("chattr")
        .arg("-i")
        .arg(top.join("keep/a"))
        .status();
    let text = e.to_string();
    assert!(
        matches!(e, RemoveError::Incomplete { left: 1, .. }),
        "{text}"
    );
    assert!(text.contains("\"a\" (depth 1): cannot remove"), "{text}");
    assert!(!top.join("other").exists());
    remove_tree(&top).unwrap();
}

#[test]
fn names_in_messages_are_escaped_and_short() {
    assert_eq!(shown_name(b"a\nb\xff"), "\"a\\nb\\xff\"");
    let long = shown_name(&[b'x'; 300]);
    assert!(long.ends_with("...\"") && long.len() < 80, "{long}");
}

#[test]
fn malformed_listings_stop_the_parse() {
    // A record shorter than its header, and one whose length runs past the buffer.
    let mut buf = vec![0u8; 24];
    buf[16..18].copy_from_slice(&10u16.to_ne_bytes());
    assert_eq!(entries(&buf).count(), 0);
    buf[16..18].copy_from_slice(&400u16.to_ne_bytes());
    assert_eq!(entries(&buf).count(), 0);
    // A well-formed one.
    let mut good = vec![0u8; 24];
    good[0..8].copy_from_slice(&7u64.to_ne_bytes());
    good[8..16].copy_from_slice(&99i64.to_ne_bytes());
    good[16..18].copy_from_slice(&24u16.to_ne_bytes());
    good[18] = libc::DT_REG;
    good[19] = b'f';
    let e: Vec<_> = entries(&good).collect();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].ino, e[0].next, e[0].name), (7, 99, &b"f"[..]));
}
