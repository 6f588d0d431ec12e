//! A test's scratch directory: created fresh under a unique name, removed with everything in
//! it when the test ends, however it ends (the guard is dropped while a failed assertion
//! unwinds).

use std::path::{Path, PathBuf};

use crate::unique_id;

/// A fresh directory `<prefix>-<pid>-<n>`, removed with its contents when dropped.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Under the system's temporary directory (`$TMPDIR`, else `/tmp`).
    pub fn new(prefix: &str) -> ScratchDir {
        ScratchDir::create(std::env::temp_dir().join(unique_id(prefix)))
    }

    /// Directly under `/tmp` whatever `$TMPDIR` says: for Unix socket paths, which must fit
    /// in `sun_path` (107 bytes).
    pub fn short(prefix: &str) -> ScratchDir {
        ScratchDir::create(Path::new("/tmp").join(unique_id(prefix)))
    }

    fn create(path: PathBuf) -> ScratchDir {
        std::fs::create_dir_all(&path).unwrap_or_else(|e| {
            panic!(
                "cannot create the scratch directory {}: {e}",
                path.display()
            )
        });
        ScratchDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `bytes` to `name` inside the directory; returns its path.
    pub fn write(&self, name: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, bytes)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // The bounded remover: a test may leave a tree a recursive removal cannot handle.
        let _ = kiln_hostfs::remove_tree(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_created_fresh_and_removed_with_its_contents() {
        let dir = ScratchDir::new("kiln-scratch-test");
        let path = dir.path().to_path_buf();
        assert!(path.is_dir());
        std::fs::create_dir(dir.join("sub")).expect("mkdir");
        let file = dir.write("sub/file", b"x");
        assert_eq!(std::fs::read(&file).expect("read"), b"x");
        let other = ScratchDir::new("kiln-scratch-test");
        assert_ne!(other.path(), path, "two guards, two directories");
        drop(dir);
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn short_ones_live_directly_under_tmp() {
        let dir = ScratchDir::short("kst");
        assert_eq!(dir.path().parent(), Some(Path::new("/tmp")));
    }
}
