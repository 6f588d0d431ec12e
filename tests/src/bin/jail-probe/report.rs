//! What the probe sees from inside the jail, reported before any action: identity,
//! capabilities, no_new_privs and seccomp, host name, environment, the file system's `/`
//! and `/dev`, cgroup, rlimits, CPU affinity, working directory and open descriptors.

use kiln_tests::errno::{errno, errno_name, io_name};

use crate::say;

fn list(dir: &str) -> String {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names.join(",")
        }
        Err(e) => format!("error:{}", io_name(&e)),
    }
}

fn describe_node(path: &str) -> String {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            let kind = if m.file_type().is_char_device() {
                "c"
            } else if m.is_dir() {
                "d"
            } else if m.is_file() {
                "f"
            } else {
                "?"
            };
            let rdev = m.rdev();
            format!(
                "{kind}:{}:{}:{}:{}:{:o}",
                libc::major(rdev),
                libc::minor(rdev),
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            )
        }
        Err(e) => format!("error:{}", io_name(&e)),
    }
}

fn dev_listing() -> String {
    let mut out = Vec::new();
    let mut stack = vec!["/dev".to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            out.push(format!("{dir}=unreadable"));
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let path = format!("{dir}/{}", e.file_name().to_string_lossy());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(format!("{path}={}", describe_node(&path)));
        }
    }
    out.sort();
    out.join(";")
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capabilities() -> Option<(u64, u64, u64)> {
    let mut header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget reads the header and writes two CapData entries (version 3).
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if ret != 0 {
        return None;
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Some((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

fn cap_mask(option: libc::c_int, extra: libc::c_ulong) -> u64 {
    let mut mask = 0u64;
    for cap in 0..64u64 {
        // SAFETY: PR_CAPBSET_READ / PR_CAP_AMBIENT(IS_SET) only read.
        let r = unsafe {
            if extra == 0 {
                libc::prctl(option, cap, 0, 0, 0)
            } else {
                libc::prctl(option, extra, cap, 0, 0)
            }
        };
        if r < 0 {
            break;
        }
        if r == 1 {
            mask |= 1 << cap;
        }
    }
    mask
}

pub fn report(argv: &[String], start_delay: Option<u64>) {
    say("argv", argv.join(" "));
    if let Some(d) = start_delay {
        say("start_delay_us", d);
    }
    // SAFETY: getpid/getppid have no preconditions.
    say("pid", unsafe { libc::getpid() });
    // SAFETY: as above.
    say("ppid", unsafe { libc::getppid() });
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid/getresgid write three ids each.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    say("uid", format!("{r},{e},{s}"));
    // SAFETY: as above.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    say("gid", format!("{r},{e},{s}"));
    let mut groups = [0 as libc::gid_t; 64];
    // SAFETY: getgroups writes at most 64 entries.
    let n = unsafe { libc::getgroups(64, groups.as_mut_ptr()) };
    let groups: Vec<String> = groups
        .iter()
        .take(usize::try_from(n).unwrap_or(0))
        .map(|g| g.to_string())
        .collect();
    say("groups", groups.join(","));
    match capabilities() {
        Some((eff, prm, inh)) => {
            say("cap_eff", format!("{eff:x}"));
            say("cap_prm", format!("{prm:x}"));
            say("cap_inh", format!("{inh:x}"));
        }
        None => say("cap_eff", format!("error:{}", errno_name(errno()))),
    }
    say(
        "cap_bnd",
        format!("{:x}", cap_mask(libc::PR_CAPBSET_READ, 0)),
    );
    say(
        "cap_amb",
        format!(
            "{:x}",
            cap_mask(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong
            )
        ),
    );
    // SAFETY: these prctl queries only read.
    say("no_new_privs", unsafe {
        libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
    });
    // SAFETY: as above.
    say("seccomp", unsafe {
        libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0)
    });
    // SAFETY: uname fills a utsname.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::uname(&mut uts) };
    // SAFETY: nodename is NUL-terminated by the kernel.
    let host = unsafe { std::ffi::CStr::from_ptr(uts.nodename.as_ptr()) };
    say("hostname", host.to_string_lossy());
    let env: Vec<String> = std::env::vars_os()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    say("env_count", env.len());
    say("env", env.join(","));
    say("root", list("/"));
    say("dev", dev_listing());
    // The jail has no /proc: membership is checked from outside (/proc/PID/cgroup).
    say(
        "cgroup",
        std::fs::read_to_string("/proc/self/cgroup")
            .map(|c| c.lines().collect::<Vec<_>>().join(";"))
            .unwrap_or_else(|e| format!("error:{}", io_name(&e))),
    );
    say(
        "proc",
        if std::path::Path::new("/proc/self").exists() {
            "present"
        } else {
            "absent"
        },
    );
    for (name, res) in [
        ("nofile", libc::RLIMIT_NOFILE),
        ("fsize", libc::RLIMIT_FSIZE),
        ("memlock", libc::RLIMIT_MEMLOCK),
        ("nproc", libc::RLIMIT_NPROC),
        ("core", libc::RLIMIT_CORE),
    ] {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit.
        unsafe { libc::getrlimit(res, &mut lim) };
        let show = |v: u64| {
            if v == libc::RLIM_INFINITY {
                "unlimited".to_owned()
            } else {
                v.to_string()
            }
        };
        say(
            &format!("rlimit.{name}"),
            format!("{}/{}", show(lim.rlim_cur), show(lim.rlim_max)),
        );
    }
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let cpus: Vec<String> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the set.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .map(|c| c.to_string())
        .collect();
    say("cpus", cpus.join(","));
    say(
        "cwd",
        std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| format!("error:{}", io_name(&e))),
    );
}

/// The descriptors open at start, as a list of numbers.
pub fn open_fds() -> String {
    let mut fds = Vec::new();
    for fd in 0..4096 {
        // SAFETY: F_GETFD only queries a descriptor number.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            fds.push(fd.to_string());
        }
    }
    fds.join(",")
}
