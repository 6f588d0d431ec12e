//! Opening the log and metrics destinations (`log_path`, `metrics_path`): a file or a FIFO
//! that the VMM appends lines to and must never wait for.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;

/// Opens a file or FIFO for appending without ever blocking: `O_APPEND | O_NONBLOCK |
/// O_CLOEXEC`, read-write so that opening a FIFO with no reader yet neither blocks nor
/// fails, created (mode 0600) when missing. A write that would block then fails with
/// `WouldBlock` instead of stalling the thread.
pub fn open_output(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}
