//! The binaries' messages to whoever started them, on stderr.
//!
//! `std`'s `eprintln!` panics when stderr cannot be written: a pipe whose reader has gone
//! (EPIPE; Rust programs ignore SIGPIPE) or a full disk. In a release build (`panic =
//! "abort"`) that aborts the process, so a VMM would die because its orchestrator stopped
//! reading its messages. [`line`] drops a message stderr cannot take instead; every Kiln
//! binary's crate root shadows `eprintln!` with a macro that calls it.

use std::fmt::Arguments;
use std::io::Write;

/// Writes `args` and a newline to stderr, in one write where it fits; a failure drops it.
pub fn line(args: Arguments<'_>) {
    let mut text = std::fmt::format(args);
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    const CHILD: &str = "KILN_ARGV_STDERR_CHILD";

    /// Run by the test below in a process of its own whose stderr is a pipe nobody reads.
    #[test]
    fn writes_to_a_stderr_nobody_reads() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        // The parent closes its end right after the spawn.
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..3 {
            line(format_args!("nobody reads this"));
        }
    }

    /// A line to a stderr whose reader has gone is dropped, not a panic (`eprintln!`
    /// would panic: "failed printing to stderr: Broken pipe").
    #[test]
    fn a_closed_stderr_pipe_drops_the_line() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "stderr::tests::writes_to_a_stderr_nobody_reads"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stderr.take());
        let status = child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}
