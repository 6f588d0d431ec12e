//! Step 6: resource limits, identity and capabilities.
//!
//! Order matters: rlimits are lowered while still root (they can only go down: the jailer
//! refuses a value above the current hard limit, checked before anything is built); the
//! capability bounding set and the ambient/inheritable sets are cleared while CAP_SETPCAP is
//! still held; then supplementary groups are cleared and gid/uid changed (which empties the
//! permitted and effective sets); what is left is cleared explicitly and verified; finally
//! no_new_privs, so no exec can ever give anything back. With `--userns` the process then
//! enters a user namespace mapping only uid:gid, and drops the capabilities it gets there.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use caps::CapSet;

use crate::args::Rlimit;
use crate::sys::{cstr, cvt};

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

fn resource(r: Rlimit) -> libc::__rlimit_resource_t {
    match r {
        Rlimit::NoFile => libc::RLIMIT_NOFILE,
        Rlimit::Fsize => libc::RLIMIT_FSIZE,
        Rlimit::Memlock => libc::RLIMIT_MEMLOCK,
        Rlimit::Nproc => libc::RLIMIT_NPROC,
        Rlimit::Core => libc::RLIMIT_CORE,
    }
}

fn getrlimit(r: Rlimit) -> Result<libc::rlimit, PrivilegeError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which lives for the call.
    cvt(unsafe { libc::getrlimit(resource(r), &mut lim) }).map_err(|source| {
        PrivilegeError::Rlimit {
            name: r.flag_name(),
            value: 0,
            source,
        }
    })?;
    Ok(lim)
}

/// Refuses any limit above the current hard limit (checked before the jail is built).
pub fn check_rlimits(limits: &BTreeMap<Rlimit, u64>) -> Result<(), PrivilegeError> {
    for (&r, &value) in limits {
        let hard = getrlimit(r)?.rlim_max;
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
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads one rlimit from `lim`, which lives for the call.
        cvt(unsafe { libc::setrlimit(resource(r), &lim) }).map_err(|source| {
            PrivilegeError::Rlimit {
                name: r.flag_name(),
                value,
                source,
            }
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
    // SAFETY: setgroups with size 0 and a null list clears the supplementary groups.
    cvt(unsafe { libc::setgroups(0, std::ptr::null()) }).map_err(PrivilegeError::Setgroups)?;
    // SAFETY: setresgid/setresuid take plain ids. glibc applies them to every thread; the
    // process is single-threaded anyway.
    cvt(unsafe { libc::setresgid(gid, gid, gid) })
        .map_err(|source| PrivilegeError::Setgid { gid, source })?;
    // SAFETY: as above.
    cvt(unsafe { libc::setresuid(uid, uid, uid) })
        .map_err(|source| PrivilegeError::Setuid { uid, source })?;
    clear_and_verify()
}

/// No exec can grant privileges from now on (setuid bits, file capabilities).
pub fn no_new_privs() -> Result<(), PrivilegeError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes an integer flag.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(PrivilegeError::NoNewPrivs)?;
    Ok(())
}

/// Dies with SIGKILL when the supervisor dies (set after the identity change, which clears
/// it). Returns false when the parent is already gone.
pub fn die_with_parent(parent: libc::pid_t) -> Result<bool, PrivilegeError> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })
        .map_err(PrivilegeError::DeathSignal)?;
    // SAFETY: getppid has no preconditions.
    Ok(unsafe { libc::getppid() } == parent)
}

fn set_dumpable(on: bool) -> Result<(), PrivilegeError> {
    // SAFETY: PR_SET_DUMPABLE takes 0 or 1.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(on), 0, 0, 0) })
        .map_err(PrivilegeError::Dumpable)?;
    Ok(())
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
    let name = cstr(file).map_err(err)?;
    // SAFETY: openat with a directory descriptor kept open by `proc_self` and a
    // NUL-terminated relative name; the result is owned right away.
    let fd = cvt(unsafe {
        libc::openat(
            proc_self.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    })
    .map_err(err)?;
    // SAFETY: `fd` was just returned by openat and is owned by nothing else.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(text.as_bytes()).map_err(err)
}

/// `--userns`: after `drop_to`, enters a new user namespace where only uid:gid are mapped
/// (to themselves), and drops the full capability set a new user namespace hands out.
pub fn enter_user_namespace(uid: u32, gid: u32, proc_self: &OwnedFd) -> Result<(), PrivilegeError> {
    // The id map files of a non-dumpable process belong to root; the jail's uid must be
    // able to open its own.
    set_dumpable(true)?;
    // SAFETY: unshare takes only flags; the process is single-threaded.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWUSER) }).map_err(PrivilegeError::UnshareUser)?;
    write_id_file(proc_self, "setgroups", "deny")?;
    write_id_file(proc_self, "uid_map", &format!("{uid} {uid} 1\n"))?;
    write_id_file(proc_self, "gid_map", &format!("{gid} {gid} 1\n"))?;
    drop_bounding_ambient_inheritable()?;
    clear_and_verify()?;
    set_dumpable(false)
}
