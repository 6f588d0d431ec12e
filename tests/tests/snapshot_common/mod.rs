//! What the snapshot suites share: the tiny guest's `count` scenario (a counter and 16
//! slots in guest RAM, printed as `count N mem=S`), the check that a restored VM's lines
//! continue the snapshotted one's, and rewriting a state file (a consistent file holding an
//! inconsistent or older microVM state).

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

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

/// Writes `out`: the unauthenticated state file `state` with its body replaced by
/// `edit(body)` and (`minor`) its format minor version replaced, the body length and the
/// SHA-256 tag recomputed (with `sha256sum`), so that it is consistent as a file.
pub fn reseal(state: &Path, out: &Path, minor: Option<u16>, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let bytes = std::fs::read(state).unwrap();
    let body = edit(bytes[24..bytes.len() - 32].to_vec());
    let mut file = bytes[..16].to_vec();
    if let Some(minor) = minor {
        file[10..12].copy_from_slice(&minor.to_le_bytes());
    }
    file.extend_from_slice(&(body.len() as u64).to_le_bytes());
    file.extend_from_slice(&body);
    let unsigned = out.with_extension("unsigned");
    std::fs::write(&unsigned, &file).unwrap();
    let sum = Command::new(kiln_tests::require_program("sha256sum", "coreutils"))
        .arg(&unsigned)
        .output()
        .unwrap();
    let hex = String::from_utf8(sum.stdout).unwrap();
    let tag: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    file.extend_from_slice(&tag);
    std::fs::write(out, &file).unwrap();
}

/// Rewrites an unauthenticated state file whose configuration text is `edit`ed: the body's
/// first field is the configuration (u32 length + JSON); see [`reseal`].
pub fn edit_config(state: &Path, out: &Path, edit: impl Fn(String) -> String) {
    reseal(state, out, None, |body| {
        let len = u32::from_le_bytes(body[..4].try_into().unwrap()) as usize;
        let config = String::from_utf8(body[4..4 + len].to_vec()).unwrap();
        let config = edit(config);
        let mut new_body = u32::try_from(config.len()).unwrap().to_le_bytes().to_vec();
        new_body.extend_from_slice(config.as_bytes());
        new_body.extend_from_slice(&body[4 + len..]);
        new_body
    });
}
