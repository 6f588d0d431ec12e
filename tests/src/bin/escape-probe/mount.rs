//! Mounting: a new file system over /run, /proc to see the host's processes, the read-only
//! root made writable, the root unmounted, pivot_root, and the new mount API.

use crate::sys::{cstr, verdict};
use crate::{Attempt, Outcome};

fn mount(source: &str, target: &str, fstype: Option<&str>, flags: libc::c_ulong) -> Outcome {
    let (s, t) = (cstr(source), cstr(target));
    let f = fstype.map(cstr);
    let fptr = f.as_ref().map_or(std::ptr::null(), |f| f.as_ptr());
    // SAFETY: NUL-terminated strings (or null) that outlive the call; no data argument.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount,
            s.as_ptr(),
            t.as_ptr(),
            fptr,
            flags,
            std::ptr::null::<libc::c_void>(),
        )
    };
    verdict(ret, false, &format!("mounted {target}"))
}

/// struct mount_attr.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

pub const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "mount.tmpfs",
        what: "mount a tmpfs over /run",
        run: |_| mount("none", "/run", Some("tmpfs"), 0),
    },
    Attempt {
        name: "mount.proc",
        what: "mount /proc (to see and reach host processes)",
        run: |_| mount("proc", "/run", Some("proc"), 0),
    },
    Attempt {
        name: "mount.remount-rw",
        what: "remount the read-only root read-write",
        run: |_| mount("none", "/", None, libc::MS_REMOUNT | libc::MS_BIND),
    },
    Attempt {
        name: "mount.umount-root",
        what: "detach the jail's root (umount2 MNT_DETACH) to uncover what is below",
        run: |_| {
            let p = cstr("/");
            // SAFETY: a NUL-terminated path; plain flags.
            let ret = unsafe { libc::syscall(libc::SYS_umount2, p.as_ptr(), libc::MNT_DETACH) };
            verdict(ret, false, "unmounted the jail's root")
        },
    },
    Attempt {
        name: "mount.pivot-root",
        what: "pivot_root again",
        run: |_| {
            let p = cstr(".");
            // SAFETY: NUL-terminated paths that outlive the call.
            let ret = unsafe { libc::syscall(libc::SYS_pivot_root, p.as_ptr(), p.as_ptr()) };
            verdict(ret, false, "pivoted the root")
        },
    },
    Attempt {
        name: "mount.fsopen",
        what: "create a file system context with the new mount API (fsopen)",
        run: |_| {
            let p = cstr("tmpfs");
            // SAFETY: a NUL-terminated name; plain flags.
            let ret = unsafe { libc::syscall(libc::SYS_fsopen, p.as_ptr(), 0) };
            verdict(ret, true, "opened a tmpfs context")
        },
    },
    Attempt {
        name: "mount.open-tree",
        what: "clone the mount tree of / (open_tree OPEN_TREE_CLONE)",
        run: |_| {
            let p = cstr("/");
            // SAFETY: a NUL-terminated path; plain flags.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    OPEN_TREE_CLONE | AT_RECURSIVE,
                )
            };
            verdict(ret, true, "cloned the mount tree")
        },
    },
    Attempt {
        name: "mount.setattr",
        what: "clear the read-only flag of / with mount_setattr",
        run: |_| {
            let attr = MountAttr {
                attr_set: 0,
                attr_clr: MOUNT_ATTR_RDONLY,
                propagation: 0,
                userns_fd: 0,
            };
            let p = cstr("/");
            // SAFETY: a NUL-terminated path and a mount_attr of the size given.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    0,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                )
            };
            verdict(ret, false, "made / writable")
        },
    },
];
