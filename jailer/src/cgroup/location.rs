//! Where a jail's cgroup lives in one hierarchy, and the walk that creates it level by
//! level: the part of creating a cgroup that v1 and v2 share.

use std::io;
use std::path::{Path, PathBuf};

use super::{rmdir, CgroupError};

#[derive(Debug)]
pub struct Location {
    /// Mount point of the hierarchy.
    mount: PathBuf,
    /// The jailer's own cgroup directory in it.
    origin: PathBuf,
    /// The jail's cgroup, relative to the mount point.
    rel: PathBuf,
    /// The jail's cgroup directory: `mount/rel`.
    dir: PathBuf,
    /// A fake tree (unit tests): control files are created on write.
    fake: bool,
}

impl Location {
    pub fn new(mount: PathBuf, origin: PathBuf, rel: PathBuf, fake: bool) -> Self {
        let dir = mount.join(&rel);
        Location {
            mount,
            origin,
            rel,
            dir,
            fake,
        }
    }

    /// The hierarchy's name, for `--timing`: its mount point's last component (`cpu`,
    /// `memory`, `unified`, or `cgroup` for a v2-only host).
    pub fn hierarchy(&self) -> String {
        self.mount
            .file_name()
            .map_or_else(|| "/".to_owned(), |n| n.to_string_lossy().into_owned())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn origin(&self) -> &Path {
        &self.origin
    }

    pub fn fake(&self) -> bool {
        self.fake
    }

    /// The levels of the jail's cgroup (its directory last) that do not exist now, top-down:
    /// what [`Location::create`] is about to make.
    pub fn missing(&self) -> Vec<PathBuf> {
        let mut cur = self.mount.clone();
        let mut missing = Vec::new();
        for component in self.rel.components() {
            cur.push(component);
            if !missing.is_empty() || std::fs::symlink_metadata(&cur).is_err() {
                missing.push(cur.clone());
            }
        }
        missing
    }

    /// Creates the jail's cgroup and its missing parents, top-down. `before` runs on each
    /// existing parent before its child is created, `after` on each level once it exists.
    /// Shared parents may exist already; the jail's own cgroup must be new. On failure the
    /// directories this call made are removed again. Returns them, top-down.
    pub fn create(
        &self,
        mut before: impl FnMut(&Path) -> Result<(), CgroupError>,
        mut after: impl FnMut(&Path) -> Result<(), CgroupError>,
    ) -> Result<Vec<PathBuf>, CgroupError> {
        let mut created = Vec::new();
        let mut cur = self.mount.clone();
        let levels = self.rel.components().count();
        for (i, component) in self.rel.components().enumerate() {
            let result = before(&cur).and_then(|()| {
                cur.push(component);
                let leaf = i + 1 == levels;
                match std::fs::create_dir(&cur) {
                    Ok(()) => created.push(cur.clone()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !leaf => {}
                    Err(source) => {
                        return Err(CgroupError::Mkdir {
                            path: cur.clone(),
                            source,
                        })
                    }
                }
                after(&cur)
            });
            if let Err(e) = result {
                for dir in created.iter().rev() {
                    rmdir(dir, self.fake);
                }
                return Err(e);
            }
        }
        Ok(created)
    }
}
