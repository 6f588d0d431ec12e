//! The security suites' summary: a table of attempts (or checks), what was expected and
//! what happened, and the report file it is written to.

use std::path::{Path, PathBuf};

use crate::bin_dir;

/// One row of a summary table.
#[derive(Debug, Clone)]
pub struct Row {
    pub attempt: String,
    pub expected: String,
    pub got: String,
    pub ok: bool,
    pub escaped: bool,
    /// An attempt (counted as blocked or escaped), not a health check.
    pub counted: bool,
}

/// Formats rows as an aligned `attempt | expected | got` table, marking mismatches.
pub fn table(title: &str, rows: &[Row]) -> String {
    let w0 = rows
        .iter()
        .map(|r| r.attempt.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let w1 = rows
        .iter()
        .map(|r| r.expected.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut out = format!(
        "\n== {title}\n{:<w0$} | {:<w1$} | got\n",
        "attempt", "expected"
    );
    out.push_str(&format!(
        "{}-+-{}-+-{}\n",
        "-".repeat(w0),
        "-".repeat(w1),
        "-".repeat(20)
    ));
    for r in rows {
        let mark = if r.ok { "" } else { "   <-- UNEXPECTED" };
        out.push_str(&format!(
            "{:<w0$} | {:<w1$} | {}{mark}\n",
            r.attempt, r.expected, r.got
        ));
    }
    let blocked = rows.iter().filter(|r| r.counted && !r.escaped).count();
    let escaped = rows.iter().filter(|r| r.counted && r.escaped).count();
    let wrong = rows.iter().filter(|r| !r.ok).count();
    if rows.iter().any(|r| r.counted) {
        out.push_str(&format!(
            "{blocked} blocked, {escaped} escaped, {wrong} unexpected\n"
        ));
    } else {
        out.push_str(&format!("{} checks, {wrong} unexpected\n", rows.len()));
    }
    out
}

/// Writes a report under the target directory (`<target>/security/<name>.txt`) and
/// returns its path.
pub fn write_report(name: &str, text: &str) -> PathBuf {
    let dir = bin_dir()
        .parent()
        .and_then(Path::parent)
        .map_or_else(bin_dir, Path::to_path_buf)
        .join("security");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}.txt"));
    let _ = std::fs::write(&path, text);
    path
}
