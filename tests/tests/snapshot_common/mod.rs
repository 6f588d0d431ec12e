//! What the snapshot suites share: the tiny guest's `count` scenario (a counter and 16
//! slots in guest RAM, printed as `count N mem=S`), and the check that a restored VM's
//! lines continue the snapshotted one's.

#![allow(dead_code)]

use std::path::Path;

/// TSC cycles between two `count` lines in these tests (~10 ms at 2.6 GHz).
pub const PERIOD: u64 = 25_000_000;
/// The boot arguments of the counting guest.
pub fn count_args() -> String {
    format!("console=ttyS0 reboot=k panic=1 kiln.test=count kiln.period={PERIOD}")
}

/// The sum the guest prints with count `n`: its last 16 values.
pub fn expected_sum(n: u64) -> u64 {
    (n.saturating_sub(15).max(1)..=n).sum()
}

/// The complete `count N mem=S` lines of `text`, as (N, S).
pub fn counts(text: &str) -> Vec<(u64, u64)> {
    text.split('\n')
        .filter_map(|l| l.strip_prefix("KILN-TINY: count "))
        .filter_map(|rest| {
            let (n, s) = rest.split_once(" mem=")?;
            // `kiln.cpu=1` lines go on after the sum.
            Some((n.parse().ok()?, s.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// The number of complete `count` lines in `text`.
pub fn count_lines(text: &str) -> usize {
    // The last line may be partial (no newline yet).
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    counts(complete).len()
}

/// Checks that `after` (a restored VM's output) continues `before` (the snapshotted VM's
/// output when the snapshot was taken) as if nothing had happened: together they are
/// `count 1`, `count 2`, ... with no gap and no repeat (a line cut by the pause is
/// finished by the restored VM), each with the sum of its last 16 values, and `after`
/// has at least `min_new` lines of its own. Returns the first count of `after`.
pub fn assert_continues(before: &str, after: &str, min_new: usize) -> u64 {
    let joined = format!("{before}{after}");
    let all = counts(&joined);
    assert!(!all.is_empty(), "no count lines:\n{joined}");
    for (i, &(n, s)) in all.iter().enumerate() {
        assert_eq!(
            n,
            i as u64 + 1,
            "the count jumps at line {i}\n--- before the snapshot:\n{}\n--- after the restore:\n{}",
            tail(before),
            head(after)
        );
        assert_eq!(
            s,
            expected_sum(n),
            "count {n}: the slots in memory are wrong (mem={s})\n--- after the restore:\n{}",
            head(after)
        );
    }
    let before_n = counts(before).len();
    let new = all.len() - before_n;
    assert!(
        new >= min_new,
        "only {new} new lines after the restore:\n{}",
        head(after)
    );
    all.get(before_n).map_or(0, |c| c.0)
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn head(s: &str) -> String {
    s.lines().take(8).collect::<Vec<_>>().join("\n")
}

/// A `PUT /snapshot/create` body.
pub fn create_body(kind: &str, state: &Path, mem: &Path) -> String {
    format!(
        r#"{{"snapshot_type": "{kind}", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        mem.display()
    )
}

/// A `PUT /snapshot/load` body with the `backend` memory backend (`File` or `Uffd`) at
/// `path`, and `extra` fields (`"resume_vm": true, ...`, or empty).
pub fn load_body(state: &Path, backend: &str, path: &Path, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "{backend}", "backend_path": "{}"}}{extra}}}"#,
        state.display(),
        path.display()
    )
}

/// A 32-byte key file at `path` made of `byte`.
pub fn write_key(path: &Path, byte: u8) {
    std::fs::write(path, [byte; 32]).expect("write the key file");
}
