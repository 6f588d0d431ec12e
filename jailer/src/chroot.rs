//! The jail directory `<base>/<exec-name>/<id>` and its root.
//!
//! ```text
//! <base>/<exec-name>/<id>/jail.json     the journal (root only, outside the jail)
//! <base>/<exec-name>/<id>/root/         becomes `/` (root-owned 0755, mounted read-only)
//!     <exec-name>                       private copy of the VMM, owned uid:gid
//!     <exec-name>.pid                   pid of the VMM (Firecracker's location)
//!     dev/                              a tmpfs with only the device nodes is mounted here
//!     run/                              the jail's tmpfs (uid:gid 0700): the API socket goes here
//!     <bind targets>                    mount points for --bind-ro/--bind-rw
//! ```
//!
//! `run/` gets the jail's own tmpfs (`run_fs.rs`), journaled before it is mounted.
//!
//! A directory left by a jail that is no longer alive is cleaned up and reused; one that
//! belongs to a live jail is refused.

use std::fs::{OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::args::Config;
use crate::cleanup::{self, CleanupError};
use crate::run_fs::{self, RunFsError};
use crate::state::{JailState, Journal, StateError};
use crate::sys::{chown, ChownError};

#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    #[error("creating {path}: {source}")]
    Mkdir { path: PathBuf, source: io::Error },
    #[error("--id {id}: jail {path} belongs to a live jail (pids {pids:?}); run `jailer cleanup` once it has exited")]
    Live {
        id: String,
        path: PathBuf,
        pids: Vec<i32>,
    },
    #[error("--id {id}: {path} exists but has no jail state (another jailer is setting it up, or one crashed at once); remove it by hand")]
    NoState { id: String, path: PathBuf },
    #[error("--id {id}: cleaning up the stale jail {path}: {source}")]
    Stale {
        id: String,
        path: PathBuf,
        source: Box<CleanupError>,
    },
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

/// `mkdir` with an explicit mode (the umask is 077); `Ok(false)` when it already exists.
fn mkdir(path: &Path, mode: u32) -> Result<bool, ChrootError> {
    match std::fs::create_dir(path) {
        Ok(()) => {
            std::fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|source| {
                ChrootError::Mkdir {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(ChrootError::Mkdir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates `<base>/<exec-name>/<id>` and starts the jail's journal in it.
pub fn create_jail_dir(config: &Config) -> Result<Journal, ChrootError> {
    let exec_dir = config.chroot_base.join(&config.exec_name);
    let jail_dir = config.jail_dir();
    // A second attempt follows the removal of a stale jail (which may also remove the
    // exec directory when it was the last jail in it).
    for _ in 0..3 {
        let exec_dir_created = mkdir(&exec_dir, 0o755)?;
        match std::fs::create_dir(&jail_dir) {
            Ok(()) => {
                std::fs::set_permissions(&jail_dir, Permissions::from_mode(0o755)).map_err(
                    |source| ChrootError::Mkdir {
                        path: jail_dir.clone(),
                        source,
                    },
                )?;
                let journal = Journal::create(JailState {
                    id: config.id.clone(),
                    jail_dir: jail_dir.clone(),
                    exec_dir: exec_dir.clone(),
                    exec_dir_created,
                    ..Default::default()
                });
                if journal.is_err() {
                    // Without a journal nothing would remove them later.
                    let _ = kiln_hostfs::remove_tree(&jail_dir);
                    if exec_dir_created {
                        let _ = std::fs::remove_dir(&exec_dir);
                    }
                }
                return Ok(journal?);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let Some(state) = Journal::load(&jail_dir, &config.id)? else {
                    return Err(ChrootError::NoState {
                        id: config.id.clone(),
                        path: jail_dir,
                    });
                };
                let live = cleanup::live_pids(&state, &[]);
                if !live.is_empty() {
                    return Err(ChrootError::Live {
                        id: config.id.clone(),
                        path: jail_dir,
                        pids: live,
                    });
                }
                cleanup::remove(&state).map_err(|source| ChrootError::Stale {
                    id: config.id.clone(),
                    path: jail_dir.clone(),
                    source: Box::new(source),
                })?;
            }
            // The exec directory vanished (another jail's cleanup removed it): retry.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ChrootError::Mkdir {
                    path: jail_dir,
                    source,
                })
            }
        }
    }
    Err(ChrootError::Mkdir {
        path: jail_dir,
        source: io::Error::other("the directory kept changing under the jailer"),
    })
}

/// Fills the jail's root: the VMM copy, `run/` (with its tmpfs), `dev/` and the bind
/// targets.
pub fn populate(config: &Config, journal: &mut Journal) -> Result<(), ChrootError> {
    let root = config.chroot_dir();
    mkdir(&root, 0o755)?;
    copy_exec_file(config, &root)?;
    let run = root.join("run");
    mkdir(&run, 0o700)?;
    journal.record(|s| s.run_tmpfs = Some(run.clone()))?;
    run_fs::mount(config, &run)?;
    mkdir(&root.join("dev"), 0o755)?;
    create_bind_targets(config, &root)
}

/// One private copy of the VMM per jail, so that no two tenants share its text pages.
fn copy_exec_file(config: &Config, root: &Path) -> Result<(), ChrootError> {
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
    let canonical_root = std::fs::canonicalize(root).map_err(|source| ChrootError::Mkdir {
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
                    Err(ChrootError::Mkdir { source, .. }) => return Err(err(&cur, source)),
                    Err(e) => return Err(e),
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
