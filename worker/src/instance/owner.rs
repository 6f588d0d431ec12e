//! Which worker an instance belongs to, in a way that survives nothing but the worker: every
//! worker holds `<state>/workers/<tag>.lock` (`flock`) for its whole life; `tag` is
//! `<pid>-<8 random hex digits>`, and every instance id ends with it
//! (`<function>-<n>-<tag>`, [`tag_of`]). A lock that can be taken belongs to a worker that
//! is gone: the kernel drops an `flock` with its process, whatever killed it, and a
//! successor with the same pid (PID 1 of a container) has another tag. Workers in other PID
//! namespaces sharing the state directory see each other's locks too.

use crate::sys::{FileLock, SysError};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read /dev/urandom for the worker's tag: {0}")]
    Random(std::io::Error),
    #[error(transparent)]
    Lock(#[from] SysError),
    #[error("the worker lock {0} is held by another process")]
    Held(PathBuf),
}

/// This worker, as its instance records name it: held for the worker's life. Dropping it
/// removes the lock file (the worker is gone: its records are anyone's to sweep).
pub struct Owner {
    tag: String,
    path: PathBuf,
    _lock: FileLock,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Owner({})", self.tag)
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Removed while still locked (the lock goes with `_lock`, dropped after this).
        let _ = std::fs::remove_file(&self.path);
    }
}

fn workers_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("workers")
}

fn lock_path(state_dir: &Path, tag: &str) -> PathBuf {
    workers_dir(state_dir).join(format!("{tag}.lock"))
}

impl Owner {
    /// Takes a fresh tag and its lock in `state_dir`.
    pub fn acquire(state_dir: &Path) -> Result<Owner, OwnerError> {
        let dir = workers_dir(state_dir);
        std::fs::create_dir_all(&dir).map_err(|source| OwnerError::Dir {
            path: dir.clone(),
            source,
        })?;
        let mut random = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .map_err(OwnerError::Random)?;
        let tag = format!("{}-{:08x}", std::process::id(), u32::from_ne_bytes(random));
        let path = lock_path(state_dir, &tag);
        match FileLock::acquire(&path, false)? {
            Some(lock) => Ok(Owner {
                tag,
                path,
                _lock: lock,
            }),
            None => Err(OwnerError::Held(path)),
        }
    }

    /// `<pid>-<8 hex digits>`: the end of every instance id of this worker.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

/// The owner's tag at the end of instance id `id`, if it has one.
pub fn tag_of(id: &str) -> Option<&str> {
    let mut parts = id.rsplitn(3, '-');
    let hex = parts.next()?;
    let pid = parts.next()?;
    parts.next()?;
    let ok = hex.len() == 8
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| &id[id.len() - hex.len() - pid.len() - 1..])
}

/// Whether the worker with `tag` still runs (its lock is held).
pub(super) fn alive(state_dir: &Path, tag: &str) -> bool {
    let path = lock_path(state_dir, tag);
    if !path.exists() {
        return false;
    }
    // Held by a live worker: `None`; an error (cannot tell): assume alive.
    !matches!(FileLock::acquire(&path, false), Ok(Some(_)))
}

/// Removes the lock files of gone workers that none of `records` (instance ids) names,
/// `own` aside.
pub(super) fn remove_dead_locks(state_dir: &Path, own: &str, records: &[String]) {
    let Ok(entries) = std::fs::read_dir(workers_dir(state_dir)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(tag) = name.strip_suffix(".lock") else {
            continue;
        };
        if tag == own || records.iter().any(|r| tag_of(r) == Some(tag)) {
            continue;
        }
        // Held while it is removed: no worker can have this tag any more.
        if let Ok(Some(_held)) = FileLock::acquire(&e.path(), false) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// At the worker's end: removes the lock file of tag `own` unless one of `records` is its
/// own (then the file stays until the worker exits, and the next sweep after that takes
/// the record over).
pub(super) fn release(state_dir: &Path, own: &str, records: &[String]) {
    if !records.iter().any(|r| tag_of(r) == Some(own)) {
        let _ = std::fs::remove_file(lock_path(state_dir, own));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_tag_ends_every_id() {
        assert_eq!(tag_of("echo-7-1234-0a1b2c3d"), Some("1234-0a1b2c3d"));
        assert_eq!(tag_of("my-fn-7-1-ffffffff"), Some("1-ffffffff"));
        assert_eq!(tag_of("echo-7-1234"), None);
        assert_eq!(tag_of("echo-7-x234-0a1b2c3d"), None);
        assert_eq!(tag_of("echo-7-1234-0a1b2c3"), None);
        assert_eq!(tag_of("1234-0a1b2c3d"), None);
    }

    #[test]
    fn a_lock_nobody_holds_is_a_gone_worker() {
        let dir = std::env::temp_dir().join(format!("kiln-owner-{}", std::process::id()));
        let owner = Owner::acquire(&dir).unwrap();
        let tag = owner.tag().to_string();
        assert!(alive(&dir, &tag));
        // Another worker's lock file whose worker is gone, and one no record names.
        std::fs::write(lock_path(&dir, "1-deadbeef"), b"").unwrap();
        assert!(!alive(&dir, "1-deadbeef"));
        assert!(!alive(&dir, "2-00000000"), "no lock file at all");
        remove_dead_locks(&dir, &tag, &["echo-1-1-deadbeef".to_string()]);
        assert!(lock_path(&dir, "1-deadbeef").exists(), "a record names it");
        remove_dead_locks(&dir, &tag, &[]);
        assert!(!lock_path(&dir, "1-deadbeef").exists());
        assert!(lock_path(&dir, &tag).exists(), "a live worker's stays");
        drop(owner);
        assert!(
            !lock_path(&dir, &tag).exists(),
            "dropped: the worker is gone"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
