//! The result table: one Markdown row per figure (Kiln and QEMU min / median / max, their
//! ratio, the runs, a note; then Firecracker's min / median / max and the Kiln/Firecracker
//! ratio for the rows that have a Firecracker peer, `--firecracker`), echoed on stderr as it
//! is measured and printed on stdout at the end. scripts/bench.sh and docs/benchmarks.md
//! depend on this format.

use crate::stats::{stats, Stats};
use std::fmt::Write as _;

/// A peer's figures for a row, `None` when nothing was measured (no such peer in this run).
pub fn measured(v: &[f64]) -> Option<&[f64]> {
    (!v.is_empty()).then_some(v)
}

struct Row {
    metric: String,
    unit: &'static str,
    kiln: Option<Stats>,
    qemu: Option<Stats>,
    firecracker: Option<Stats>,
    note: String,
}

#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
}

impl Table {
    pub fn add(&mut self, metric: &str, unit: &'static str, kiln: &[f64], qemu: Option<&[f64]>) {
        self.add_note(metric, unit, kiln, qemu, "");
    }

    pub fn add_note(
        &mut self,
        metric: &str,
        unit: &'static str,
        kiln: &[f64],
        qemu: Option<&[f64]>,
        note: &str,
    ) {
        self.push(Row {
            metric: metric.to_string(),
            unit,
            kiln: stats(kiln),
            qemu: qemu.and_then(stats),
            firecracker: None,
            note: note.to_string(),
        });
    }

    /// A row whose peer is Firecracker (`None`: not measured, no `--firecracker`).
    pub fn add_firecracker(
        &mut self,
        metric: &str,
        unit: &'static str,
        kiln: &[f64],
        firecracker: Option<&[f64]>,
        note: &str,
    ) {
        self.push(Row {
            metric: metric.to_string(),
            unit,
            kiln: stats(kiln),
            qemu: None,
            firecracker: firecracker.and_then(stats),
            note: note.to_string(),
        });
    }

    /// A row with both peers (either may be missing: not measured).
    pub fn add_peers(
        &mut self,
        metric: &str,
        unit: &'static str,
        kiln: &[f64],
        peers: (Option<&[f64]>, Option<&[f64]>),
        note: &str,
    ) {
        let (qemu, firecracker) = peers;
        self.push(Row {
            metric: metric.to_string(),
            unit,
            kiln: stats(kiln),
            qemu: qemu.and_then(stats),
            firecracker: firecracker.and_then(stats),
            note: note.to_string(),
        });
    }

    fn push(&mut self, row: Row) {
        eprintln!("  {}", render_row(&row));
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| metric | unit | Kiln min / median / max | QEMU microvm min / median / max | Kiln/QEMU (median) | runs | note | Firecracker min / median / max | Kiln/Firecracker (median) |"
        );
        let _ = writeln!(
            out,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for r in &self.rows {
            let _ = writeln!(out, "{}", render_row(r));
        }
        out
    }
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt_stats(s: Option<Stats>) -> String {
    match s {
        Some(s) => format!(
            "{} / {} / {}",
            fmt_num(s.min),
            fmt_num(s.med),
            fmt_num(s.max)
        ),
        None => "–".to_string(),
    }
}

fn ratio(kiln: Option<Stats>, peer: Option<Stats>) -> String {
    match (kiln, peer) {
        (Some(k), Some(p)) if p.med != 0.0 => format!("{:.2}", k.med / p.med),
        _ => "–".to_string(),
    }
}

fn render_row(r: &Row) -> String {
    let n = r.kiln.map_or(0, |s| s.n);
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        r.metric,
        r.unit,
        fmt_stats(r.kiln),
        fmt_stats(r.qemu),
        ratio(r.kiln, r.qemu),
        n,
        r.note,
        fmt_stats(r.firecracker),
        ratio(r.kiln, r.firecracker)
    )
}
