//! The `--svg` plot: latency percentile curves, one per design, in two
//! panels: the cross-call latency and the latency probe; a third gives the
//! preempt-off tracer's window maxima (all vCPUs) when it ran. Both axes are
//! logarithmic, as HdrHistogram plots them: latency across, and the
//! percentile up a tail axis (`-log10(1 - p)`: 50, 90, 99, 99.9, 99.99 are
//! evenly spaced), so the tail the designs differ in gets the room, not the
//! median. Hand-written SVG from the histogram buckets: each curve goes
//! through the upper end of every non-empty bucket (at most 0.78% wide) at
//! its cumulative fraction; the legend gives each curve's sample count.

use std::fmt::Write;

use abi::hist::{bucket_high, BUCKETS};
use abi::Histogram;

use crate::scenario::{cycles_to_ns, Report};

/// Curve colours, one per design slot.
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 300.0;
const LEFT: f64 = 60.0;
const TOP: f64 = 60.0;
const GAP: f64 = 90.0;
const BOTTOM: f64 = 70.0;

/// Percentile ticks of the tail axis, and its top (99.99th: a larger
/// fraction, the maximum included, is drawn at the top).
const TAIL_TICKS: [(f64, &str); 6] = [
    (0.0, "0"),
    (0.5, "50"),
    (0.9, "90"),
    (0.99, "99"),
    (0.999, "99.9"),
    (0.9999, "99.99"),
];
/// The top of the tail axis: 99.99% (four nines).
pub const TAIL_TOP: f64 = 4.0;

/// Height on the tail axis of cumulative fraction `f` (0 at the bottom,
/// [`TAIL_TOP`] for 99.99% and above).
pub fn tail(f: f64) -> f64 {
    if f >= 1.0 - 10f64.powf(-TAIL_TOP) {
        TAIL_TOP
    } else {
        -(1.0 - f.max(0.0)).log10()
    }
}

/// Escapes text for XML.
pub fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// The CDF points of `h` as (ns, fraction), one per non-empty bucket.
pub fn cdf_points(h: &Histogram, tsc_khz: u64) -> Vec<(f64, f64)> {
    if h.count == 0 {
        return Vec::new();
    }
    let total: u64 = h.buckets.iter().map(|&b| u64::from(b)).sum();
    let total = total.max(1) as f64;
    let mut seen = 0u64;
    let mut out = Vec::new();
    for (i, &b) in h.buckets.iter().enumerate().take(BUCKETS) {
        if b == 0 {
            continue;
        }
        seen += u64::from(b);
        let x = bucket_high(i).min(h.max).max(h.min.min(h.max));
        out.push((
            (cycles_to_ns(x, tsc_khz) as f64).max(1.0),
            seen as f64 / total,
        ));
    }
    out
}

fn label_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{} us", ns / 1e3)
    } else {
        format!("{ns} ns")
    }
}

/// One panel: axes, decade ticks, one `<path class="curve">` per design.
fn panel(out: &mut String, x0: f64, title: &str, class: &str, curves: &[(&str, Vec<(f64, f64)>)]) {
    let (mut lo, mut hi) = (f64::MAX, 0.0f64);
    for (_, pts) in curves {
        for &(x, _) in pts {
            lo = lo.min(x);
            hi = hi.max(x);
        }
    }
    if hi == 0.0 {
        (lo, hi) = (1e3, 1e6);
    }
    let d_lo = lo.log10().floor();
    let d_hi = hi.log10().ceil().max(d_lo + 1.0);
    let px = |ns: f64| x0 + (ns.log10() - d_lo) / (d_hi - d_lo) * PANEL_W;
    let py = |f: f64| TOP + (1.0 - tail(f) / TAIL_TOP) * PANEL_H;
    let _ = writeln!(
        out,
        r#"<g class="panel"><text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle">{}</text>"#,
        x0 + PANEL_W / 2.0,
        TOP - 12.0,
        escape(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{x0:.1}" y="{TOP:.1}" width="{PANEL_W:.1}" height="{PANEL_H:.1}" fill="none" stroke="#000"/>"##
    );
    let mut d = d_lo;
    while d <= d_hi + 1e-9 {
        let x = px(10f64.powf(d));
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP:.1}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            TOP + PANEL_H,
            TOP + PANEL_H + 16.0,
            escape(&label_ns(10f64.powf(d)))
        );
        d += 1.0;
    }
    for (f, label) in TAIL_TICKS {
        let y = py(f);
        let _ = writeln!(
            out,
            r##"<line x1="{x0:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text class="ytick" x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{label}</text>"##,
            x0 + PANEL_W,
            x0 - 6.0,
            y + 4.0
        );
    }
    if curves.iter().all(|(_, pts)| pts.is_empty()) {
        let _ = writeln!(
            out,
            r##"<text class="no-data" x="{:.1}" y="{:.1}" font-size="14" fill="#888" text-anchor="middle">no data</text>"##,
            x0 + PANEL_W / 2.0,
            TOP + PANEL_H / 2.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">latency (log scale)</text>"#,
        x0 + PANEL_W / 2.0,
        TOP + PANEL_H + 36.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">percentile (tail scale)</text>"#,
        x0 - 42.0,
        TOP + PANEL_H / 2.0,
        x0 - 42.0,
        TOP + PANEL_H / 2.0
    );
    for (i, (name, pts)) in curves.iter().enumerate() {
        let mut d = String::new();
        for (j, &(x, f)) in pts.iter().enumerate() {
            if j == 0 {
                let _ = write!(d, "M{:.1},{:.1}", px(x), py(0.0));
            }
            let _ = write!(d, " L{:.1},{:.1}", px(x), py(f));
        }
        let _ = writeln!(
            out,
            r#"<path class="{class}" data-design="{}" d="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            escape(name),
            d,
            COLOURS[i % COLOURS.len()]
        );
    }
    let _ = writeln!(out, "</g>");
}

/// The SVG of `designs` (name, cross-call latency, probe latency
/// histograms, in TSC cycles) with `title` on top.
pub fn cdf_svg(title: &str, designs: &[(&str, &Histogram, &Histogram)], tsc_khz: u64) -> String {
    cdf_svg_with(title, designs, &[], tsc_khz)
}

/// [`cdf_svg`] with a third panel when `preempt_off` is not empty: each
/// design's preempt-off window maxima (all vCPUs), curves of class
/// `poff-curve`.
pub fn cdf_svg_with(
    title: &str,
    designs: &[(&str, &Histogram, &Histogram)],
    preempt_off: &[(&str, &Histogram)],
    tsc_khz: u64,
) -> String {
    let panels = if preempt_off.is_empty() { 2.0 } else { 3.0 };
    let width = LEFT + panels * PANEL_W + (panels - 1.0) * GAP + 30.0;
    let labels: Vec<String> = designs
        .iter()
        .map(|(name, calls, probes)| {
            format!("{name} (n={} calls, {} probes)", calls.count, probes.count)
        })
        .collect();
    // Four legend entries a row when they fit in 200 px (about 6.5 px a
    // character at 12 px), else two: labels never run into each other.
    let per_row = if labels.iter().any(|l| l.len() > 28) {
        2
    } else {
        4
    };
    let legend_rows = designs.len().div_ceil(per_row) as f64;
    let height = TOP + PANEL_H + BOTTOM + legend_rows * 18.0;
    let mut out = String::new();
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#fff"/><text x="{:.1}" y="22" font-size="15" text-anchor="middle">{}</text>"##,
        width / 2.0,
        escape(title)
    );
    let calls: Vec<_> = designs
        .iter()
        .map(|(n, c, _)| (*n, cdf_points(c, tsc_khz)))
        .collect();
    let probe: Vec<_> = designs
        .iter()
        .map(|(n, _, p)| (*n, cdf_points(p, tsc_khz)))
        .collect();
    panel(
        &mut out,
        LEFT,
        "cross-call latency (entry to return)",
        "curve",
        &calls,
    );
    panel(
        &mut out,
        LEFT + PANEL_W + GAP,
        "latency probe (how late a periodic task ran)",
        "curve",
        &probe,
    );
    if !preempt_off.is_empty() {
        let poff: Vec<_> = preempt_off
            .iter()
            .map(|(n, h)| (*n, cdf_points(h, tsc_khz)))
            .collect();
        panel(
            &mut out,
            LEFT + 2.0 * (PANEL_W + GAP),
            "preempt-off: longest section per window, per vCPU",
            "poff-curve",
            &poff,
        );
    }
    let _ = writeln!(out, r#"<g class="legend">"#);
    for (i, name) in labels.iter().enumerate() {
        let x = LEFT + (i % per_row) as f64 * (800.0 / per_row as f64);
        let y = TOP + PANEL_H + 56.0 + (i / per_row) as f64 * 18.0;
        let _ = writeln!(
            out,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            x + 24.0,
            COLOURS[i % COLOURS.len()],
            x + 30.0,
            y + 4.0,
            escape(name)
        );
    }
    let _ = writeln!(out, "</g>\n</svg>");
    out
}

impl Report {
    /// The `--svg` plot of this report (None when the raw histograms are
    /// not at hand, e.g. a report read back from JSON).
    pub fn svg(&self) -> Option<String> {
        let raw = self.raw.as_ref()?;
        let s = &self.scenario;
        let title = format!(
            "ipivirt {}: {} vCPUs on host CPUs {:?}, preempt {}, {} s per design ({})",
            s.workload, s.vcpus, s.host_cpus, s.preempt.mode, s.duration_s, self.platform.verdict
        );
        // The names are the model's; the curves need the samples behind
        // its percentiles (the raw histograms, in the same order).
        let labels: Vec<&str> = self.designs.iter().map(|d| d.design.as_str()).collect();
        let designs: Vec<_> = raw
            .guest
            .designs
            .iter()
            .zip(&labels)
            .map(|(d, l)| (*l, &*d.call_latency, &*d.sched_latency))
            .collect();
        let poff: Vec<_> = raw
            .guest
            .designs
            .iter()
            .zip(&labels)
            .filter(|(d, _)| d.preempt_off.enabled)
            .map(|(d, l)| (*l, &*d.preempt_off.window_max))
            .collect();
        Some(cdf_svg_with(&title, &designs, &poff, self.tsc_khz))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Histogram {
        let mut h = Histogram::new();
        for &v in values {
            h.record(v);
        }
        h
    }

    #[test]
    fn test_cdf_points_end_at_one_and_grow() {
        let pts = cdf_points(&hist(&[1000, 2000, 2000, 50_000]), 1_000_000);
        assert_eq!(pts.last().unwrap().1, 1.0);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!(cdf_points(&Histogram::new(), 1000).is_empty());
    }

    #[test]
    fn test_cdf_svg_one_path_per_design_per_panel() {
        let (a, b) = (hist(&[1000, 3000]), hist(&[10, 100_000]));
        let svg = cdf_svg(
            "t <&>",
            &[("upstream", &a, &b), ("task-local", &b, &a)],
            2_600_000,
        );
        assert_eq!(svg.matches("<path class=\"curve\"").count(), 4);
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert!(svg.trim_end().ends_with("</svg>"));
        let with = cdf_svg_with("t", &[("upstream", &a, &b)], &[("upstream", &b)], 2_600_000);
        assert_eq!(with.matches("<path class=\"curve\"").count(), 2);
        assert_eq!(with.matches("<path class=\"poff-curve\"").count(), 1);
    }

    #[test]
    fn test_tail_axis_spaces_the_percentiles_evenly() {
        assert_eq!(tail(0.0), 0.0);
        for (f, want) in [(0.9, 1.0), (0.99, 2.0), (0.999, 3.0)] {
            assert!((tail(f) - want).abs() < 1e-9, "{f}");
        }
        assert_eq!(tail(1.0), TAIL_TOP);
        assert_eq!(tail(0.99995), TAIL_TOP);
    }

    #[test]
    fn test_legend_gives_n_and_empty_panel_says_no_data() {
        let (a, none) = (hist(&[1000, 3000, 5000]), Histogram::new());
        let svg = cdf_svg("t", &[("upstream", &a, &none)], 2_600_000);
        assert!(svg.contains("upstream (n=3 calls, 0 probes)"), "{svg}");
        assert_eq!(svg.matches("class=\"no-data\"").count(), 1);
    }

    #[test]
    fn test_escape_specials() {
        assert_eq!(escape("a\"b'c"), "a&quot;b&apos;c");
    }
}
