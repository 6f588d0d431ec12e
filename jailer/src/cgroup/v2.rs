//! cgroup v2: a single hierarchy; controllers reach the jail's cgroup only if every
//! ancestor lists them in `cgroup.subtree_control`.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Cgroup, CgroupError};

#[derive(Debug)]
pub struct V2Cgroup {
    mount: PathBuf,
    origin: PathBuf,
    rel: PathBuf,
    dir: PathBuf,
    fake: bool,
}

impl V2Cgroup {
    pub fn new(mount: PathBuf, origin: PathBuf, rel: PathBuf, fake: bool) -> Self {
        let dir = mount.join(&rel);
        V2Cgroup {
            mount,
            origin,
            rel,
            dir,
            fake,
        }
    }

    /// Makes `controllers` available to the children of `dir`.
    fn delegate(&self, dir: &Path, controllers: &BTreeSet<String>) -> Result<(), CgroupError> {
        let path = dir.join("cgroup.subtree_control");
        let enabled = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if self.fake && e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(CgroupError::Read { path, source }),
        };
        let enabled: BTreeSet<&str> = enabled
            .split_whitespace()
            .map(|c| c.trim_start_matches('+'))
            .collect();
        for c in controllers {
            if enabled.contains(c.as_str()) {
                continue;
            }
            let result = std::fs::OpenOptions::new()
                .write(true)
                .create(self.fake)
                .append(self.fake)
                .open(&path)
                .and_then(|mut f| f.write_all(format!("+{c}\n").as_bytes()));
            result.map_err(|source| CgroupError::Delegate {
                path: path.clone(),
                controller: c.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

impl Cgroup for V2Cgroup {
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
        "cgroup.procs"
    }

    fn create(&self, controllers: &BTreeSet<String>) -> Result<Vec<PathBuf>, CgroupError> {
        let mut created = Vec::new();
        let mut cur = self.mount.clone();
        let levels = self.rel.components().count();
        let undo = |created: &Vec<PathBuf>| {
            for dir in created.iter().rev() {
                super::rmdir(dir, self.fake);
            }
        };
        for (i, component) in self.rel.components().enumerate() {
            if let Err(e) = self.delegate(&cur, controllers) {
                undo(&created);
                return Err(e);
            }
            cur.push(component);
            let leaf = i + 1 == levels;
            match std::fs::create_dir(&cur) {
                Ok(()) => created.push(cur.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !leaf => {}
                Err(source) => {
                    undo(&created);
                    return Err(CgroupError::Mkdir { path: cur, source });
                }
            }
        }
        Ok(created)
    }
}
