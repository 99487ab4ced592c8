//! The preempt-off tracer (issue 15) on real VMs: a pinned section of
//! known length, made by the `pin-preempt` test hook on one vCPU, must be
//! reported on that vCPU, attributed to the hook, within 10% of its length
//! (the length the hook measured itself: at least the one asked for, more
//! when the host held the vCPU as the spin ended), and so must its length
//! less the host's steal time where the host stole next to nothing; under
//! injection every steal-excluded figure is at most its raw twin; the
//! tracer switched off must report nothing (null), never zeros; a bad
//! `--window` exits 2.

mod common;

use serde_json::Value;

/// The hook's section: 100 ms, long against anything else a quiet
/// 2-vCPU run pins for, and against a host's scheduling slice.
const PIN_US: u64 = 100_000;

fn scenario<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--quiet",
        "--vcpus",
        "2",
        "--workload",
        "shootdown",
        "--designs",
        "upstream",
        "--preempt",
        "none",
        "--migrate-every",
        "0",
        "--duration",
        "1500ms",
        "--window",
        "250ms",
        "--timeout",
        "180",
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs the scenario with `extra`, guest console on; returns the report and
/// the console (stderr).
fn run_console(extra: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut args = scenario(extra);
    args.retain(|a| *a != "--quiet");
    args.extend(["--json", json.to_str().unwrap()]);
    let (_, stderr) = common::ipivirt_exits(&args, 0);
    (common::read_json(&json), stderr)
}

#[test]
fn test_tracer_sees_the_pinned_section_of_the_hook() {
    if !common::kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let arg = PIN_US.to_string();
    let (r, console) = run_console(&[
        "--test-hook",
        "pin-preempt",
        "--test-hook-vcpu",
        "1",
        "--test-hook-arg",
        &arg,
    ]);
    // The section as the hook measured it itself: at least what it asked
    // for, more when the host held the vCPU as the spin ended.
    let cycles: u64 = console
        .lines()
        .find_map(|l| l.split("pin-preempt: vCPU 1 pinned for ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the hook's line is missing: {console}"));
    let khz = r["tsc_khz"].as_u64().unwrap();
    let actual = (u128::from(cycles) * 1_000_000 / u128::from(khz)) as u64;
    let want = PIN_US * 1000;
    // (The guest counts whole cycles per microsecond: 0.1% of rounding.)
    assert!(
        actual >= want - want / 1000,
        "the hook pinned {actual} ns, asked {want}"
    );

    let p = &r["designs"][0]["preempt_off"];
    assert_eq!(p["window_ms"].as_f64().map(f64::round), Some(250.0), "{p}");
    assert_eq!(p["unmatched"], 0, "{p}");
    let hook = &p["causes"]["test_hook"];
    assert_eq!(hook["windows"], 1, "the hook's window: {p}");
    let ns = hook["max_ns"]
        .as_u64()
        .expect("the hook's section measured");
    assert!(
        ns >= actual && ns <= actual + actual / 10,
        "tracer: {ns} ns; the hook pinned {actual} ns (asked {want}): {p}"
    );
    // On the hooked vCPU; vCPU 0 is traced too.
    let cpu1 = &p["per_cpu"][1];
    assert!(cpu1["max_ns"].as_u64().unwrap() >= ns, "{cpu1}");
    assert!(p["max_ns"].as_u64().unwrap() >= ns, "{p}");
    assert!(p["per_cpu"][0]["windows"].as_u64().unwrap() > 0, "{p}");

    // Less the host's steal time: never above the raw figure, and the
    // hook's length when the host stole (next to) nothing from vCPU 1.
    let Some(steal) = steal_ns(&r) else {
        assert!(p["excl_steal"].is_null(), "no steal time, no figure: {p}");
        return;
    };
    check_excl_steal(p);
    let excl = p["excl_steal"]["per_cpu"][1]["max_ns"]
        .as_u64()
        .expect("vCPU 1's section measured less steal");
    assert!(excl <= cpu1["max_ns"].as_u64().unwrap(), "{p}");
    if steal[1] < want / 20 {
        assert!(
            excl >= want - want / 10 && excl <= want + want / 10,
            "excl. steal {excl} ns, asked {want} (vCPU 1 steal {} ns): {p}",
            steal[1]
        );
    }
}

/// Each vCPU's steal time in the run (None: steal time not tracked).
fn steal_ns(r: &Value) -> Option<Vec<u64>> {
    let s = r["host"]["steal_ns"].as_array()?;
    Some(s.iter().map(|v| v.as_u64().unwrap()).collect())
}

/// The shape of `designs[].preempt_off.excl_steal` and its bound: the same
/// windows per vCPU, every figure at most its raw twin (null with it).
fn check_excl_steal(p: &Value) {
    let e = &p["excl_steal"];
    assert!(e.is_object(), "steal time tracked: {p}");
    let le = |a: &Value, b: &Value, what: &str| match (a.as_u64(), b.as_u64()) {
        (Some(x), Some(y)) => assert!(x <= y, "{what}: excl {x} > raw {y}: {p}"),
        (None, None) => {}
        _ => panic!("{what}: excl {a} and raw {b} measured apart: {p}"),
    };
    for k in ["p50_ns", "p99_ns", "max_ns", "sender_p99_ns"] {
        le(&e[k], &p[k], k);
    }
    let (ex, raw) = (
        e["per_cpu"].as_array().unwrap(),
        p["per_cpu"].as_array().unwrap(),
    );
    assert_eq!(ex.len(), raw.len(), "{p}");
    for (x, y) in ex.iter().zip(raw) {
        assert_eq!(
            (&x["cpu"], &x["windows"]),
            (&y["cpu"], &y["windows"]),
            "{p}"
        );
        for k in ["p50_ns", "p99_ns", "max_ns"] {
            le(&x[k], &y[k], k);
        }
    }
}

/// A series-like run (one initiator, preemption injected on every host
/// CPU): the steal-excluded figures are at most the raw ones on every
/// vCPU, the summary carries their ratio, and without steal time the
/// report says so once.
#[test]
fn test_excl_steal_figures_under_injection() {
    if !common::kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let (stdout, r) = common::ipivirt_json(&[
        "run",
        "--quiet",
        "--vcpus",
        "4",
        "--initiators",
        "0",
        "--designs",
        "upstream,task-local",
        "--preempt",
        "antagonist",
        "--preempt-len",
        "3ms",
        "--preempt-every",
        "10ms",
        "--migrate-every",
        "0",
        "--duration",
        "1s",
        "--window",
        "50ms",
        "--timeout",
        "180",
    ]);
    let tracked = steal_ns(&r).is_some();
    for d in r["designs"].as_array().unwrap() {
        let p = &d["preempt_off"];
        assert!(p.is_object(), "{d}");
        if tracked {
            check_excl_steal(p);
        } else {
            assert!(p["excl_steal"].is_null(), "{p}");
        }
    }
    for e in r["summary"].as_array().unwrap() {
        let m = &e["sender_preempt_off_p99_excl_steal"];
        assert!(m.is_null() || m["n"] == 1, "{e}");
        assert_eq!(
            m.is_null(),
            !tracked || e["sender_preempt_off_p99"].is_null(),
            "{e}"
        );
    }
    let warned = r["stats_warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w.as_str().unwrap().contains("steal time not available"))
        .count();
    assert_eq!(warned, usize::from(!tracked), "{r}");
    assert!(
        stdout.contains("preempt-off p99 excl. steal (us)"),
        "the design table's row: {stdout}"
    );
}

#[test]
fn test_tracer_off_reports_null_not_zero() {
    if !common::kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let r = common::ipivirt_json(&scenario(&["--no-preempt-trace"])).1;
    let d = &r["designs"][0];
    assert!(d["preempt_off"].is_null(), "{d}");
    // The probe split does not depend on the tracer.
    assert!(d["probe_arrival_ns"]["count"].as_u64().unwrap() > 0, "{d}");
}

#[test]
fn test_bad_window_exits_2_with_the_reason() {
    for (window, why) in [
        ("0", "at least 1us"),
        ("5000s", "at most 4000s"),
        ("soon", "--window"),
    ] {
        let (_, stderr) = common::ipivirt_exits(&["run", "--quiet", "--window", window], 2);
        assert!(stderr.contains(why), "--window {window}: {stderr}");
    }
}
