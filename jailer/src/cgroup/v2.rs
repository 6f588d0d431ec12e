//! cgroup v2: a single hierarchy; controllers reach the jail's cgroup only if every
//! ancestor lists them in `cgroup.subtree_control`.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::location::Location;
use super::{Cgroup, CgroupError};

#[derive(Debug)]
pub struct V2Cgroup {
    at: Location,
}

impl V2Cgroup {
    pub fn new(at: Location) -> Self {
        V2Cgroup { at }
    }

    /// Makes `controllers` available to the children of `dir`.
    fn delegate(&self, dir: &Path, controllers: &BTreeSet<String>) -> Result<(), CgroupError> {
        let fake = self.at.fake();
        let path = dir.join("cgroup.subtree_control");
        let enabled = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if fake && e.kind() == io::ErrorKind::NotFound => String::new(),
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
                .create(fake)
                .append(fake)
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
    fn location(&self) -> &Location {
        &self.at
    }

    fn attach_file(&self) -> &'static str {
        "cgroup.procs"
    }

    fn joined_at_fork(&self) -> bool {
        true
    }

    fn create(&self, controllers: &BTreeSet<String>) -> Result<Vec<PathBuf>, CgroupError> {
        self.at
            .create(|parent| self.delegate(parent, controllers), |_| Ok(()))
    }
}
