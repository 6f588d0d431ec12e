//! The checks a jail directory made by someone else passes before the jailer adopts it
//! (Firecracker's jailer uses an existing `<base>/<exec-name>/<id>/root` as it is; an
//! orchestrator creates it to stage the kernel and disks before starting the jailer).
//!
//! What the checks protect is the host side: the jailer works in that tree as root (it
//! creates `run`, `dev`, the VMM copy, the pid file and bind targets, and mounts the jail's
//! `/run` on `root/run`), and the jail process bind-mounts `root` with every mount below it.
//! So:
//!
//! - `<id>` and every directory of `root` are real directories owned by root and writable
//!   by no one else (no other user can swap an entry for a link while the jail lives); `root`
//!   is searchable by the VMM's uid (other-execute);
//! - no symbolic link in `root` points outside it (absolute, or climbing above it with
//!   `..`): the jailer never follows one out, and neither does a host tool walking the jail;
//! - nothing is mounted on or below `<id>` (another jail's `/run`, or a mount the jail would
//!   carry in);
//! - the names the jailer makes itself (`run`, `dev`, the VMM's name and its `.pid`) are
//!   free in `root`;
//! - the tree has at most [`MAX_ENTRIES`] entries (the check is bounded).
//!
//! Files staged by hard link or copy are what the orchestrator means the VMM to read: they
//! stay, hard links included. The VMM gets them read-only whatever their mode (the root is
//! mounted read-only and Landlock allows only reading under it), and only as far as its uid
//! may read them; device nodes are inert (the root is `nodev`), set-id bits too (`nosuid`).

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::args::Config;
use crate::sys::mount_points;

/// Most entries a pre-created root may hold (its staged kernel and disks are a handful).
pub const MAX_ENTRIES: usize = 10_000;
/// Deepest directory level checked.
const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("the pre-created jail directory {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the pre-created jail directory: {path} is a {kind}, not a directory")]
    NotADirectory { path: PathBuf, kind: &'static str },
    #[error("the pre-created jail directory: {path} is owned by uid {uid}, not root (another user could change it under the jail)")]
    Owner { path: PathBuf, uid: u32 },
    #[error("the pre-created jail directory: {path} is writable by group or others (mode {mode:o}); make it 0755 or stricter")]
    Writable { path: PathBuf, mode: u32 },
    #[error("the pre-created jail directory: {path} is not searchable by the VMM's uid (mode {mode:o}); give it o+x")]
    NotSearchable { path: PathBuf, mode: u32 },
    #[error("the pre-created jail directory: the symbolic link {path} points outside the jail's root ({target:?})")]
    LinkOut { path: PathBuf, target: OsString },
    #[error("the pre-created jail directory: {path} is a mount point (another jail's, or a mount the jail would carry in); refusing it")]
    Mounted { path: PathBuf },
    #[error("the pre-created jail directory: {path} exists; the jailer makes it itself")]
    Reserved { path: PathBuf },
    #[error("the pre-created jail directory: {path} holds more than {MAX_ENTRIES} entries or {MAX_DEPTH} levels; too large to check")]
    TooLarge { path: PathBuf },
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "symbolic link"
    } else if t.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

fn lstat(path: &Path) -> Result<std::fs::Metadata, AdoptError> {
    std::fs::symlink_metadata(path).map_err(|source| AdoptError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A directory owned by root that no one else can write to.
fn owned_dir(path: &Path, meta: &std::fs::Metadata) -> Result<(), AdoptError> {
    if !meta.is_dir() {
        return Err(AdoptError::NotADirectory {
            path: path.to_path_buf(),
            kind: kind(meta),
        });
    }
    if meta.uid() != 0 {
        return Err(AdoptError::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(AdoptError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Checks `jail_dir` (`<base>/<exec-name>/<id>`, existing, without a journal) for adoption.
pub fn check(jail_dir: &Path, config: &Config) -> Result<(), AdoptError> {
    owned_dir(jail_dir, &lstat(jail_dir)?)?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| AdoptError::Read {
            path: PathBuf::from("/proc/self/mountinfo"),
            source,
        })?;
    if let Some(point) = mount_points(&mountinfo).find(|p| p.starts_with(jail_dir)) {
        return Err(AdoptError::Mounted { path: point });
    }
    let root = jail_dir.join("root");
    let meta = match std::fs::symlink_metadata(&root) {
        Ok(m) => m,
        // The jailer makes it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(AdoptError::Read { path: root, source }),
    };
    owned_dir(&root, &meta)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o001 == 0 {
        return Err(AdoptError::NotSearchable { path: root, mode });
    }
    for name in [
        "run".to_owned(),
        "dev".to_owned(),
        config.exec_name.clone(),
        format!("{}.pid", config.exec_name),
    ] {
        let path = root.join(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(AdoptError::Reserved { path });
        }
    }
    check_tree(&root)
}

/// Walks `root` (breadth first, bounded): directories owned by root, no link out.
fn check_tree(root: &Path) -> Result<(), AdoptError> {
    let mut pending = vec![(root.to_path_buf(), 0usize)];
    let mut seen = 0usize;
    while let Some((dir, depth)) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| AdoptError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| AdoptError::Read {
                path: dir.clone(),
                source,
            })?;
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(AdoptError::TooLarge {
                    path: root.to_path_buf(),
                });
            }
            let path = entry.path();
            let meta = lstat(&path)?;
            if meta.is_dir() {
                owned_dir(&path, &meta)?;
                if depth + 1 > MAX_DEPTH {
                    return Err(AdoptError::TooLarge {
                        path: root.to_path_buf(),
                    });
                }
                pending.push((path, depth + 1));
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(|source| AdoptError::Read {
                    path: path.clone(),
                    source,
                })?;
                if !stays_inside(root, &dir, &target) {
                    return Err(AdoptError::LinkOut {
                        path,
                        target: target.into_os_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// A symbolic link in `dir` (under `root`) to `target` resolves, lexically, inside `root`:
/// relative, and never above `root` however its `..` fall. (Links it passes through are
/// checked on their own.)
fn stays_inside(root: &Path, dir: &Path, target: &Path) -> bool {
    let Ok(rel) = dir.strip_prefix(root) else {
        return false;
    };
    let mut depth = rel.components().count();
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_resolved_lexically_within_the_root() {
        let root = Path::new("/j/root");
        assert!(stays_inside(root, root, Path::new("vmlinux")));
        assert!(stays_inside(root, &root.join("a/b"), Path::new("../../x")));
        assert!(stays_inside(root, &root.join("a"), Path::new("./b/../c")));
        assert!(!stays_inside(root, &root.join("a"), Path::new("../../x")));
        assert!(!stays_inside(root, root, Path::new("..")));
        assert!(!stays_inside(root, root, Path::new("/etc/shadow")));
        assert!(!stays_inside(root, Path::new("/elsewhere"), Path::new("x")));
    }
}
