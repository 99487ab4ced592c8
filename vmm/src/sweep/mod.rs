//! `ipivirt sweep`: the run for every overcommit ratio and vCPU count
//! given, and one table of the results. This file plans the cells and
//! renders their rows; `run.rs` runs them ([`run`]).
//!
//! A cell is a vCPU count `V` placed on `M` host CPUs (the ratio `V:M`):
//! - `--vcpus-list` only: every count on all the host CPUs given;
//! - `--ratios` only: `N:K` puts `M * N / K` vCPUs on all `M` host CPUs
//!   (on 2 host CPUs, `1:1` is 2 vCPUs, `2:1` is 4, `4:1` is 8);
//! - both: `V` vCPUs on the first `ceil(V * K / N)` host CPUs; a cell that
//!   needs more host CPUs than there are is skipped, saying so.

use std::fmt::Write;

mod run;
pub use run::{cell_config, check_cells, run, Swept};

use serde::{Deserialize, Serialize};

use crate::scenario::{Report, Status};

/// An overcommit ratio `vcpus:host_cpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    /// vCPUs.
    pub vcpus: u32,
    /// Host CPUs.
    pub host: u32,
}

/// What the sweep options can get wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SweepError {
    /// A ratio is not `N:K` with both positive.
    #[error("'{0}' is not a ratio N:K of positive integers (e.g. 2:1)")]
    BadRatio(String),
}

/// Parses `1:1,2:1,4:1`.
pub fn parse_ratios(s: &str) -> Result<Vec<Ratio>, SweepError> {
    s.split(',')
        .map(|r| {
            let bad = || SweepError::BadRatio(r.to_string());
            let (a, b) = r.trim().split_once(':').ok_or_else(bad)?;
            let vcpus: u32 = a.trim().parse().map_err(|_| bad())?;
            let host: u32 = b.trim().parse().map_err(|_| bad())?;
            if vcpus == 0 || host == 0 {
                return Err(bad());
            }
            Ok(Ratio { vcpus, host })
        })
        .collect()
}

/// One cell of the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// vCPUs.
    pub vcpus: u32,
    /// Host CPUs the vCPU threads are placed on.
    pub host_cpus: Vec<usize>,
    /// Why the cell cannot run on this host (None: it runs).
    pub skipped: Option<String>,
    /// The `--ratios` entry the cell comes from, if any.
    pub given: Option<Ratio>,
}

impl Cell {
    /// The overcommit ratio: as given in `--ratios` (`2:1`, not the `4:2`
    /// it becomes on 2 host CPUs), else `V:M` as run, reduced.
    pub fn ratio(&self) -> String {
        if let Some(r) = self.given {
            return format!("{}:{}", r.vcpus, r.host);
        }
        let (v, m) = (self.vcpus, self.host_cpus.len() as u32);
        let g = gcd(v, m).max(1);
        format!("{}:{}", v / g, m / g)
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The cells of a sweep over `available` host CPUs (see the module doc);
/// `default_vcpus` when neither list is given.
pub fn plan(
    available: &[usize],
    ratios: Option<&[Ratio]>,
    vcpus_list: Option<&[u32]>,
    default_vcpus: u32,
) -> Vec<Cell> {
    let m = available.len() as u64;
    let all = |vcpus, given| Cell {
        vcpus,
        host_cpus: available.to_vec(),
        skipped: None,
        given,
    };
    match (ratios, vcpus_list) {
        (None, None) => vec![all(default_vcpus, None)],
        (None, Some(list)) => list.iter().map(|&v| all(v, None)).collect(),
        (Some(rs), None) => rs
            .iter()
            .map(|r| {
                let v = m * u64::from(r.vcpus);
                if v % u64::from(r.host) != 0 || v == 0 {
                    Cell {
                        vcpus: 0,
                        host_cpus: Vec::new(),
                        skipped: Some(format!(
                            "{}:{} does not divide the {m} host CPUs",
                            r.vcpus, r.host
                        )),
                        given: Some(*r),
                    }
                } else {
                    all((v / u64::from(r.host)) as u32, Some(*r))
                }
            })
            .collect(),
        (Some(rs), Some(list)) => list
            .iter()
            .flat_map(|&v| {
                rs.iter().map(move |r| {
                    let need = (u64::from(v) * u64::from(r.host)).div_ceil(u64::from(r.vcpus));
                    if need > m || need == 0 {
                        Cell {
                            vcpus: v,
                            host_cpus: Vec::new(),
                            skipped: Some(format!(
                                "{v} vCPUs at {}:{} need {need} host CPUs, {m} given",
                                r.vcpus, r.host
                            )),
                            given: Some(*r),
                        }
                    } else {
                        Cell {
                            vcpus: v,
                            host_cpus: available[..need as usize].to_vec(),
                            skipped: None,
                            given: Some(*r),
                        }
                    }
                })
            })
            .collect(),
    }
}

/// The header of the sweep table.
pub fn table_header() -> String {
    format!(
        "{:>6} {:>5} {:>8} {:<14} {:>9} {:>14} {:>15} {:>10} {:>7} {:>15}",
        "vcpus",
        "host",
        "ratio",
        "design",
        "calls/s",
        "call p99 (us)",
        "probe p99 (us)",
        "violations",
        "B/task",
        "x up probe/call"
    )
}

/// The table rows of one cell: one per design, or one saying why the cell
/// has none.
pub fn table_rows(cell: &Cell, outcome: Result<&Report, &str>) -> String {
    let head = format!(
        "{:>6} {:>5} {:>8}",
        cell.vcpus,
        cell.host_cpus.len(),
        cell.ratio()
    );
    let mut out = String::new();
    match (outcome, &cell.skipped) {
        (_, Some(why)) => {
            let _ = writeln!(out, "{head} skipped: {why}");
        }
        (Err(e), None) => {
            let _ = writeln!(out, "{head} failed: {e}");
        }
        (Ok(r), None) if r.designs.is_empty() => {
            let _ = writeln!(
                out,
                "{head} (workload {} runs no design)",
                r.scenario.workload
            );
        }
        (Ok(r), None) => {
            for d in &r.designs {
                let _ = writeln!(
                    out,
                    "{head} {:<14} {:>9.0} {:>14} {:>15} {:>10} {:>7} {:>15}",
                    d.design,
                    d.calls_per_s,
                    p99_us(&d.call_latency_ns),
                    p99_us(&d.sched_latency_ns),
                    d.violations,
                    d.mask_bytes_per_task,
                    crate::stats::sweep_cell(r, &d.design)
                );
            }
        }
    }
    out
}

/// A p99 in us with 3 significant figures (`-`: nothing measured).
fn p99_us(l: &crate::scenario::Latency) -> String {
    if l.count == 0 {
        "-".into()
    } else {
        crate::stats::sig3(l.p99 as f64 / 1e3)
    }
}

/// The `sweep --json` report: the sweep's status and every cell's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    /// ipivirt's version.
    pub version: String,
    /// `ok` when every cell ran to completion (skipped cells aside),
    /// `partial` when a signal stopped the sweep, `failed` when a cell
    /// failed.
    pub status: Status,
    /// Why the status is not `ok` (null when it is).
    pub reason: Option<String>,
    /// Where the report comes from (load: at the sweep's start and end).
    pub provenance: crate::provenance::Provenance,
    /// The cells in plan order, the ones not reached included.
    pub cells: Vec<SweepCell>,
}

/// One cell of [`SweepReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepCell {
    /// vCPUs.
    pub vcpus: u32,
    /// Host CPUs the vCPU threads were placed on.
    pub host_cpus: Vec<usize>,
    /// The overcommit ratio as given (`2:1`).
    pub ratio: String,
    /// `ok`, `failed`, `partial` (interrupted), `skipped` (cannot run on
    /// this host) or `not-run` (the sweep stopped before it).
    pub outcome: String,
    /// Why the outcome is not `ok`.
    pub reason: Option<String>,
    /// The cell's report (outcome `ok`).
    pub report: Option<Report>,
    /// The cell's own `--trace` file (null: none asked for, or not run).
    pub trace: Option<std::path::PathBuf>,
}

/// The trace file of cell `index` (from 0) of a sweep given `--trace
/// path`: `t.json` gives `t-1.json`, `t-2.json`, ... so that no cell
/// overwrites another's.
pub fn cell_trace(path: &std::path::Path, index: usize) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{}.{}", index + 1, ext.to_string_lossy()),
        None => format!("{stem}-{}", index + 1),
    };
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_ratios_good_and_bad() {
        assert_eq!(
            parse_ratios("1:1, 2:1").unwrap(),
            vec![Ratio { vcpus: 1, host: 1 }, Ratio { vcpus: 2, host: 1 }]
        );
        for bad in ["2", "0:1", "1:0", "a:b", ""] {
            assert!(parse_ratios(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_plan_ratios_only_scale_vcpus() {
        let r = parse_ratios("1:1,2:1,4:1").unwrap();
        let cells = plan(&[0, 1], Some(&r), None, 4);
        let v: Vec<u32> = cells.iter().map(|c| c.vcpus).collect();
        assert_eq!(v, vec![2, 4, 8]);
        assert!(cells.iter().all(|c| c.host_cpus == vec![0, 1]));
    }

    #[test]
    fn test_cell_trace_names() {
        use std::path::Path;
        assert_eq!(
            cell_trace(Path::new("d/t.json"), 0),
            Path::new("d/t-1.json")
        );
        assert_eq!(cell_trace(Path::new("trace"), 2), Path::new("trace-3"));
    }

    #[test]
    fn test_ratio_label_as_given() {
        let r = parse_ratios("1:1,2:1,4:1").unwrap();
        let labels: Vec<String> = plan(&[0, 1], Some(&r), None, 4)
            .iter()
            .map(Cell::ratio)
            .collect();
        assert_eq!(labels, ["1:1", "2:1", "4:1"]);
        let cells = plan(&[0, 1], None, Some(&[4, 3]), 4);
        assert_eq!(cells[0].ratio(), "2:1");
        assert_eq!(cells[1].ratio(), "3:2");
    }

    #[test]
    fn test_plan_both_lists_skip_unreachable() {
        let r = parse_ratios("1:1,2:1").unwrap();
        let cells = plan(&[0, 1], Some(&r), Some(&[2, 64]), 4);
        assert_eq!(cells.len(), 4);
        assert_eq!(cells[0].host_cpus, vec![0, 1]);
        assert_eq!(cells[1].host_cpus, vec![0]);
        assert!(cells[2].skipped.is_some() && cells[3].skipped.is_some());
        assert_eq!(plan(&[0, 1], None, None, 4)[0].vcpus, 4);
        assert_eq!(plan(&[0, 1], None, Some(&[4, 64]), 4).len(), 2);
    }
}
