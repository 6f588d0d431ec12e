//! What the jailer, the VMM and the guest's console print, drained by one thread each and
//! kept bounded: the tails quoted in error messages, the VMM's `--boot-timer` marks, and
//! (for Linux guests) whether the kernel started /init and whether init faulted.

use crate::sync::lock;
use crate::timing::{parse_boot_mark, BootMark};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the guest kernel prints when it starts /init, and what it prints when /init dies.
const RUN_INIT_MARK: &str = "Run /init";
const INIT_FAULT_MARKS: &[&str] = &["Attempted to kill init", "segfault at", "traps: init"];
/// How much of the VMM's stderr and of the guest's console is kept for error messages.
const TAIL_BYTES: usize = 16 * 1024;
/// Longest line of the VMM's stderr looked at for boot marks.
const MAX_LINE: usize = 4096;

/// A bounded tail of a byte stream.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
    /// Bytes dropped from the front so far: `buf[0]` is byte `dropped` of the stream.
    dropped: u64,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * TAIL_BYTES {
            let cut = self.buf.len() - TAIL_BYTES;
            self.buf.drain(..cut);
            self.dropped += cut as u64;
        }
    }

    fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(TAIL_BYTES);
        String::from_utf8_lossy(self.buf.get(start..).unwrap_or_default()).into_owned()
    }
}

/// What the jailer, the VMM and the guest's console print, kept bounded.
#[derive(Default)]
pub struct OutputLogs {
    stderr: Mutex<Tail>,
    console: Mutex<Tail>,
    marks: Mutex<Vec<BootMark>>,
    /// When the worker saw the guest kernel print [`RUN_INIT_MARK`], and where in the
    /// console (the byte the mark starts at).
    init_started: Mutex<Option<(Instant, u64)>>,
    /// After that, one of [`INIT_FAULT_MARKS`]: the line.
    init_fault: Mutex<Option<String>>,
}

impl OutputLogs {
    pub fn stderr(&self) -> String {
        lock(&self.stderr).text()
    }

    pub fn console(&self) -> String {
        lock(&self.console).text()
    }

    /// The `--boot-timer` marks seen so far.
    pub fn marks(&self) -> Vec<BootMark> {
        lock(&self.marks).clone()
    }

    /// When the guest kernel started /init, if it did.
    pub fn init_started(&self) -> Option<Instant> {
        lock(&self.init_started).map(|(at, _)| at)
    }

    /// The console line saying /init faulted, if one did after it started.
    pub fn init_fault(&self) -> Option<String> {
        lock(&self.init_fault).clone()
    }

    /// Takes bytes of the jailer's and the VMM's stderr.
    pub fn push_stderr(&self, bytes: &[u8]) {
        lock(&self.stderr).push(bytes);
    }

    /// Takes bytes of the guest's console and looks for init's start and fault in them.
    pub fn push_console(&self, bytes: &[u8]) {
        lock(&self.console).push(bytes);
        self.watch_init(bytes.len());
    }

    /// Looks for the kernel's `Run /init` and init's fault in the lines that the console's
    /// newest `n` bytes end or continue (lines of up to [`LINE_LOOKBACK`] bytes are seen whole
    /// however the reads split them). A fault counts only after the first `Run /init`: in
    /// the rest of the mark's line, or in a whole line after it.
    fn watch_init(&self, n: usize) {
        const LINE_LOOKBACK: usize = 1024;
        if lock(&self.init_fault).is_some() {
            return;
        }
        let console = lock(&self.console);
        let mut start = console.buf.len().saturating_sub(n + LINE_LOOKBACK);
        if start > 0 && console.buf.get(start - 1) != Some(&b'\n') {
            // From the first whole line on.
            let window = console.buf.get(start..).unwrap_or_default();
            start += window.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        }
        let mut started = lock(&self.init_started);
        if started.is_none() {
            let window = console.buf.get(start..).unwrap_or_default();
            let mark = RUN_INIT_MARK.as_bytes();
            if let Some(at) = window.windows(mark.len()).position(|w| w == mark) {
                *started = Some((Instant::now(), console.dropped + (start + at) as u64));
            }
        }
        let Some((_, mark_at)) = *started else {
            return;
        };
        // Where the mark is in `buf` (before it: 0, the mark is past the lookback anyway).
        let mark_in_buf = usize::try_from(mark_at.saturating_sub(console.dropped)).unwrap_or(0);
        let from = start.max(mark_in_buf);
        let after = String::from_utf8_lossy(console.buf.get(from..).unwrap_or_default());
        // Whole lines only: a line still being printed is looked at again on the next read.
        if let Some(line) = after
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .find(|l| INIT_FAULT_MARKS.iter().any(|m| l.contains(m)))
        {
            *lock(&self.init_fault) = Some(line.trim().to_string());
        }
    }

    /// The last line of the VMM's or the jailer's stderr saying why it stopped.
    pub fn last_word(&self) -> Option<String> {
        let text = self.stderr();
        text.lines()
            .rev()
            .find(|l| l.starts_with("vmm: ") || l.starts_with("jailer: ") || l.contains("error"))
            .map(str::to_string)
    }
}

/// Drains the supervisor's stderr (the jailer's and the VMM's) on a thread of its own,
/// collecting the VMM's boot marks line by line.
pub fn drain_stderr(mut r: impl Read + Send + 'static, logs: Arc<OutputLogs>) {
    let _ = std::thread::Builder::new()
        .name("kiln-stderr".into())
        .spawn(move || {
            let mut chunk = [0u8; 4096];
            let mut line: Vec<u8> = Vec::new();
            loop {
                let n = match r.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let arrived = Instant::now();
                let data = chunk.get(..n).unwrap_or_default();
                logs.push_stderr(data);
                for &b in data {
                    if b == b'\n' {
                        if let Some(m) = parse_boot_mark(&String::from_utf8_lossy(&line), arrived) {
                            lock(&logs.marks).push(m);
                        }
                        line.clear();
                    } else if line.len() < MAX_LINE {
                        line.push(b);
                    }
                }
            }
        });
}

/// Drains the supervisor's stdout (the guest's serial console) on a thread of its own.
pub fn drain_console(mut r: impl Read + Send + 'static, logs: Arc<OutputLogs>) {
    let _ = std::thread::Builder::new()
        .name("kiln-console".into())
        .spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match r.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => logs.push_console(chunk.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_end() {
        let mut t = Tail::default();
        for _ in 0..10 {
            t.push(&[b'a'; TAIL_BYTES]);
        }
        t.push(b"end");
        let text = t.text();
        assert_eq!(text.len(), TAIL_BYTES);
        assert!(text.ends_with("end"));
        assert!(t.buf.len() <= 2 * TAIL_BYTES);
    }

    /// Found by the `console_watch` fuzz target: how the reads split the console changed
    /// the verdict. Once the first `Run /init` was further back than a read's lookback, a
    /// second one in the read made the watcher look only after it: a fault line before it
    /// was missed (or, on the same line, cut). And a lookback that began exactly at a line's
    /// start skipped that line (a 1 KiB fault line whose newline came alone was never seen).
    #[test]
    fn the_fault_verdict_does_not_depend_on_how_the_console_is_read() {
        let text = format!(
            "Run /init as init process\n{}\ninit[1]: segfault at 0 ip 0\nRun /init again\n",
            "x".repeat(1100)
        );
        let whole = OutputLogs::default();
        whole.push_console(text.as_bytes());
        assert_eq!(
            whole.init_fault().as_deref(),
            Some("init[1]: segfault at 0 ip 0")
        );
        for cut in 0..text.len() {
            let split = OutputLogs::default();
            split.push_console(&text.as_bytes()[..cut]);
            split.push_console(&text.as_bytes()[cut..]);
            assert_eq!(split.init_fault(), whole.init_fault(), "cut at {cut}");
        }
        // A line of exactly the lookback whose newline comes in a read of its own.
        let line = format!("init[1]: segfault at 0 {}", "y".repeat(1024));
        let line = &line[..1024];
        let exact = OutputLogs::default();
        exact.push_console(b"Run /init as init process\n");
        exact.push_console(line.as_bytes());
        exact.push_console(b"\n");
        assert_eq!(exact.init_fault().as_deref(), Some(line));
        // A fault before init started never counts.
        let before = OutputLogs::default();
        before.push_console(b"init[1]: segfault at 0\n");
        before.push_console(b"Run /init as init process\n");
        before.push_console(b"still fine\n");
        assert!(before.init_started().is_some());
        assert_eq!(before.init_fault(), None, "a fault before init started");
    }

    #[test]
    fn last_word_is_the_vmm_exit_line() {
        let logs = OutputLogs::default();
        logs.push_stderr(
            b"boot-timer: x: 1 ms\nvmm: vCPU 0 stopped: write to I/O port 0x80 (1-byte access) with no device (--strict-io) at RIP 0x1 (exit code 6)\n",
        );
        assert!(logs.last_word().unwrap().contains("I/O port 0x80"));
    }
}
