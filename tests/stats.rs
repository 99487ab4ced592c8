//! Statistics you can quote (issue 15, items 6 and 7), on real VMs:
//! `--repeat N` shuffles the design order per repeat from the seed and
//! records it, the answer block comes first in the text and as JSON
//! `summary` with `n` = repeats, an unmeasured ratio is null and `-`, and
//! a tiny run warns that its percentiles rest on few samples. Short runs,
//! no injection, no timing thresholds.

mod common;

use serde_json::Value;

const DESIGNS: [&str; 4] = ["upstream", "task-local", "stack", "alloc-in-path"];

/// `run` on 2 vCPUs without injection, quiet, with `extra`.
fn quiet(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec![
        "run",
        "--quiet",
        "--vcpus",
        "2",
        "--preempt",
        "none",
        "--migrate-every",
        "0",
        "--timeout",
        "300",
    ];
    args.extend_from_slice(extra);
    args
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn test_repeat_shuffles_the_design_order_seeded_and_summarises_over_n() {
    if !common::kvm_or_skip() {
        return;
    }
    let (stdout, r) = common::ipivirt_json(&quiet(&[
        "--duration",
        "50ms",
        "--designs",
        "upstream,task-local,stack,alloc-in-path",
        "--seed",
        "5",
        "--repeat",
        "3",
    ]));
    // Every repeat recorded: its seed and the order the guest ran.
    let repeats = r["repeats"].as_array().expect("repeats[]");
    assert_eq!(repeats.len(), 3, "{r}");
    let expected = ipivirt::stats::repeat_orders(5, DESIGNS.len(), 3);
    let mut orders = Vec::new();
    for (k, rep) in repeats.iter().enumerate() {
        assert_eq!(rep["repeat"], k as u64 + 1);
        assert_eq!(rep["seed"], 5 + k as u64, "seed --seed + repeat - 1");
        let order = names(&rep["order"]);
        // The guest ran them in the recorded order (its design results
        // come back in Control::designs order).
        let ran: Vec<String> = rep["designs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["design"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ran, order);
        let want: Vec<String> = expected[k].iter().map(|&i| DESIGNS[i].into()).collect();
        assert_eq!(order, want, "the seeded shuffle of repeat {}", k + 1);
        orders.push(order);
    }
    assert!(
        orders.iter().any(|o| o != &orders[0]),
        "the order differs between repeats: {orders:?}"
    );
    // The same seed gives the same orders; another seed others.
    assert_eq!(ipivirt::stats::repeat_orders(5, 4, 3), expected);
    assert_ne!(ipivirt::stats::repeat_orders(6, 4, 3), expected);
    // The top-level report is the first repeat's.
    assert_eq!(names(&r["scenario"]["designs"]), orders[0]);

    // The answer block: one entry per design against upstream, n = 3.
    let summary = r["summary"].as_array().expect("summary[]");
    let designs: Vec<&str> = summary
        .iter()
        .map(|e| e["design"].as_str().unwrap())
        .collect();
    assert_eq!(
        designs,
        &DESIGNS[1..],
        "in the given order, upstream left out"
    );
    for e in summary {
        assert!(e["mask_bytes_per_task"].is_u64(), "{e}");
        assert!(e.get("task_field_bytes").is_some(), "{e}");
        // Not measured by this build: null, never 0.
        // 50 ms phases end before a 100 ms window does.
        assert!(e["preempt_off_p99"].is_null(), "{e}");
        assert!(e["sender_preempt_off_p99"].is_null(), "{e}");
        assert!(e["sender_preempt_off_p99_excl_steal"].is_null(), "{e}");
        for m in ["probe_p99", "call_p99", "calls_per_s"] {
            let s = &e[m];
            assert_eq!(s["n"], 3, "{m}: {e}");
            let (lo, mid, hi) = (
                s["min"].as_f64().unwrap(),
                s["median"].as_f64().unwrap(),
                s["max"].as_f64().unwrap(),
            );
            assert!(0.0 < lo && lo <= mid && mid <= hi, "{m}: {e}");
        }
    }
    // First in the text, one sentence per design.
    assert!(stdout.starts_with("answer: "), "{stdout}");
    for d in &DESIGNS[1..] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{d}: ")))
            .unwrap_or_else(|| panic!("no sentence for {d}: {stdout}"));
        assert!(line.contains("over 3 repeats"), "{line}");
        assert!(line.contains("; preempt-off P99 -;"), "{line}");
        assert!(
            line.contains("; probe P99 ") && line.contains("x upstream ("),
            "{line}"
        );
    }
    assert!(
        stdout.contains("warning: upstream: no preempt-off window ended inside the phase in 3 of 3 runs (the phase is shorter than one"),
        "{stdout}"
    );
    assert!(
        stdout.contains("repeat 3/3: seed 7, designs in the order "),
        "{stdout}"
    );
    // The report reads back into the library's type.
    let back: ipivirt::Report = serde_json::from_value(r).unwrap();
    assert_eq!(back.repeats.len(), 3);
}

#[test]
fn test_tiny_run_warns_of_few_samples_and_a_missing_ratio_is_null_and_a_dash() {
    if !common::kvm_or_skip() {
        return;
    }
    // 2 vCPUs, a probe every 5 ms, 20 ms per design: at most a dozen probe
    // samples per design.
    let (stdout, r) = common::ipivirt_json(&quiet(&[
        "--duration",
        "20ms",
        "--probe-period",
        "5ms",
        "--designs",
        "upstream,task-local",
    ]));
    for d in r["designs"].as_array().unwrap() {
        let probe = &d["sched_latency_ns"];
        let n = probe["count"].as_u64().unwrap();
        assert!(n > 0 && n < 100, "{probe}");
        assert_eq!(probe["few_samples"], true, "{probe}");
    }
    let warned = |text: &str, d: &str| {
        text.contains(&format!(
            "{d}: probe percentiles rest on fewer than 100 samples"
        ))
    };
    assert!(
        warned(&stdout, "upstream") && warned(&stdout, "task-local"),
        "{stdout}"
    );
    let table = stdout
        .lines()
        .find(|l| l.starts_with("probe p99 (us)"))
        .expect("probe p99 row");
    assert!(table.trim_end().ends_with('*'), "marked: {table}");
    assert!(
        stdout.contains("* rests on fewer than 100 samples"),
        "{stdout}"
    );
    let w = r["stats_warnings"].as_array().unwrap();
    assert!(
        w.iter().any(|w| warned(w.as_str().unwrap(), "upstream")),
        "{r}"
    );
    assert_eq!(r["summary"][0]["probe_p99"]["n"], 1, "{r}");

    // The same run with upstream's probe unmeasured: that ratio is null in
    // the model and `-` in the text, the others still there.
    let mut missing = r.clone();
    let up = missing["designs"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|d| d["design"] == "upstream")
        .unwrap();
    up["sched_latency_ns"] = serde_json::json!({"count": 0, "p50": null, "p90": null,
        "p99": null, "p999": null, "max": null, "mean": null});
    let report: ipivirt::Report = serde_json::from_value(missing).unwrap();
    let again = ipivirt::stats::combine(vec![report], &[vec![0, 1]]);
    let e = &again.summary[0];
    assert_eq!(e.design, "task-local");
    assert!(e.ratios["probe_p99"].is_none(), "{e:?}");
    assert!(e.ratios["call_p99"].is_some(), "{e:?}");
    let json = serde_json::to_value(&again).unwrap();
    assert!(json["summary"][0]["probe_p99"].is_null());
    assert_eq!(
        json["designs"][0]["sched_latency_ns"]["p99"],
        Value::Null,
        "unmeasured is null, never 0"
    );
    let text = ipivirt::stats::summary_text(&again);
    let line = text
        .lines()
        .find(|l| l.starts_with("task-local: "))
        .unwrap();
    assert!(line.contains("; probe P99 -;"), "{line}");
    assert!(line.contains("call P99 "), "{line}");
}
