//! Regaining privileges: becoming root again, raising capabilities, a user namespace (full
//! capabilities inside it), other namespaces, and a thread in new namespaces through
//! `clone` with CLONE_THREAD set (the jail's filter used to let any such `clone` through; it
//! now also requires every CLONE_NEW* flag clear).

use crate::sys::{check, long, verdict};
use crate::{Attempt, Outcome};

/// _LINUX_CAPABILITY_VERSION_3.
const CAP_V3: u32 = 0x2008_0522;
const CAP_SYS_ADMIN: libc::c_ulong = 21;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

pub const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "caps.setuid-root",
        what: "become root again (setresuid 0)",
        run: |_| {
            // SAFETY: plain integers.
            let ret = unsafe { libc::syscall(libc::SYS_setresuid, 0, 0, 0) };
            verdict(ret, false, "uid 0")
        },
    },
    Attempt {
        name: "caps.setgid-root",
        what: "join group root again (setresgid 0)",
        run: |_| {
            // SAFETY: plain integers.
            let ret = unsafe { libc::syscall(libc::SYS_setresgid, 0, 0, 0) };
            verdict(ret, false, "gid 0")
        },
    },
    Attempt {
        name: "caps.setgroups",
        what: "add supplementary group 0",
        run: |_| {
            let groups: [libc::gid_t; 1] = [0];
            // SAFETY: a one-element array that outlives the call.
            let ret = unsafe { libc::syscall(libc::SYS_setgroups, 1, groups.as_ptr()) };
            verdict(ret, false, "supplementary group 0")
        },
    },
    Attempt {
        name: "caps.capset",
        what: "raise every capability (capset)",
        run: |_| {
            let mut header = CapHeader {
                version: CAP_V3,
                pid: 0,
            };
            let data = [CapData {
                effective: u32::MAX,
                permitted: u32::MAX,
                inheritable: u32::MAX,
            }; 2];
            // SAFETY: a v3 header and two data entries that outlive the call.
            let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
            verdict(ret, false, "raised capabilities")
        },
    },
    Attempt {
        name: "caps.ambient-raise",
        what: "raise CAP_SYS_ADMIN in the ambient set (prctl, which the filter allows)",
        run: |_| {
            // SAFETY: prctl with integer arguments.
            let ret = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    CAP_SYS_ADMIN,
                    0,
                    0,
                )
            };
            verdict(ret.into(), false, "CAP_SYS_ADMIN in the ambient set")
        },
    },
    Attempt {
        name: "caps.no-new-privs-off",
        what: "clear no_new_privs (so that a setuid exec grants privileges again)",
        run: |_| {
            // SAFETY: prctl with integer arguments.
            let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 0, 0, 0, 0) };
            match check(ret.into()) {
                Err(e) => Outcome::Blocked(e),
                // SAFETY: as above; a query.
                Ok(_) => match unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } {
                    1 => Outcome::Blocked("no_new_privs still set".into()),
                    _ => Outcome::Escaped("no_new_privs cleared".into()),
                },
            }
        },
    },
    Attempt {
        name: "caps.userns",
        what: "create a user namespace (every capability inside it)",
        run: |_| {
            // SAFETY: unshare takes flags only.
            let ret = unsafe { libc::syscall(libc::SYS_unshare, long(libc::CLONE_NEWUSER)) };
            verdict(ret, false, "a new user namespace with every capability in it")
        },
    },
    Attempt {
        name: "caps.unshare-ns",
        what: "new mount and network namespaces (unshare)",
        run: |_| {
            // SAFETY: unshare takes flags only.
            let ret = unsafe {
                libc::syscall(libc::SYS_unshare, long(libc::CLONE_NEWNS | libc::CLONE_NEWNET))
            };
            verdict(ret, false, "new mount and network namespaces")
        },
    },
    Attempt {
        name: "caps.clone-thread-ns",
        what: "a thread in new mount/net/UTS/IPC namespaces (clone with CLONE_THREAD set, as the filter demands of clone)",
        run: |_| clone_thread_ns(),
    },
];

fn clone_thread_ns() -> Outcome {
    // The thread's stack stays allocated for the life of the process: the thread may still
    // be running when this function returns.
    let stack: &'static mut [u8] = Box::leak(vec![0u8; 64 * 1024].into_boxed_slice());
    let top = stack.as_mut_ptr().wrapping_add(stack.len());
    let flags = libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWUTS;
    // CLONE_NEWNS cannot go with CLONE_FS, nor CLONE_NEWIPC with CLONE_SYSVSEM: a second
    // try without them asks for mount and IPC namespaces.
    let alt = libc::CLONE_VM
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWIPC;
    let mut errors = Vec::new();
    for f in [flags, alt] {
        // The raw system call (musl's clone() wrapper refuses some flag sets itself). Every
        // layer refuses these flags, so no child is expected; if one were made it would
        // start on the leaked stack with nothing to return to and crash the probe, which the
        // test reports as an unexpected outcome.
        // SAFETY: the new stack is leaked memory nothing else uses; no child is expected.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::c_long::from(f),
                top,
                0usize,
                0usize,
                0usize,
            )
        };
        match check(ret) {
            Ok(_) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                return Outcome::Escaped("a thread in new namespaces".into());
            }
            Err(e) => errors.push(e),
        }
    }
    errors.dedup();
    Outcome::Blocked(errors.join(","))
}
