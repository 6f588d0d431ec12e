//! The jail process's resource limits, identity and capabilities.
//!
//! Order matters: rlimits are lowered while still root (they can only go down: the jailer
//! refuses a value above the current hard limit, checked before anything is built); the
//! capability bounding set and the ambient/inheritable sets are cleared while CAP_SETPCAP is
//! still held; then supplementary groups are cleared and gid/uid changed (which empties the
//! permitted and effective sets); what is left is cleared explicitly and verified; finally
//! no_new_privs, so no exec can ever give anything back. With `--userns` the process then
//! enters a user namespace mapping only uid:gid, and drops the capabilities it gets there.
//!
//! Raw calls: `prctl(PR_CAPBSET_DROP)` and `prctl(PR_CAPBSET_READ)` over every capability
//! number the kernel knows (nix has no wrapper; the `caps` crate only knows the capabilities
//! of its own release).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

use caps::CapSet;
use nix::fcntl::{openat, OFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::{getppid, setgroups, setresgid, setresuid, Gid, Pid, Uid};

use crate::args::Rlimit;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("--resource-limit {name}={value}: above the current hard limit {hard}; the jailer only lowers limits")]
    RlimitRaise {
        name: &'static str,
        value: u64,
        hard: u64,
    },
    #[error("--resource-limit {name}={value}: {source}")]
    Rlimit {
        name: &'static str,
        value: u64,
        source: io::Error,
    },
    #[error("clearing supplementary groups: {0}")]
    Setgroups(#[source] io::Error),
    #[error("--gid {gid}: setresgid: {source}")]
    Setgid { gid: u32, source: io::Error },
    #[error("--uid {uid}: setresuid: {source}")]
    Setuid { uid: u32, source: io::Error },
    #[error("dropping capability {cap} from the bounding set: {source}")]
    Bounding { cap: u32, source: io::Error },
    #[error("clearing the {set} capability set: {source}")]
    Clear {
        set: &'static str,
        source: caps::errors::CapsError,
    },
    #[error("capabilities left after dropping them: {left}")]
    Left { left: String },
    #[error("prctl(PR_SET_NO_NEW_PRIVS): {0}")]
    NoNewPrivs(#[source] io::Error),
    #[error("prctl(PR_SET_PDEATHSIG): {0}")]
    DeathSignal(#[source] io::Error),
    #[error("prctl(PR_SET_DUMPABLE): {0}")]
    Dumpable(#[source] io::Error),
    #[error("--userns: opening /proc/thread-self: {0}")]
    ProcSelf(#[source] io::Error),
    #[error("--userns: unshare(CLONE_NEWUSER): {0}")]
    UnshareUser(#[source] io::Error),
    #[error("--userns: writing {file}: {source}")]
    IdMap {
        file: &'static str,
        source: io::Error,
    },
}

fn resource(r: Rlimit) -> Resource {
    match r {
        Rlimit::NoFile => Resource::RLIMIT_NOFILE,
        Rlimit::Fsize => Resource::RLIMIT_FSIZE,
        Rlimit::Memlock => Resource::RLIMIT_MEMLOCK,
        Rlimit::Nproc => Resource::RLIMIT_NPROC,
        Rlimit::Core => Resource::RLIMIT_CORE,
    }
}

/// Refuses any limit above the current hard limit (checked before the jail is built).
pub fn check_rlimits(limits: &BTreeMap<Rlimit, u64>) -> Result<(), PrivilegeError> {
    for (&r, &value) in limits {
        let (_, hard) = getrlimit(resource(r)).map_err(|e| PrivilegeError::Rlimit {
            name: r.flag_name(),
            value: 0,
            source: e.into(),
        })?;
        if value > hard {
            return Err(PrivilegeError::RlimitRaise {
                name: r.flag_name(),
                value,
                hard,
            });
        }
    }
    Ok(())
}

/// Sets soft and hard limit of each resource to its value.
pub fn set_rlimits(limits: &BTreeMap<Rlimit, u64>) -> Result<(), PrivilegeError> {
    for (&r, &value) in limits {
        setrlimit(resource(r), value, value).map_err(|e| PrivilegeError::Rlimit {
            name: r.flag_name(),
            value,
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Empties the bounding set (every capability the kernel knows, not only those this
/// build knows), the ambient and the inheritable sets.
fn drop_bounding_ambient_inheritable() -> Result<(), PrivilegeError> {
    for cap in 0..64u32 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number; EINVAL marks the end.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if ret == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(PrivilegeError::Bounding { cap, source: err });
        }
    }
    for (set, name) in [
        (CapSet::Ambient, "ambient"),
        (CapSet::Inheritable, "inheritable"),
    ] {
        caps::clear(None, set).map_err(|source| PrivilegeError::Clear { set: name, source })?;
    }
    Ok(())
}

fn clear_and_verify() -> Result<(), PrivilegeError> {
    for (set, name) in [
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Ambient, "ambient"),
    ] {
        caps::clear(None, set).map_err(|source| PrivilegeError::Clear { set: name, source })?;
    }
    let mut left = Vec::new();
    for (set, name) in [
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Ambient, "ambient"),
    ] {
        match caps::read(None, set) {
            Ok(s) if s.is_empty() => {}
            Ok(s) => left.push(format!("{name} {s:?}")),
            Err(e) => left.push(format!("{name} unreadable ({e})")),
        }
    }
    for cap in 0..64u32 {
        // SAFETY: PR_CAPBSET_READ takes a capability number and only reads.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
        if ret == -1 {
            break;
        }
        if ret == 1 {
            left.push(format!("bounding {cap}"));
        }
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Left {
            left: left.join(", "),
        })
    }
}

/// Becomes uid:gid with no supplementary group and no capability in any set.
pub fn drop_to(uid: u32, gid: u32) -> Result<(), PrivilegeError> {
    drop_bounding_ambient_inheritable()?;
    setgroups(&[]).map_err(|e| PrivilegeError::Setgroups(e.into()))?;
    // glibc applies set*id to every thread; the process is single-threaded anyway.
    let g = Gid::from_raw(gid);
    setresgid(g, g, g).map_err(|e| PrivilegeError::Setgid {
        gid,
        source: e.into(),
    })?;
    let u = Uid::from_raw(uid);
    setresuid(u, u, u).map_err(|e| PrivilegeError::Setuid {
        uid,
        source: e.into(),
    })?;
    clear_and_verify()
}

/// No exec can grant privileges from now on (setuid bits, file capabilities).
pub fn no_new_privs() -> Result<(), PrivilegeError> {
    prctl::set_no_new_privs().map_err(|e| PrivilegeError::NoNewPrivs(e.into()))
}

/// Dies with SIGKILL when the supervisor dies (set after the identity change, which clears
/// it). Returns false when the parent is already gone.
pub fn die_with_parent(parent: Pid) -> Result<bool, PrivilegeError> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| PrivilegeError::DeathSignal(e.into()))?;
    Ok(getppid() == parent)
}

fn set_dumpable(on: bool) -> Result<(), PrivilegeError> {
    prctl::set_dumpable(on).map_err(|e| PrivilegeError::Dumpable(e.into()))
}

/// `/proc/thread-self`, opened before pivot_root for `--userns` (the jail has no /proc).
pub fn open_proc_self() -> Result<OwnedFd, PrivilegeError> {
    File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open("/proc/thread-self")
        .map(OwnedFd::from)
        .map_err(PrivilegeError::ProcSelf)
}

fn write_id_file(
    proc_self: &OwnedFd,
    file: &'static str,
    text: &str,
) -> Result<(), PrivilegeError> {
    let err = |source| PrivilegeError::IdMap { file, source };
    let fd = openat(
        proc_self,
        file,
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    File::from(fd).write_all(text.as_bytes()).map_err(err)
}

/// `--userns`: after `drop_to`, enters a new user namespace where only uid:gid are mapped
/// (to themselves), forbids user namespaces inside it (`user.max_user_namespaces` = 0 in
/// it: the jail's second layer besides seccomp, as the chroot is without `--userns`), and
/// drops the full capability set a new user namespace hands out.
pub fn enter_user_namespace(uid: u32, gid: u32, proc_self: &OwnedFd) -> Result<(), PrivilegeError> {
    // The id map files of a non-dumpable process belong to root; the jail's uid must be
    // able to open its own.
    set_dumpable(true)?;
    // The process is single-threaded, as a new user namespace requires.
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| PrivilegeError::UnshareUser(e.into()))?;
    write_id_file(proc_self, "setgroups", "deny")?;
    write_id_file(proc_self, "uid_map", &format!("{uid} {uid} 1\n"))?;
    write_id_file(proc_self, "gid_map", &format!("{gid} {gid} 1\n"))?;
    // /proc/thread-self is /proc/<pid>/task/<tid>: the sysctl is three levels up. The
    // limit written is the new namespace's own (CAP_SYS_RESOURCE in it).
    write_id_file(proc_self, "../../../sys/user/max_user_namespaces", "0")?;
    drop_bounding_ambient_inheritable()?;
    clear_and_verify()?;
    set_dumpable(false)
}
