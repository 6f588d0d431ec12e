//! The jail directory `<base>/<exec-name>/<id>` and its root.
//!
//! ```text
//! <base>/<exec-name>/<id>/jail.json     the journal (root only, outside the jail)
//! <base>/<exec-name>/<id>/root/         becomes `/` (root-owned 0755, mounted read-only)
//!     <exec-name>                       private copy of the VMM, owned uid:gid
//!     <exec-name>.pid                   pid of the VMM (Firecracker's location; root only)
//!     dev/                              a tmpfs with only the device nodes is mounted here
//!     run/                              the jail's tmpfs (uid:gid 0700): the API socket goes here
//!     <bind targets>                    mount points for --bind-ro/--bind-rw
//!     <staged files>                    what the orchestrator hard-links or copies in
//! ```
//!
//! How the directory comes to exist with its journal, and how an orchestrator's pre-created
//! one is adopted, is `jail_dir`'s; here: a directory left by a jail that is no longer alive
//! is cleaned up and replaced, one that belongs to a live jail is refused; then the root is
//! filled. `run/` gets the jail's own tmpfs (`run_fs.rs`), journaled before it is mounted.

use std::fs::{OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::args::Config;
use crate::cleanup::{self, CleanupError};
use crate::jail_dir::{self, mkdir, Installed, JailDirError};
use crate::run_fs::{self, RunFsError};
use crate::state::{Journal, StateError};
use crate::sys::{chown, ChownError};

/// How long a jailer waits for another jailer setting up the same id (it takes
/// milliseconds) before refusing.
const CLAIM_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    #[error("--id {id}: jail {path} belongs to a live jail (pids {pids:?}); run `jailer cleanup` once it has exited")]
    Live {
        id: String,
        path: PathBuf,
        pids: Vec<i32>,
    },
    #[error("--id {id}: cleaning up the stale jail {path}: {source}")]
    Stale {
        id: String,
        path: PathBuf,
        source: Box<CleanupError>,
    },
    #[error(transparent)]
    JailDir(#[from] JailDirError),
    #[error("--exec-file {path}: {source}")]
    OpenExec { path: PathBuf, source: io::Error },
    #[error("--exec-file {path}: became a symbolic link or non-regular file")]
    ExecChanged { path: PathBuf },
    #[error("copying --exec-file to {path}: {source}")]
    Copy { path: PathBuf, source: io::Error },
    #[error("{path}: has {links} hard links; refusing to use it as the jail's VMM")]
    HardLink { path: PathBuf, links: u64 },
    #[error(transparent)]
    Chown(#[from] ChownError),
    #[error("{flag} {jail}: the bind target resolves to {resolved}, outside the jail {root}")]
    Escape {
        flag: &'static str,
        jail: PathBuf,
        resolved: PathBuf,
        root: PathBuf,
    },
    #[error("{flag} {jail}: creating the bind target {path}: {source}")]
    BindTarget {
        flag: &'static str,
        jail: PathBuf,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    RunFs(#[from] RunFsError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Creates (or adopts) `<base>/<exec-name>/<id>` with the jail's journal in it.
pub fn create_jail_dir(config: &Config) -> Result<Journal, ChrootError> {
    let mut claim = jail_dir::claim(config, CLAIM_WAIT)?;
    // Each round removes a stale jail; a third one means the directory keeps changing.
    for _ in 0..3 {
        claim = match claim.install()? {
            Installed::Done(journal) => return Ok(journal),
            Installed::Foreign(claim) => return Ok(claim.adopt(config)?),
            Installed::Jail(claim, state) => {
                let live = cleanup::live_pids(&state, &[]);
                if !live.is_empty() {
                    claim.abandon();
                    return Err(ChrootError::Live {
                        id: config.id.clone(),
                        path: config.jail_dir(),
                        pids: live,
                    });
                }
                if let Err(e) = cleanup::remove(&state, Instant::now() + cleanup::REAP_WAIT) {
                    claim.abandon();
                    return Err(ChrootError::Stale {
                        id: config.id.clone(),
                        path: config.jail_dir(),
                        source: Box::new(e),
                    });
                }
                claim
            }
        };
    }
    claim.abandon();
    Err(ChrootError::JailDir(JailDirError::Mkdir {
        path: config.jail_dir(),
        source: io::Error::other("the directory kept changing under the jailer"),
    }))
}

/// In an adopted directory, what [`populate`] and the pid file are about to make in it:
/// journaled before any is made (with the other intents, `main.rs`), it is all the jailer
/// will ever remove from the orchestrator's directory. `None` in a directory of its own.
pub fn intent(config: &Config, adopted: bool) -> Option<Vec<PathBuf>> {
    adopted.then(|| entries_to_make(config, &config.chroot_dir()))
}

/// Makes the jail's root, which [`populate`] and [`copy_exec_file`] then fill (side by side:
/// `main.rs`; in an adopted directory all three journaled first: [`intent`]).
pub fn make_root(config: &Config) -> Result<(), ChrootError> {
    mkdir(&config.chroot_dir(), 0o755)?;
    Ok(())
}

/// Fills the jail's root but for the VMM copy: `run/` (with its tmpfs), `dev/` and the bind
/// targets (none of which is the VMM's name: `args` refuses a bind there).
pub fn populate(config: &Config) -> Result<(), ChrootError> {
    let root = config.chroot_dir();
    let run = root.join("run");
    mkdir(&run, 0o700)?;
    // Journaled as `run_tmpfs` with the jail directory (`jail_dir::claim`).
    run_fs::mount(config, &run)?;
    mkdir(&root.join("dev"), 0o755)?;
    create_bind_targets(config, &root)
}

/// The entries [`populate`] and the pid file will add to `root`, top-down: those that do not
/// exist yet.
fn entries_to_make(config: &Config, root: &Path) -> Vec<PathBuf> {
    let mut planned = vec![
        root.to_path_buf(),
        root.join(&config.exec_name),
        root.join(format!("{}.pid", config.exec_name)),
        root.join("run"),
        root.join("dev"),
    ];
    for bind in &config.binds {
        let mut cur = root.to_path_buf();
        for c in bind.jail.components().skip(1) {
            cur.push(c);
            planned.push(cur.clone());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    planned.retain(|p| seen.insert(p.clone()) && std::fs::symlink_metadata(p).is_err());
    planned
}

/// One private copy of the VMM per jail, so that no two tenants share its text pages: the
/// root's `<exec-name>`.
pub fn copy_exec_file(config: &Config) -> Result<(), ChrootError> {
    let root = config.chroot_dir();
    let src_path = &config.exec_file;
    let mut src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(src_path)
        .map_err(|source| ChrootError::OpenExec {
            path: src_path.clone(),
            source,
        })?;
    let meta = src.metadata().map_err(|source| ChrootError::OpenExec {
        path: src_path.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ChrootError::ExecChanged {
            path: src_path.clone(),
        });
    }
    let dst_path = root.join(&config.exec_name);
    // O_EXCL + O_NOFOLLOW: never write through a link someone placed at the destination.
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&dst_path)
        .map_err(|source| ChrootError::Copy {
            path: dst_path.clone(),
            source,
        })?;
    let links = dst
        .metadata()
        .map_err(|source| ChrootError::Copy {
            path: dst_path.clone(),
            source,
        })?
        .nlink();
    if links != 1 {
        return Err(ChrootError::HardLink {
            path: dst_path,
            links,
        });
    }
    io::copy(&mut src, &mut dst).map_err(|source| ChrootError::Copy {
        path: dst_path.clone(),
        source,
    })?;
    chown(&dst_path, Some(&dst), config.uid, config.gid)?;
    // Executable bits from the source; never setuid/setgid/sticky.
    dst.set_permissions(Permissions::from_mode((meta.mode() & 0o755) | 0o500))
        .map_err(|source| ChrootError::Copy {
            path: dst_path,
            source,
        })
}

/// Creates an empty file or directory at each bind's target (parents root-owned 0755) and
/// checks the result resolves inside the jail.
fn create_bind_targets(config: &Config, root: &Path) -> Result<(), ChrootError> {
    let canonical_root = std::fs::canonicalize(root).map_err(|source| JailDirError::Mkdir {
        path: root.to_path_buf(),
        source,
    })?;
    for bind in &config.binds {
        let flag = if bind.writable {
            "--bind-rw"
        } else {
            "--bind-ro"
        };
        let target = jail_to_host(root, &bind.jail);
        let err = |path: &Path, source| ChrootError::BindTarget {
            flag,
            jail: bind.jail.clone(),
            path: path.to_path_buf(),
            source,
        };
        let mut cur = root.to_path_buf();
        let components: Vec<_> = bind.jail.components().skip(1).collect();
        for (i, c) in components.iter().enumerate() {
            cur.push(c);
            let last = i + 1 == components.len();
            if last && !bind.is_dir {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&cur)
                    .map_err(|e| err(&cur, e))?;
            } else {
                match mkdir(&cur, 0o755) {
                    Ok(_) => {}
                    Err(JailDirError::Mkdir { source, .. }) => return Err(err(&cur, source)),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let resolved = std::fs::canonicalize(&target).map_err(|e| err(&target, e))?;
        if !resolved.starts_with(&canonical_root) || resolved == canonical_root {
            return Err(ChrootError::Escape {
                flag,
                jail: bind.jail.clone(),
                resolved,
                root: canonical_root,
            });
        }
    }
    Ok(())
}

/// The host path of an absolute path inside the jail.
pub fn jail_to_host(root: &Path, jail_path: &Path) -> PathBuf {
    root.join(jail_path.strip_prefix("/").unwrap_or(jail_path))
}
