//! cgroup v1: one directory per hierarchy (controllers mounted together share it).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use super::location::Location;
use super::{read_file, write_file, Cgroup, CgroupError};

#[derive(Debug)]
pub struct V1Cgroup {
    at: Location,
    /// The hierarchy has the cpuset controller: new cgroups start with empty `cpuset.cpus`
    /// and `cpuset.mems`, and no task can join them until both are filled in.
    cpuset: bool,
}

impl V1Cgroup {
    pub fn new(at: Location, cpuset: bool) -> Self {
        V1Cgroup { at, cpuset }
    }

    /// Copies `file` from the parent directory when it is empty in `dir`.
    fn inherit(&self, dir: &Path, file: &str) -> Result<(), CgroupError> {
        let fake = self.at.fake();
        let current = match read_file(&dir.join(file)) {
            Ok(v) => v,
            Err(CgroupError::Read { source, .. })
                if fake && source.kind() == io::ErrorKind::NotFound =>
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
        write_file(dir, file, &value, "cpuset inheritance", fake)
    }
}

impl Cgroup for V1Cgroup {
    fn location(&self) -> &Location {
        &self.at
    }

    fn attach_file(&self) -> &'static str {
        "tasks"
    }

    fn create(&self, _controllers: &BTreeSet<String>) -> Result<Vec<PathBuf>, CgroupError> {
        self.at.create(
            |_| Ok(()),
            |dir| match self.cpuset {
                true => self
                    .inherit(dir, "cpuset.cpus")
                    .and_then(|()| self.inherit(dir, "cpuset.mems")),
                false => Ok(()),
            },
        )
    }
}
