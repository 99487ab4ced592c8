//! Statistics you can quote: the `--repeat N` runs, their seeded design
//! orders, and the answer block (JSON `summary`), one entry per design
//! against `upstream` with every ratio's spread over the repeats.
//!
//! The data flow is readout -> model -> renderers: each repeat's
//! [`Report`] (the JSON model of one run) feeds [`summarise`], which
//! computes every ratio once; the text ([`summary_text`]), the JSON
//! (`Report::summary`) and the sweep's ratio column only render it.
//!
//! Why repeats: on a shared, nested host the same single run moved a ratio
//! from 0.96x to 2.41x between identical invocations, so a ratio is quoted
//! only with its spread (median, min, max over `n` repeats). The design
//! order is shuffled per repeat (seeded) so that a slow phase of the host
//! (another job starting, a thermal step) does not always hit the same
//! design.

use std::collections::BTreeMap;

use abi::Histogram;
use serde::{Deserialize, Serialize};

use crate::inject::schedule::Rng;
use crate::machine::MachineConfig;
use crate::results::DesignReport;
use crate::scenario::{DesignSummary, Latency, Report};

pub use crate::report::summary::{sentence, summary_text, sweep_cell};

/// A percentile resting on fewer samples than this is flagged: below 100,
/// a p99 is the largest sample, not a percentile.
pub const MIN_SAMPLES: u64 = 100;

/// The generator stream of the repeat orders (apart from the injection's).
const ORDER_STREAM: u64 = 0x5245_5045_4154; // "REPEAT"

/// Resamples of the bootstrap interval.
const BOOTSTRAP_RESAMPLES: usize = 1000;

/// Fewest samples beyond a percentile (`n * (1 - q)`) for a bootstrap
/// interval of it: with fewer, the interval says more about the histogram's
/// last buckets than about the run.
const BOOTSTRAP_MIN_TAIL: f64 = 10.0;

/// `x` with 3 significant figures (`5570`, `67.0`, `0.663`): what a
/// histogram whose buckets are at most 1% wide can support.
pub fn sig3(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let digits = 2 - x.abs().log10().floor() as i32;
    if digits > 0 {
        format!("{x:.*}", digits as usize)
    } else {
        let unit = 10f64.powi(-digits);
        format!("{:.0}", (x / unit).round() * unit)
    }
}

/// A figure over the repeats that measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The median (the mean of the middle two for an even `n`).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// How many repeats measured it.
    pub n: usize,
    /// A 95% bootstrap interval `[low, high]` of a single run's ratio,
    /// from its samples (null: more than one repeat, a figure that is not
    /// a percentile, or too few samples beyond the percentile).
    #[serde(default)]
    pub ci95: Option<[f64; 2]>,
}

impl Spread {
    /// The spread of `values` (None when empty: not measured).
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
            ci95: None,
        })
    }

    /// `0.663x upstream (0.600-0.700x over 3 repeats)` or, for one run,
    /// `0.663x upstream (1 run; 95% bootstrap 0.610-0.720x)` (`versus`:
    /// what the ratio is against).
    pub fn sentence(&self, versus: &str) -> String {
        let range = if self.n > 1 {
            format!(
                "{}-{}x over {} repeats",
                sig3(self.min),
                sig3(self.max),
                self.n
            )
        } else if let Some([lo, hi]) = self.ci95 {
            format!("1 run; 95% bootstrap {}-{}x", sig3(lo), sig3(hi))
        } else {
            "1 run".to_string()
        };
        format!("{}x {versus} ({range})", sig3(self.median))
    }

    /// The table cell: `0.663 (0.600-0.700)`.
    pub fn cell(&self) -> String {
        if self.n > 1 {
            format!(
                "{} ({}-{})",
                sig3(self.median),
                sig3(self.min),
                sig3(self.max)
            )
        } else if let Some([lo, hi]) = self.ci95 {
            format!("{} [{}-{}]", sig3(self.median), sig3(lo), sig3(hi))
        } else {
            sig3(self.median)
        }
    }
}

/// One ratio of the answer block: how a design's figure is read from the
/// model, and (for a percentile) the samples behind it.
pub struct Metric {
    /// The JSON key in a [`SummaryEntry`].
    pub name: &'static str,
    /// The text's name (the answer block's sentences).
    pub label: &'static str,
    /// Its column head in the answer block's table (the label, shortened
    /// where it would widen the table).
    pub column: &'static str,
    /// The design's figure (None: not measured in that run).
    pub value: fn(&DesignSummary) -> Option<f64>,
    /// The histogram and quantile (ppm) the figure is read from, for the
    /// bootstrap interval of a single run.
    pub samples: Option<(HistOf, u32)>,
}

/// Which of a design's histograms a [`Metric`] reads.
pub type HistOf = fn(&DesignReport) -> &Histogram;

/// A figure of the design's preempt-off tracer (None: tracer off or not
/// measured).
fn preempt_off_ns(
    d: &DesignSummary,
    pick: fn(&crate::scenario::PreemptOff) -> Option<u64>,
) -> Option<f64> {
    d.preempt_off.as_ref().and_then(pick).map(|v| v as f64)
}

fn p99(l: &Latency) -> Option<f64> {
    (l.count > 0).then_some(l.p99 as f64)
}

/// The ratios of the answer block against `upstream`, in print order.
/// Adding one is one line here.
pub const METRICS: &[Metric] = &[
    // The series' figure: the sending vCPUs' P99 of their window maxima
    // (the worst initiator's; one initiator in `--scenario series`).
    Metric {
        name: "sender_preempt_off_p99",
        label: "sender preempt-off P99",
        column: "sender preempt-off P99",
        value: |d| preempt_off_ns(d, |p| p.sender_p99_ns),
        samples: None,
    },
    // The same with each section less the host's steal time: what the
    // guest's code held, apart from the host not running the vCPU.
    Metric {
        name: "sender_preempt_off_p99_excl_steal",
        label: "sender preempt-off P99 excl. host steal",
        column: "sender excl. steal",
        value: |d| preempt_off_ns(d, |p| p.excl_steal.as_ref()?.sender_p99_ns),
        samples: None,
    },
    // The same over every vCPU's windows (targets and bystanders too).
    Metric {
        name: "preempt_off_p99",
        label: "preempt-off P99",
        column: "preempt-off P99",
        value: |d| preempt_off_ns(d, |p| p.p99_ns),
        samples: Some((|d| &d.preempt_off.window_max, 990_000)),
    },
    Metric {
        name: "probe_p99",
        label: "probe P99",
        column: "probe P99",
        value: |d| p99(&d.sched_latency_ns),
        samples: Some((|d| &d.sched_latency, 990_000)),
    },
    Metric {
        name: "call_p99",
        label: "call P99",
        column: "call P99",
        value: |d| p99(&d.call_latency_ns),
        samples: Some((|d| &d.call_latency, 990_000)),
    },
    Metric {
        name: "calls_per_s",
        label: "calls/s",
        column: "calls/s",
        value: |d| (d.phase_ms > 0.0).then_some(d.calls_per_s),
        samples: None,
    },
];

/// The series' per-task field, in bytes, as the guest measured it (the
/// size of `Task::hook_slot`; None: a report without it).
fn task_field_bytes(d: &DesignSummary) -> Option<u64> {
    (d.task_field_bytes > 0).then_some(d.task_field_bytes)
}

/// One design against upstream (JSON `summary[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryEntry {
    /// The design's column name.
    pub design: String,
    /// Bytes each task carries for the design's mask (the first repeat's:
    /// it does not depend on timing).
    pub mask_bytes_per_task: Option<u64>,
    /// Bytes of the series' per-task field (null: not measured).
    pub task_field_bytes: Option<u64>,
    /// Every [`METRICS`] ratio by name: `{median, min, max, n, ci95}`, or
    /// null when no repeat measured both the design and upstream.
    #[serde(flatten)]
    pub ratios: BTreeMap<String, Option<Spread>>,
}

/// One repeat of a `--repeat N` run (JSON `repeats[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatInfo {
    /// 1-based.
    pub repeat: usize,
    /// The seed the repeat ran with (`--seed` + repeat - 1).
    pub seed: u64,
    /// The designs in the order the guest ran them.
    pub order: Vec<String>,
    /// False when the VMM stalled during the repeat (left out of the
    /// summary).
    pub reliable: bool,
    /// The repeat's designs, in run order.
    pub designs: Vec<DesignSummary>,
}

/// The design orders of `repeats` repeats of `designs` designs: each a
/// permutation of `0..designs` (indexes into the given order), shuffled
/// per repeat from `seed`. One repeat keeps the given order.
pub fn repeat_orders(seed: u64, designs: usize, repeats: usize) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed, ORDER_STREAM);
    (0..repeats)
        .map(|_| {
            let mut order: Vec<usize> = (0..designs).collect();
            if repeats > 1 {
                for i in (1..designs).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
            }
            order
        })
        .collect()
}

/// The configuration of repeat `index` (from 0): `base` with its designs
/// (and their PV features) in `order` and the seed `base.seed + index`.
pub fn repeat_config(base: &MachineConfig, index: usize, order: &[usize]) -> MachineConfig {
    let mut c = base.clone();
    c.seed = base.seed.wrapping_add(index as u64);
    c.designs = order.iter().map(|&i| base.designs[i]).collect();
    if base.design_pv.len() == base.designs.len() {
        c.design_pv = order.iter().map(|&i| base.design_pv[i]).collect();
    }
    c
}

/// What [`summarise`] returns: the entries and the warnings about them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// One per design other than upstream, in the given order.
    pub entries: Vec<SummaryEntry>,
    /// Figures to read with care (few samples, unreliable repeats).
    pub warnings: Vec<String>,
}

/// The value at 1-based rank `rank` of `h` (a bucket's upper end, clamped
/// to the exact min and max, as [`Histogram::quantile_ppm`]).
fn value_at_rank(h: &Histogram, rank: u64) -> u64 {
    let mut seen = 0u64;
    for (i, &n) in h.buckets.iter().enumerate() {
        seen += u64::from(n);
        if seen >= rank {
            return abi::hist::bucket_high(i).clamp(h.min, h.max);
        }
    }
    h.max
}

fn uniform(rng: &mut Rng) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// One resampled percentile `q` of `h`: a resample's value at the
/// percentile's rank is the empirical value at a rank drawn from the rank's
/// sampling distribution (binomial, normal when the tail has at least
/// [`BOOTSTRAP_MIN_TAIL`] samples), so a resample costs a lookup, not
/// `count` draws.
fn resampled(h: &Histogram, q: f64, rng: &mut Rng) -> f64 {
    let n = h.count as f64;
    let z = (-2.0 * uniform(rng).ln()).sqrt() * (std::f64::consts::TAU * uniform(rng)).cos();
    let rank = (n * q + z * (n * q * (1.0 - q)).sqrt())
        .ceil()
        .clamp(1.0, n);
    value_at_rank(h, rank as u64) as f64
}

/// The 95% bootstrap interval of the ratio of `design`'s to `base`'s
/// percentile `ppm`, or None with too few samples beyond it.
pub fn bootstrap_ratio(
    design: &Histogram,
    base: &Histogram,
    ppm: u32,
    seed: u64,
) -> Option<[f64; 2]> {
    let q = f64::from(ppm) / 1e6;
    let tail = |h: &Histogram| h.count as f64 * (1.0 - q);
    if tail(design) < BOOTSTRAP_MIN_TAIL || tail(base) < BOOTSTRAP_MIN_TAIL {
        return None;
    }
    let mut rng = Rng::new(seed, ORDER_STREAM ^ u64::from(ppm));
    let mut ratios: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .filter_map(|_| {
            let b = resampled(base, q, &mut rng);
            let d = resampled(design, q, &mut rng);
            (b > 0.0).then_some(d / b)
        })
        .collect();
    if ratios.len() < BOOTSTRAP_RESAMPLES / 2 {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let at = |p: f64| ratios[((ratios.len() - 1) as f64 * p).round() as usize];
    Some([at(0.025), at(0.975)])
}

/// The name of the baseline column.
pub(crate) const BASELINE: &str = "upstream";

/// The answer block of `runs` (the repeats, each one a whole comparison):
/// one entry per design other than upstream, in the order of `designs`,
/// each ratio over the reliable repeats that measured it.
pub fn summarise(runs: &[&Report], designs: &[String]) -> Summary {
    let mut s = Summary::default();
    let reliable: Vec<&Report> = runs.iter().copied().filter(|r| r.reliable).collect();
    if reliable.len() < runs.len() {
        s.warnings.push(format!(
            "{} of {} repeats left out of the ratios: the VMM stalled during them",
            runs.len() - reliable.len(),
            runs.len()
        ));
    }
    if !designs.iter().any(|d| d == BASELINE) {
        if !designs.is_empty() {
            s.warnings
                .push("no upstream column: no ratios (add upstream to --designs)".into());
        }
        return s;
    }
    let find = |r: &Report, name: &str| r.designs.iter().position(|d| d.design == name);
    // Percentiles on few samples, one line per design and measure: in
    // how many repeats, and the fewest samples.
    for name in designs {
        for what in ["call", "probe"] {
            let thin: Vec<u64> = runs
                .iter()
                .filter_map(|r| {
                    let d = &r.designs[find(r, name)?];
                    let l = if what == "call" {
                        &d.call_latency_ns
                    } else {
                        &d.sched_latency_ns
                    };
                    (l.count > 0 && l.count < MIN_SAMPLES).then_some(l.count)
                })
                .collect();
            if let Some(fewest) = thin.iter().min() {
                s.warnings.push(format!(
                    "{name}: {what} percentiles rest on fewer than {MIN_SAMPLES} samples in {} of {} runs (fewest {fewest}; marked * in the tables): lengthen --duration",
                    thin.len(),
                    runs.len()
                ));
            }
        }
    }
    // The preempt-off figures: phases in which no window ended, and
    // sender P99s read from few windows (one line for all designs).
    let mut thin_windows: Option<u64> = None;
    for name in designs {
        let measured: Vec<&crate::scenario::PreemptOff> = runs
            .iter()
            .filter_map(|r| r.designs[find(r, name)?].preempt_off.as_ref())
            .collect();
        let unmeasured: Vec<(f64, f64)> = runs
            .iter()
            .filter_map(|r| {
                let d = &r.designs[find(r, name)?];
                let p = d.preempt_off.as_ref()?;
                (p.windows == 0).then_some((d.phase_ms, p.window_ms))
            })
            .collect();
        if let Some(&(phase_ms, window_ms)) = unmeasured.first() {
            let why = if phase_ms < window_ms {
                format!("the phase is shorter than one {} ms window: shorten --window or lengthen --duration", sig3(window_ms))
            } else {
                "no section ended a window before its tasks exited: lengthen --duration".to_string()
            };
            s.warnings.push(format!(
                "{name}: no preempt-off window ended inside the phase in {} of {} runs ({why})",
                unmeasured.len(),
                runs.len()
            ));
        }
        let fewest = measured
            .iter()
            .flat_map(|p| p.per_cpu.iter().filter(|c| p.sender_cpus.contains(&c.cpu)))
            .map(|c| c.windows)
            .filter(|&w| w > 0)
            .min();
        thin_windows = match (thin_windows, fewest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    if let Some(w) = thin_windows.filter(|&w| w < MIN_SAMPLES) {
        s.warnings.push(format!(
            "the sender preempt-off P99 rests on as few as {w} windows of one vCPU (below {MIN_SAMPLES}, a P99 is the longest window or next to it): lengthen --duration or shorten --window"
        ));
    }
    // Once for the whole block: a traced phase without steal time.
    let mut traced = runs
        .iter()
        .flat_map(|r| &r.designs)
        .filter_map(|d| d.preempt_off.as_ref());
    if traced.any(|p| p.excl_steal.is_none()) {
        s.warnings
            .push("steal time not available: excl-steal figures unmeasured".to_string());
    }
    for name in designs.iter().filter(|d| *d != BASELINE) {
        let first = runs
            .iter()
            .find_map(|r| find(r, name).map(|i| &r.designs[i]));
        let mut ratios = BTreeMap::new();
        for m in METRICS {
            let per_run: Vec<f64> = reliable
                .iter()
                .filter_map(|r| {
                    let d = &r.designs[find(r, name)?];
                    let b = &r.designs[find(r, BASELINE)?];
                    let (dv, bv) = ((m.value)(d)?, (m.value)(b)?);
                    (bv > 0.0).then_some(dv / bv)
                })
                .collect();
            let mut spread = Spread::of(&per_run);
            if let (Some(sp), [r], Some((hist, ppm))) =
                (&mut spread, reliable.as_slice(), m.samples)
            {
                let raw = r.raw.as_deref().map(|b| &b.guest.designs);
                let pick = |n: &str| raw.and_then(|ds| ds.iter().find(|d| d.label() == n));
                if let (Some(d), Some(b)) = (pick(name), pick(BASELINE)) {
                    sp.ci95 = bootstrap_ratio(hist(d), hist(b), ppm, r.scenario.seed);
                }
            }
            ratios.insert(m.name.to_string(), spread);
        }
        s.entries.push(SummaryEntry {
            design: name.clone(),
            mask_bytes_per_task: first.map(|d| d.mask_bytes_per_task),
            task_field_bytes: first.and_then(task_field_bytes),
            ratios,
        });
    }
    s
}

/// The repeat record of `report`, run as repeat `index` (from 0).
pub fn repeat_info(report: &Report, index: usize) -> RepeatInfo {
    RepeatInfo {
        repeat: index + 1,
        seed: report.scenario.seed,
        order: report.designs.iter().map(|d| d.design.clone()).collect(),
        reliable: report.reliable,
        designs: report.designs.clone(),
    }
}

/// The report of a `--repeat N` run: the first repeat's report, with every
/// repeat's record and the summary over all of them; `orders[k]` is repeat
/// k's design order as indexes into the given order ([`repeat_orders`]).
pub fn combine(mut runs: Vec<Report>, orders: &[Vec<usize>]) -> Report {
    assert!(!runs.is_empty(), "at least one repeat");
    // The given order, by name, from the first repeat's permutation.
    let first = &runs[0];
    let mut given = vec![String::new(); first.designs.len()];
    for (pos, &i) in orders[0].iter().enumerate() {
        if let (Some(slot), Some(d)) = (given.get_mut(i), first.designs.get(pos)) {
            *slot = d.design.clone();
        }
    }
    let summary = summarise(&runs.iter().collect::<Vec<_>>(), &given);
    let repeats = runs
        .iter()
        .enumerate()
        .map(|(k, r)| repeat_info(r, k))
        .collect();
    let mut report = runs.swap_remove(0);
    report.summary = summary.entries;
    report.stats_warnings = summary.warnings;
    report.repeats = repeats;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sig3() {
        assert_eq!(sig3(5574.3), "5570");
        assert_eq!(sig3(67.0), "67.0");
        assert_eq!(sig3(0.6631), "0.663");
        assert_eq!(sig3(15436.5), "15400");
        assert_eq!(sig3(1.0), "1.00");
        assert_eq!(sig3(999.6), "1000");
        assert_eq!(sig3(0.0), "0");
        assert_eq!(sig3(f64::NAN), "-");
    }

    #[test]
    fn test_spread_median_min_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Spread::of(&[1.0, 2.0]).unwrap().median, 1.5);
        assert!(Spread::of(&[]).is_none());
        assert_eq!(
            s.sentence("upstream"),
            "2.00x upstream (1.00-3.00x over 3 repeats)"
        );
    }

    #[test]
    fn test_repeat_orders_seeded_and_shuffled() {
        let a = repeat_orders(1, 4, 3);
        assert_eq!(a, repeat_orders(1, 4, 3), "same seed, same orders");
        assert_eq!(a.len(), 3);
        for o in &a {
            let mut s = o.clone();
            s.sort_unstable();
            assert_eq!(s, vec![0, 1, 2, 3], "a permutation");
        }
        assert_ne!(repeat_orders(2, 4, 3), a, "another seed, other orders");
        // Over many repeats every position sees more than one design.
        let many = repeat_orders(1, 4, 40);
        assert!((0..4).all(|p| many.iter().any(|o| o[p] != many[0][p])));
        assert_eq!(repeat_orders(1, 4, 1), vec![vec![0, 1, 2, 3]]);
    }

    #[test]
    fn test_repeat_config_permutes_designs_and_pv_together() {
        let mut base = MachineConfig::new(2);
        base.designs = vec![
            abi::Design::Upstream,
            abi::Design::TaskLocal,
            abi::Design::Stack,
        ];
        base.design_pv = vec![0, abi::pv::SCHED_YIELD, 0];
        base.seed = 7;
        let c = repeat_config(&base, 2, &[2, 0, 1]);
        assert_eq!(c.seed, 9);
        assert_eq!(
            c.designs,
            vec![
                abi::Design::Stack,
                abi::Design::Upstream,
                abi::Design::TaskLocal
            ]
        );
        assert_eq!(c.design_pv, vec![0, 0, abi::pv::SCHED_YIELD]);
    }

    #[test]
    fn test_bootstrap_interval_brackets_the_ratio() {
        let (mut a, mut b) = (Histogram::new(), Histogram::new());
        for i in 0..20_000u64 {
            a.record(1000 + i % 1000);
            b.record(2000 + 2 * (i % 1000));
        }
        let [lo, hi] = bootstrap_ratio(&a, &b, 990_000, 1).unwrap();
        let r = a.quantile_ppm(990_000) as f64 / b.quantile_ppm(990_000) as f64;
        assert!(lo <= r && r <= hi && hi - lo < 0.05, "{lo} {r} {hi}");
        let mut few = Histogram::new();
        few.record(5);
        assert!(bootstrap_ratio(&few, &b, 990_000, 1).is_none());
    }
}
