//! The jail process's Landlock ruleset, which confines the VMM to the jail's own files.
//!
//! Landlock rules follow the file hierarchy, not path names: even a process that obtains a
//! descriptor of a directory outside the jail (leaked, or passed over a socket) cannot open
//! anything through it. Allowed, and nothing else:
//!
//! | path (inside the jail)          | access                                          |
//! |---------------------------------|-------------------------------------------------|
//! | `/` and below                   | list directories, read files                    |
//! | `/<exec-name>`                  | execute, read                                   |
//! | `/dev/kvm`, `/dev/net/tun`, `/dev/userfaultfd` | read, write, device ioctls       |
//! | `/dev/urandom`                  | read                                            |
//! | `/run` and below                | create regular files and sockets; read, write   |
//! | `--bind-ro` targets             | read (and list)                                 |
//! | `--bind-rw` files               | read, write                                     |
//! | `--bind-rw` directories         | read, write the files in them; create sockets   |
//! | profile `landlock.paths`        | `ro`: read; `rw`: read, write, truncate, create and remove files, sockets, directories |
//!
//! Reading everything under `/` is what Firecracker's jail staging needs: the orchestrator
//! hard-links or copies the kernel and disks into the jail's root, before the jailer starts
//! or after, and the VMM opens them by their path in the jail. Nothing under `/` outside
//! `/run`, the device nodes and `--bind-rw` targets can be written (the root is also mounted
//! read-only), and the jailer's own pid file is root's only (mode 0600). Outside the root
//! nothing is reachable at all.
//!
//! Only what the VMM makes: its API socket and vsock sockets (`/run`, or a writable
//! directory such as the worker's vsock directory), and the log, metrics and serial-output
//! files the API names (created only in `/run`, whose tmpfs bounds them; in a bind they
//! must exist already). Never a directory, a FIFO, a device node or a symbolic link, no
//! removal, no rename or link across directories (`Refer`), no truncation: a compromised
//! VMM can neither fill a host file system nor plant a tree or a trap for the host's
//! cleanup.
//! | TCP                             | connect/bind only to profile `landlock.tcp_connect`/`tcp_bind` ports |
//!
//! Scopes: no signals to, and no abstract unix sockets of, processes outside the sandbox.
//! The ruleset targets ABI 6 and is best effort on older kernels, but a kernel without
//! Landlock is an error.

use std::path::{Path, PathBuf};

use ::landlock::{
    make_bitflags, Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::args::Config;
use crate::device_nodes;

const TARGET_ABI: ABI = ABI::V6;

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("landlock rule for {path}: {source}")]
    Path {
        path: PathBuf,
        source: ::landlock::PathFdError,
    },
    #[error("building the landlock ruleset: {0}")]
    Ruleset(#[from] ::landlock::RulesetError),
    #[error("landlock is not enforced by this kernel (enable CONFIG_SECURITY_LANDLOCK and lsm=landlock)")]
    NotEnforced,
}

/// A path rule: the jail path, the access on it, and whether it is a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub path: PathBuf,
    pub access: BitFlags<AccessFs>,
}

fn read_only(dir: bool) -> BitFlags<AccessFs> {
    if dir {
        make_bitflags!(AccessFs::{ReadFile | ReadDir})
    } else {
        make_bitflags!(AccessFs::{ReadFile})
    }
}

/// A `--bind-rw` target: its files read and written; in a directory, sockets created.
fn bind_read_write(dir: bool) -> BitFlags<AccessFs> {
    let file = make_bitflags!(AccessFs::{ReadFile | WriteFile});
    if dir {
        file | make_bitflags!(AccessFs::{ReadDir | MakeSock})
    } else {
        file
    }
}

/// `/run`: as a writable directory bind, plus regular files (bounded by its tmpfs).
fn run_access() -> BitFlags<AccessFs> {
    bind_read_write(true) | make_bitflags!(AccessFs::{MakeReg})
}

/// A profile's `rw` path: the operator asked for it, so files and directories may be made
/// and removed below it.
fn profile_read_write() -> BitFlags<AccessFs> {
    make_bitflags!(AccessFs::{ReadFile | WriteFile | Truncate | ReadDir | MakeReg | MakeDir
        | MakeSock | RemoveFile | RemoveDir})
}

/// The path rules of a jail (pure: what the table in the module documentation says).
pub fn path_rules(config: &Config, userfaultfd: bool) -> Vec<PathRule> {
    let dev = make_bitflags!(AccessFs::{ReadFile | WriteFile | IoctlDev});
    let mut rules = vec![
        PathRule {
            path: PathBuf::from("/"),
            access: make_bitflags!(AccessFs::{ReadDir | ReadFile}),
        },
        PathRule {
            path: Path::new("/").join(&config.exec_name),
            access: make_bitflags!(AccessFs::{Execute | ReadFile}),
        },
        PathRule {
            path: PathBuf::from(device_nodes::KVM.0),
            access: dev,
        },
        PathRule {
            path: PathBuf::from(device_nodes::TUN.0),
            access: dev,
        },
        PathRule {
            path: PathBuf::from(device_nodes::URANDOM.0),
            access: make_bitflags!(AccessFs::{ReadFile}),
        },
        PathRule {
            path: PathBuf::from("/run"),
            access: run_access(),
        },
    ];
    if userfaultfd {
        rules.push(PathRule {
            path: PathBuf::from(device_nodes::USERFAULTFD),
            access: dev,
        });
    }
    for b in &config.binds {
        rules.push(PathRule {
            path: b.jail.clone(),
            access: match b.writable {
                // A writable directory may hold the VMM's Unix sockets (the vsock device's
                // `uds_path`, next to the orchestrator's `<uds_path>_<port>`), nothing else
                // new.
                true => bind_read_write(b.is_dir),
                false => read_only(b.is_dir),
            },
        });
    }
    for (path, writable) in &config.landlock.paths {
        // The type is only known inside the jail; directory rights are dropped for files
        // when the rule is added.
        rules.push(PathRule {
            path: path.clone(),
            access: if *writable {
                profile_read_write()
            } else {
                read_only(true)
            },
        });
    }
    rules
}

/// Restricts this process (and the VMM it execs) to `rules` and the given TCP ports.
pub fn enforce(
    rules: &[PathRule],
    tcp_connect: &[u16],
    tcp_bind: &[u16],
) -> Result<(), LandlockError> {
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))?
        .handle_access(AccessNet::from_all(TARGET_ABI))?
        .scope(Scope::from_all(TARGET_ABI))?
        .create()?;
    for rule in rules {
        let fd = PathFd::new(&rule.path).map_err(|source| LandlockError::Path {
            path: rule.path.clone(),
            source,
        })?;
        let is_dir = std::fs::metadata(&rule.path).is_ok_and(|m| m.is_dir());
        let access = if is_dir {
            rule.access
        } else {
            rule.access & AccessFs::from_file(TARGET_ABI)
        };
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
    }
    for &port in tcp_connect {
        ruleset = ruleset.add_rule(NetPort::new(port, AccessNet::ConnectTcp))?;
    }
    for &port in tcp_bind {
        ruleset = ruleset.add_rule(NetPort::new(port, AccessNet::BindTcp))?;
    }
    let status = ruleset.restrict_self()?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(LandlockError::NotEnforced);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{parse, Command};
    use std::ffi::OsString;

    #[test]
    fn rules_cover_the_jail_and_nothing_else() {
        let exe = std::env::current_exe().unwrap();
        let argv: Vec<OsString> = [
            "--id",
            "a",
            "--exec-file",
            exe.to_str().unwrap(),
            "--uid",
            "1",
            "--gid",
            "1",
            "--chroot-base-dir",
            "/tmp",
            "--bind-ro",
            "/tmp:/kernel",
            "--bind-rw",
            "/tmp:/disk",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let Ok(Command::Jail(config)) = parse(argv) else {
            panic!("parse")
        };
        let rules = path_rules(&config, false);
        let find = |p: &str| {
            rules
                .iter()
                .find(|r| r.path == Path::new(p))
                .map(|r| r.access)
        };
        // Files staged in the root are read, never written (nor anything made there).
        assert_eq!(
            find("/"),
            Some(make_bitflags!(AccessFs::{ReadDir | ReadFile}))
        );
        assert!(find(&format!("/{}", config.exec_name))
            .unwrap()
            .contains(AccessFs::Execute));
        assert!(find("/dev/kvm").unwrap().contains(AccessFs::IoctlDev));
        assert!(!find("/dev/urandom").unwrap().contains(AccessFs::WriteFile));
        let run = find("/run").unwrap();
        assert!(run.contains(AccessFs::MakeSock) && run.contains(AccessFs::MakeReg));
        // Nothing the VMM never makes: no directory, FIFO, node, link, removal, rename.
        for never in [
            AccessFs::Execute,
            AccessFs::MakeDir,
            AccessFs::MakeFifo,
            AccessFs::MakeChar,
            AccessFs::MakeBlock,
            AccessFs::MakeSym,
            AccessFs::RemoveFile,
            AccessFs::RemoveDir,
            AccessFs::Refer,
            AccessFs::Truncate,
        ] {
            assert!(!run.contains(never), "/run grants {never:?}");
            assert!(
                !find("/disk").unwrap().contains(never),
                "/disk grants {never:?}"
            );
        }
        assert!(!find("/kernel").unwrap().contains(AccessFs::WriteFile));
        assert!(find("/disk").unwrap().contains(AccessFs::WriteFile));
        // /tmp is a directory: a writable directory bind may hold sockets, nothing else new.
        assert!(find("/disk").unwrap().contains(AccessFs::MakeSock));
        assert!(!find("/disk").unwrap().contains(AccessFs::MakeReg));
        assert!(!find("/kernel").unwrap().contains(AccessFs::MakeSock));
        assert!(find("/dev/userfaultfd").is_none());
        assert!(rules.iter().all(|r| !r.access.contains(AccessFs::MakeChar)));
    }
}
