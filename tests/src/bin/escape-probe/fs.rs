//! Files outside the jail: host paths, `..`, `/proc` tricks, `openat2`, file handles (the
//! "shocker" attack), links, directories and FIFOs in `/run`, chroot-in-chroot, writing the
//! jail's own files, executing a file written at run time, setuid files and file
//! capabilities.

use crate::sys::{check, close, cstr, open, verdict, write_all, Fd};
use crate::{Attempt, Ctx, Outcome};

pub const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "fs.etc-shadow",
        what: "read the host's /etc/shadow",
        run: |_| {
            verdict(
                open("/etc/shadow", libc::O_RDONLY, 0),
                true,
                "opened /etc/shadow",
            )
        },
    },
    Attempt {
        name: "fs.proc-1-root",
        what: "reach the host's root through /proc/1/root",
        run: |_| {
            verdict(
                open("/proc/1/root/etc/shadow", libc::O_RDONLY, 0),
                true,
                "opened /proc/1/root/etc/shadow",
            )
        },
    },
    Attempt {
        name: "fs.proc-self-cwd",
        what: "climb out through /proc/self/cwd/..",
        run: |_| {
            verdict(
                open("/proc/self/cwd/../../../../etc/passwd", libc::O_RDONLY, 0),
                true,
                "opened /etc/passwd via /proc/self/cwd",
            )
        },
    },
    Attempt {
        name: "fs.proc-self-fd",
        what: "reopen a descriptor through /proc/self/fd to write outside the jail",
        run: |_| {
            verdict(
                open("/proc/self/fd/1", libc::O_WRONLY, 0),
                true,
                "reopened fd 1 through /proc/self/fd",
            )
        },
    },
    Attempt {
        name: "fs.sys-cgroup",
        what: "read the host's cgroup tree (its own limits, other tenants' cgroups) under /sys",
        run: |_| {
            verdict(
                open("/sys/fs/cgroup", libc::O_RDONLY | libc::O_DIRECTORY, 0),
                true,
                "opened /sys/fs/cgroup",
            )
        },
    },
    Attempt {
        name: "fs.dotdot",
        what: "climb above / with ../../..",
        run: |_| {
            verdict(
                open("/../../../../../../../../etc/passwd", libc::O_RDONLY, 0),
                true,
                "opened /etc/passwd above the jail's root",
            )
        },
    },
    Attempt {
        name: "fs.dotdot-dirfd",
        what: "climb above / with .. relative to a directory descriptor",
        run: dotdot_dirfd,
    },
    Attempt {
        name: "fs.other-tenant",
        what: "open another tenant's file by its host path, through ..",
        run: other_tenant,
    },
    Attempt {
        name: "fs.openat2",
        what: "openat2 with RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV on a host path above /",
        run: openat2,
    },
    Attempt {
        name: "fs.open-by-handle",
        what: "open a host file by its file handle (open_by_handle_at, the 'shocker' attack)",
        run: open_by_handle,
    },
    Attempt {
        name: "fs.write-root",
        what: "create a file in the jail's /",
        run: |_| {
            verdict(
                open("/planted", libc::O_CREAT | libc::O_WRONLY, 0o600),
                true,
                "created /planted",
            )
        },
    },
    Attempt {
        name: "fs.overwrite-vmm",
        what: "open the jail's VMM binary for writing",
        run: |ctx| {
            verdict(
                open(&ctx.exe, libc::O_WRONLY, 0),
                true,
                "opened the VMM binary for writing",
            )
        },
    },
    Attempt {
        name: "fs.read-pidfile",
        what: "read the jail's pid file (the VMM's host pid)",
        run: |ctx| {
            verdict(
                open(&format!("{}.pid", ctx.exe), libc::O_RDONLY, 0),
                true,
                "opened the pid file",
            )
        },
    },
    Attempt {
        name: "fs.write-pidfile",
        what: "rewrite the jail's pid file (so that the host signals or cleans up another process)",
        run: |ctx| {
            verdict(
                open(&format!("{}.pid", ctx.exe), libc::O_WRONLY, 0),
                true,
                "opened the pid file for writing",
            )
        },
    },
    Attempt {
        name: "fs.mkdir-dev",
        what: "create a directory in /dev",
        run: |_| {
            let p = cstr("/dev/planted");
            // SAFETY: a NUL-terminated path that outlives the call.
            verdict(
                unsafe { libc::syscall(libc::SYS_mkdir, p.as_ptr(), 0o700) },
                false,
                "created /dev/planted",
            )
        },
    },
    Attempt {
        name: "fs.symlink",
        what: "plant a symbolic link in /run (a trap for host processes that follow it)",
        run: |_| {
            let (target, link) = (cstr("/etc/shadow"), cstr("/run/planted-link"));
            // SAFETY: NUL-terminated paths that outlive the call.
            verdict(
                unsafe { libc::syscall(libc::SYS_symlink, target.as_ptr(), link.as_ptr()) },
                false,
                "created a symbolic link in /run",
            )
        },
    },
    Attempt {
        name: "fs.mkdir-run",
        what: "create a directory in /run (the start of a tree deep enough to defeat a recursive cleanup)",
        run: |_| {
            let p = cstr("/run/planted-dir");
            // SAFETY: a NUL-terminated path that outlives the call.
            verdict(
                unsafe { libc::syscall(libc::SYS_mkdir, p.as_ptr(), 0o700) },
                false,
                "created a directory in /run",
            )
        },
    },
    Attempt {
        name: "fs.mkfifo-run",
        what: "create a FIFO in /run (a host process opening it would block)",
        run: |_| {
            let p = cstr("/run/planted-fifo");
            // SAFETY: a NUL-terminated path; plain integers.
            verdict(
                unsafe {
                    libc::syscall(
                        libc::SYS_mknodat,
                        libc::AT_FDCWD,
                        p.as_ptr(),
                        libc::S_IFIFO | 0o600,
                        0,
                    )
                },
                false,
                "created a FIFO in /run",
            )
        },
    },
    Attempt {
        name: "fs.hardlink",
        what: "hard-link the VMM binary into /run",
        run: |ctx| {
            let (old, new) = (cstr(&ctx.exe), cstr("/run/planted-hardlink"));
            // SAFETY: NUL-terminated paths that outlive the call.
            verdict(
                unsafe { libc::syscall(libc::SYS_link, old.as_ptr(), new.as_ptr()) },
                false,
                "hard-linked the VMM into /run",
            )
        },
    },
    Attempt {
        name: "fs.chroot-escape",
        what:
            "the classic chroot escape: chroot into a subdirectory, chdir .. repeatedly, chroot .",
        run: chroot_escape,
    },
    Attempt {
        name: "fs.exec-from-run",
        what: "write a program into /run and execute it",
        run: exec_from_run,
    },
    Attempt {
        name: "fs.setuid-files",
        what: "find a setuid or setgid file anywhere in the jail",
        run: |_| setuid_scan(),
    },
    Attempt {
        name: "fs.file-caps",
        what: "give a file in /run file capabilities (security.capability xattr)",
        run: file_caps,
    },
];

fn dotdot_dirfd(_: &Ctx) -> Outcome {
    let dir = match Fd::from_ret(open("/", libc::O_PATH | libc::O_DIRECTORY, 0)) {
        Ok(d) => d,
        Err(e) => return Outcome::Error(format!("open /: {e}")),
    };
    let p = cstr("../../../../../etc/passwd");
    // SAFETY: openat relative to a directory descriptor we own; NUL-terminated path.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat,
            dir.0,
            p.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    verdict(ret, true, "opened /etc/passwd above the jail's root")
}

fn other_tenant(ctx: &Ctx) -> Outcome {
    let Some(decoy) = ctx.decoy.as_deref() else {
        return Outcome::Error("no --decoy".into());
    };
    // Every way of naming it from inside: as is, and with .. in front.
    let mut errors = Vec::new();
    for path in [decoy.to_owned(), format!("/../../../../../..{decoy}")] {
        let ret = open(&path, libc::O_RDONLY, 0);
        match check(ret) {
            Ok(fd) => {
                close(fd);
                return Outcome::Escaped(format!("opened {path}"));
            }
            Err(e) => errors.push(e),
        }
    }
    errors.dedup();
    Outcome::Blocked(errors.join(","))
}

/// struct open_how (openat2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;

fn openat2(_: &Ctx) -> Outcome {
    let how = OpenHow {
        flags: u64::try_from(libc::O_RDONLY | libc::O_CLOEXEC).unwrap_or(0),
        mode: 0,
        resolve: RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV,
    };
    let p = cstr("/../../../etc/shadow");
    // SAFETY: a NUL-terminated path and an open_how of the size given, both outliving the
    // call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            p.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    verdict(ret, true, "opened /etc/shadow with openat2")
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

fn open_by_handle(ctx: &Ctx) -> Outcome {
    let Some((kind, hex)) = ctx.handle.as_deref().and_then(|h| h.split_once(':')) else {
        return Outcome::Error("no --handle TYPE:HEX".into());
    };
    let (Ok(kind), Some(bytes)) = (kind.parse::<i32>(), parse_hex(hex)) else {
        return Outcome::Error("bad --handle".into());
    };
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut handle = Vec::with_capacity(8 + bytes.len());
    handle.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(0).to_ne_bytes());
    handle.extend_from_slice(&kind.to_ne_bytes());
    handle.extend_from_slice(&bytes);
    // Any descriptor on the same file system serves as the mount: the jail's root is a
    // bind mount of a directory of the host's file system.
    let mount = match Fd::from_ret(open("/", libc::O_RDONLY | libc::O_DIRECTORY, 0)) {
        Ok(d) => d,
        Err(e) => return Outcome::Error(format!("open /: {e}")),
    };
    // SAFETY: `handle` is a complete struct file_handle that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.0,
            handle.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    verdict(ret, true, "opened a host file by its handle")
}

fn chroot_escape(_: &Ctx) -> Outcome {
    // Any subdirectory will do: one that exists (the jail cannot make directories).
    let dir = cstr("/dev/net");
    // SAFETY: NUL-terminated paths; plain syscalls.
    if let Err(e) = check(unsafe { libc::syscall(libc::SYS_chroot, dir.as_ptr()) }) {
        return Outcome::Blocked(e);
    }
    let up = cstr("..");
    for _ in 0..16 {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_chdir, up.as_ptr()) };
    }
    let dot = cstr(".");
    // SAFETY: as above.
    if let Err(e) = check(unsafe { libc::syscall(libc::SYS_chroot, dot.as_ptr()) }) {
        return Outcome::Blocked(format!("second chroot: {e}"));
    }
    match check(open("/etc/passwd", libc::O_RDONLY, 0)) {
        Ok(fd) => {
            close(fd);
            Outcome::Escaped("chroot escape reached the host's /etc/passwd".into())
        }
        Err(e) => Outcome::Escaped(format!("chroot succeeded twice (then /etc/passwd: {e})")),
    }
}

/// A complete static x86-64 program (ELF header, one PT_LOAD segment, code): writes its
/// `result ... escaped` line and `done` on stdout and exits 0. Small enough for any `/run`.
fn tiny_program(name: &str) -> Vec<u8> {
    let message = format!("result {name} escaped a new program image was executed\ndone\n");
    const BASE: u64 = 0x40_0000;
    const CODE: u64 = 64 + 56;
    let mut code: Vec<u8> = Vec::new();
    // mov eax, 1 (write); mov edi, 1; lea rsi, [rip + msg]; mov edx, len; syscall
    code.extend([0xb8, 1, 0, 0, 0, 0xbf, 1, 0, 0, 0, 0x48, 0x8d, 0x35]);
    // The message follows the 16 bytes of code after the lea.
    code.extend(16u32.to_le_bytes());
    code.push(0xba);
    code.extend(u32::try_from(message.len()).unwrap_or(0).to_le_bytes());
    code.extend([0x0f, 0x05]);
    // mov eax, 231 (exit_group); xor edi, edi; syscall
    code.extend([0xb8, 231, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05]);
    code.extend(message.as_bytes());
    let size = CODE + u64::try_from(code.len()).unwrap_or(0);
    let mut elf: Vec<u8> = Vec::new();
    elf.extend([0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(62u16.to_le_bytes()); // x86-64
    elf.extend(1u32.to_le_bytes());
    elf.extend((BASE + CODE).to_le_bytes()); // entry
    elf.extend(64u64.to_le_bytes()); // program headers
    elf.extend(0u64.to_le_bytes()); // no section headers
    elf.extend(0u32.to_le_bytes());
    elf.extend(64u16.to_le_bytes());
    elf.extend(56u16.to_le_bytes());
    elf.extend(1u16.to_le_bytes());
    elf.extend([0u8; 6]);
    elf.extend(1u32.to_le_bytes()); // PT_LOAD
    elf.extend(5u32.to_le_bytes()); // R+X
    elf.extend(0u64.to_le_bytes());
    elf.extend(BASE.to_le_bytes());
    elf.extend(BASE.to_le_bytes());
    elf.extend(size.to_le_bytes());
    elf.extend(size.to_le_bytes());
    elf.extend(0x1000u64.to_le_bytes());
    elf.extend(code);
    elf
}

fn exec_from_run(_: &Ctx) -> Outcome {
    let image = tiny_program("fs.exec-from-run");
    let path = "/run/planted-exe";
    let fd = match Fd::from_ret(open(
        path,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0o700,
    )) {
        Ok(fd) => fd,
        Err(e) => return Outcome::Blocked(format!("create: {e}")),
    };
    if let Err(e) = write_all(&fd, &image) {
        return Outcome::Blocked(format!("write: {e}"));
    }
    drop(fd);
    let p = cstr(path);
    let args = [cstr(path), cstr("--exec-marker"), cstr("fs.exec-from-run")];
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: path, argv and envp are NUL-terminated and outlive the call; on success the
    // new image reports and ends the process.
    let ret = unsafe { libc::syscall(libc::SYS_execve, p.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    // The file stays: the jail may not remove files (the attempt has a jail of its own).
    verdict(ret, false, "executed a program written at run time")
}

fn setuid_scan() -> Outcome {
    let mut found = Vec::new();
    let mut stack = vec![std::path::PathBuf::from("/")];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            use std::os::unix::fs::MetadataExt;
            if m.is_dir() {
                stack.push(p);
            } else if m.mode() & 0o6000 != 0 {
                found.push(p.display().to_string());
            }
        }
    }
    if found.is_empty() {
        Outcome::Blocked(format!("NONE among {seen} entries"))
    } else {
        Outcome::Escaped(format!("setuid/setgid files: {}", found.join(",")))
    }
}

fn file_caps(_: &Ctx) -> Outcome {
    let path = "/run/planted-caps";
    match Fd::from_ret(open(path, libc::O_CREAT | libc::O_WRONLY, 0o700)) {
        Ok(fd) => drop(fd),
        Err(e) => return Outcome::Error(format!("create {path}: {e}")),
    }
    // vfs_cap_data revision 2: magic|effective, then (permitted, inheritable) x 2: all caps.
    let mut data = Vec::new();
    data.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    for _ in 0..2 {
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
    }
    let (p, name) = (cstr(path), cstr("security.capability"));
    // SAFETY: NUL-terminated path and name, a buffer of the length given.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_setxattr,
            p.as_ptr(),
            name.as_ptr(),
            data.as_ptr(),
            data.len(),
            0,
        )
    };
    verdict(ret, false, "gave a file every capability")
}
