//! The answer block as text: the ratio table and one sentence per design
//! ([`crate::stats`] computes them), and the sweep's ratio cell.

use std::fmt::Write;

use crate::scenario::Report;
use crate::stats::{sig3, Spread, SummaryEntry, BASELINE, METRICS};

/// The answer block: a table of the ratios and one sentence per design,
/// rendered from `report.summary`.
pub fn summary_text(report: &Report) -> String {
    let mut out = String::new();
    let n = report.repeats.len().max(1);
    if report.summary.is_empty() {
        for w in &report.stats_warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        return out;
    }
    let how = if n > 1 {
        format!(
            "median (min-max) over {n} repeats, design order shuffled per repeat (seed {})",
            report
                .repeats
                .first()
                .map_or(report.scenario.seed, |r| r.seed)
        )
    } else {
        "1 run, [95% bootstrap interval] where the samples allow; --repeat N gives the spread"
            .to_string()
    };
    let _ = writeln!(out, "answer: each design against upstream ({how})");
    let mut rows = vec![{
        let mut h = vec![
            "design".to_string(),
            "mask B/task".into(),
            "task field B".into(),
        ];
        h.extend(METRICS.iter().map(|m| m.column.to_string()));
        h
    }];
    let dash = || "-".to_string();
    for e in &report.summary {
        let mut row = vec![
            e.design.clone(),
            e.mask_bytes_per_task.map_or_else(dash, |b| b.to_string()),
            e.task_field_bytes.map_or_else(dash, |b| b.to_string()),
        ];
        for m in METRICS {
            row.push(
                e.ratios
                    .get(m.name)
                    .and_then(Option::as_ref)
                    .map_or_else(dash, Spread::cell),
            );
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = format!("{:<w$}", r[0], w = widths[0]);
        for (c, w) in r.iter().zip(&widths).skip(1) {
            let _ = write!(line, "  {c:>w$}");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    for e in &report.summary {
        let _ = writeln!(out, "{}", sentence(e));
    }
    for w in &report.stats_warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// `task-local: +0 B per task for the mask (the series' task field -);
/// preempt-off P99 -; probe P99 0.663x upstream (0.600-0.700x over 3
/// repeats); ...`: one sentence per design, `-` for what was not measured.
pub fn sentence(e: &SummaryEntry) -> String {
    let bytes = match (e.mask_bytes_per_task, e.task_field_bytes) {
        (Some(m), Some(t)) => format!(
            "+{} B per task ({m} B mask, {t} B the series' task field)",
            m + t
        ),
        (Some(m), None) => format!("+{m} B per task for the mask (the series' task field -)"),
        (None, Some(t)) => format!("mask - B per task, the series' task field +{t} B"),
        (None, None) => "- B per task".to_string(),
    };
    let mut out = format!("{}: {bytes}", e.design);
    for m in METRICS {
        let v = e.ratios.get(m.name).and_then(Option::as_ref);
        let _ = match v {
            Some(v) => write!(out, "; {} {}", m.label, v.sentence(BASELINE)),
            None => write!(out, "; {} -", m.label),
        };
    }
    out
}

/// The sweep's ratio cell of `design` in `report`: its probe and call P99
/// against upstream (`0.663x/1.11x`), `-` where not measured.
pub fn sweep_cell(report: &Report, design: &str) -> String {
    let Some(e) = report.summary.iter().find(|e| e.design == design) else {
        return "-".into();
    };
    let get = |name: &str| {
        e.ratios
            .get(name)
            .and_then(Option::as_ref)
            .map_or("-".to_string(), |s| format!("{}x", sig3(s.median)))
    };
    format!("{}/{}", get("probe_p99"), get("call_p99"))
}
