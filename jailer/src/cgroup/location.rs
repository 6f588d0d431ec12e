//! Where a jail's cgroup lives in one hierarchy, and the walk that creates it level by
//! level: the part of creating a cgroup that v1 and v2 share.

use std::io;
use std::path::{Path, PathBuf};

use super::{rmdir, CgroupError};

/// How many times [`Location::create`] walks down again when a level it relies on went
/// away meanwhile.
const ATTEMPTS: u32 = 3;

/// The mark of a parent level a jailer made: the sticky bit (`S_ISVTX`) on its directory,
/// beside the permission bits its `mkdir` gave (a cgroup directory's sticky bit means nothing
/// to the kernel, and nothing else sets it), so that any jail's clean-up may remove it once
/// empty, not only that of the jail that made it, which may end while other jails still use
/// it.
pub const MADE_BY_A_JAILER: u32 = 0o1000;

/// Marks `dir`, a parent level just made, with [`MADE_BY_A_JAILER`].
fn mark_made(dir: &Path) -> Result<(), CgroupError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| CgroupError::Mkdir {
        path: dir.to_path_buf(),
        source,
    };
    let mode = std::fs::symlink_metadata(dir)
        .map_err(err)?
        .permissions()
        .mode();
    let marked = std::fs::Permissions::from_mode(mode & 0o777 | MADE_BY_A_JAILER);
    std::fs::set_permissions(dir, marked).map_err(err)
}

/// Whether `dir` is a directory that carries [`MADE_BY_A_JAILER`].
pub fn made_by_a_jailer(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.permissions().mode() & MADE_BY_A_JAILER != 0)
}

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
    /// Shared parents may exist already; the jail's own cgroup must be new. A parent level
    /// made here gets [`MADE_BY_A_JAILER`], so that whichever jail finds it empty last
    /// removes it (`cgroup::remove`). Such a level can go between one step and the next here
    /// (another jail's clean-up found it empty): then the walk starts again from the top,
    /// up to [`ATTEMPTS`] times. On failure the directories this call made are removed
    /// again. Returns them, top-down.
    pub fn create(
        &self,
        mut before: impl FnMut(&Path) -> Result<(), CgroupError>,
        mut after: impl FnMut(&Path) -> Result<(), CgroupError>,
    ) -> Result<Vec<PathBuf>, CgroupError> {
        let mut attempt = 1;
        loop {
            let mut created = Vec::new();
            let Err((e, parent)) = self.walk(&mut created, &mut before, &mut after) else {
                return Ok(created);
            };
            for dir in created.iter().rev() {
                rmdir(dir, self.fake);
            }
            let vanished = std::fs::symlink_metadata(&parent).is_err();
            if !vanished || attempt == ATTEMPTS {
                return Err(e);
            }
            attempt += 1;
        }
    }

    /// One walk of [`Location::create`], recording in `created` what it made; an error comes
    /// with the parent of the level it happened at.
    fn walk(
        &self,
        created: &mut Vec<PathBuf>,
        before: &mut impl FnMut(&Path) -> Result<(), CgroupError>,
        after: &mut impl FnMut(&Path) -> Result<(), CgroupError>,
    ) -> Result<(), (CgroupError, PathBuf)> {
        let mut cur = self.mount.clone();
        let levels = self.rel.components().count();
        for (i, component) in self.rel.components().enumerate() {
            let parent = cur.clone();
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
                if !leaf && created.last() == Some(&cur) {
                    mark_made(&cur)?;
                }
                after(&cur)
            });
            result.map_err(|e| (e, parent))?;
        }
        Ok(())
    }
}
