//! cgroup v1: one directory per hierarchy (controllers mounted together share it).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use super::{read_file, write_file, Cgroup, CgroupError};

#[derive(Debug)]
pub struct V1Cgroup {
    mount: PathBuf,
    origin: PathBuf,
    /// Path of the jail's cgroup relative to the mount.
    rel: PathBuf,
    dir: PathBuf,
    /// The hierarchy has the cpuset controller: new cgroups start with empty `cpuset.cpus`
    /// and `cpuset.mems`, and no task can join them until both are filled in.
    cpuset: bool,
    fake: bool,
}

impl V1Cgroup {
    pub fn new(mount: PathBuf, origin: PathBuf, rel: PathBuf, cpuset: bool, fake: bool) -> Self {
        let dir = mount.join(&rel);
        V1Cgroup {
            mount,
            origin,
            rel,
            dir,
            cpuset,
            fake,
        }
    }

    /// Copies `file` from the parent directory when it is empty in `dir`.
    fn inherit(&self, dir: &Path, file: &str) -> Result<(), CgroupError> {
        let current = match read_file(&dir.join(file)) {
            Ok(v) => v,
            Err(CgroupError::Read { source, .. })
                if self.fake && source.kind() == io::ErrorKind::NotFound =>
            {
                String::new()
            }
            Err(e) => return Err(e),
        };
        if !current.is_empty() {
            return Ok(());
        }
        let parent = dir.parent().unwrap_or(dir);
        let value = read_file(&parent.join(file))?;
        if value.is_empty() {
            return Err(CgroupError::Inherit {
                path: parent.join(file),
            });
        }
        write_file(dir, file, &value, "cpuset inheritance", self.fake)
    }
}

impl Cgroup for V1Cgroup {
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn origin(&self) -> &Path {
        &self.origin
    }

    fn fake(&self) -> bool {
        self.fake
    }

    fn attach_file(&self) -> &'static str {
        "tasks"
    }

    fn create(&self, _controllers: &BTreeSet<String>) -> Result<Vec<PathBuf>, CgroupError> {
        let mut created = Vec::new();
        let mut cur = self.mount.clone();
        let levels = self.rel.components().count();
        for (i, component) in self.rel.components().enumerate() {
            cur.push(component);
            let leaf = i + 1 == levels;
            match std::fs::create_dir(&cur) {
                Ok(()) => created.push(cur.clone()),
                // Shared parents may exist; the jail's own cgroup must be new.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !leaf => {}
                Err(source) => {
                    // Undo what this call made before reporting.
                    for dir in created.iter().rev() {
                        super::rmdir(dir, self.fake);
                    }
                    return Err(CgroupError::Mkdir { path: cur, source });
                }
            }
            if self.cpuset {
                let filled = self
                    .inherit(&cur, "cpuset.cpus")
                    .and_then(|()| self.inherit(&cur, "cpuset.mems"));
                if let Err(e) = filled {
                    for dir in created.iter().rev() {
                        super::rmdir(dir, self.fake);
                    }
                    return Err(e);
                }
            }
        }
        Ok(created)
    }
}
