//! The worker's watcher of what an instance prints (`worker/src/instance/output.rs`,
//! `OutputLogs`): the guest's serial console (the guest writes it: any bytes, split by the
//! reads however the pipe delivers them), watched for the kernel's `Run /init` and for
//! init's fault after it (which fails a Linux function's start on a host that cannot run
//! guest user space), and the VMM's and the jailer's stderr with its boot-timer marks
//! (`timing::parse_boot_mark`) and last words.
//!
//! Input: byte 0 seeds how the console is split into reads; the rest is the console; its
//! lines also go to stderr.
//!
//! Checks: what the watcher concludes (init started, the fault line) does not depend on how
//! the reads split the console, when every line is at most 1 KiB (as the module promises);
//! a fault names one of the marks and is the rest of the line of the first `Run /init` or a
//! whole line after it; the tails keep the end of what was printed; a boot mark prints back to
//! itself; the last word is a line of stderr.
#![no_main]

use kiln_worker::instance::OutputLogs;
use kiln_worker::timing::parse_boot_mark;
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

const MARKS: &[&str] = &["Attempted to kill init", "segfault at", "traps: init"];

fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut x = u32::from(seed) | 0x100;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = 1 + (x % 64) as usize;
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let Some((&seed, console)) = data.split_first() else {
        return;
    };
    let whole = OutputLogs::default();
    whole.push_console(console);
    let split = OutputLogs::default();
    for c in chunks(console, seed) {
        split.push_console(c);
    }
    let text = String::from_utf8_lossy(console);
    kiln_fuzz::debug(|| {
        format!(
            "started: {:?}, fault: {:?}",
            whole.init_started().is_some(),
            whole.init_fault()
        )
    });

    let short_lines = console.split(|&b| b == b'\n').all(|l| l.len() <= 1024);
    if short_lines && console.len() <= 16 * 1024 {
        assert_eq!(
            whole.init_started().is_some(),
            split.init_started().is_some(),
            "`Run /init` seen in one read but not in pieces (or the other way)"
        );
        assert_eq!(
            whole.init_fault(),
            split.init_fault(),
            "the fault line depends on how the console was read"
        );
    }
    for logs in [&whole, &split] {
        if let Some(fault) = logs.init_fault() {
            assert!(logs.init_started().is_some(), "a fault before init started");
            assert!(MARKS.iter().any(|m| fault.contains(m)), "{fault:?}");
            if !short_lines {
                continue;
            }
            // The rest of the line of the first `Run /init`, or a whole line after it.
            let after = text
                .find("Run /init")
                .map(|at| &text[at..])
                .expect("`Run /init` was printed");
            assert!(
                after
                    .split_inclusive('\n')
                    .any(|l| l.ends_with('\n') && l.trim() == fault),
                "{fault:?} is not a whole line after `Run /init`"
            );
        }
        let tail = logs.console();
        assert!(
            tail.len() <= 16 * 1024 * 4,
            "a console tail of {} bytes",
            tail.len()
        );
    }
    if console.len() <= 16 * 1024 {
        assert_eq!(whole.console(), text, "a short console is kept whole");
    }

    // Stderr, line by line as the drain thread takes it.
    let logs = OutputLogs::default();
    for c in chunks(console, seed.wrapping_add(1)) {
        logs.push_stderr(c);
    }
    for line in text.lines() {
        if let Some(m) = parse_boot_mark(line, Instant::now()) {
            assert!(m.at_ms.is_finite() && m.at_ms >= 0.0);
            let again = format!("boot-timer: {}: {} ms", m.phase, m.at_ms);
            let back = parse_boot_mark(&again, m.arrived).expect("a mark prints back");
            assert_eq!((back.phase, back.at_ms), (m.phase, m.at_ms));
        }
    }
    if let Some(word) = logs.last_word() {
        assert!(logs.stderr().lines().any(|l| l == word), "{word:?}");
    }
});
