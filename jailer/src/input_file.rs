//! Reading the small input files the jailer is given (`--profile`, `--seccomp-policy`).
//!
//! They come from the caller, so a path may name a FIFO (whose `open` would wait forever for a
//! writer), a device that never ends, or something huge: the file is opened without blocking,
//! must be a regular file, and is read up to a limit.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why an input file could not be read. The caller adds the flag and the path.
#[derive(Debug, thiserror::Error)]
pub enum InputFileError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("larger than {0} bytes")]
    TooLarge(u64),
}

/// Reads `path` as UTF-8 text of at most `max` bytes.
pub fn read_text(path: &Path, max: u64) -> Result<String, InputFileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(InputFileError::NotRegular);
    }
    let mut text = String::new();
    file.take(max.saturating_add(1)).read_to_string(&mut text)?;
    if u64::try_from(text.len()).unwrap_or(u64::MAX) > max {
        return Err(InputFileError::TooLarge(max));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("kiln-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: c is a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_text(&fifo, 10),
            Err(InputFileError::NotRegular)
        ));
        assert!(matches!(
            read_text(Path::new("/dev/zero"), 10),
            Err(InputFileError::NotRegular)
        ));
        let big = dir.join("big");
        std::fs::write(&big, "x".repeat(11)).unwrap();
        assert!(matches!(
            read_text(&big, 10),
            Err(InputFileError::TooLarge(10))
        ));
        std::fs::write(&big, "x".repeat(10)).unwrap();
        assert_eq!(read_text(&big, 10).unwrap().len(), 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
