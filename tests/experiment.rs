//! The experiment's outputs on real VMs: the `--json` report against the
//! interface contract, the `--svg` plot, the floor of a `ping` run, and a
//! sweep of two small cells. Short runs (2 vCPUs, 300 ms per design, no
//! injection) with a timeout; no timing thresholds.

mod common;

use common::json::{number, uint};
use serde_json::Value;

const QUIET: [&str; 8] = [
    "--quiet",
    "--preempt",
    "none",
    "--migrate-every",
    "0",
    "--timeout",
    "120",
    "--duration=300ms",
];

/// Runs `ipivirt ARGS` with [`QUIET`] and `--json` appended; it must exit
/// 0. Returns its stdout and the JSON report.
fn quiet_json(args: &[&str]) -> (String, Value) {
    let mut all = args.to_vec();
    all.extend(QUIET);
    common::ipivirt_json(&all)
}

/// A latency object: every field there, percentiles monotone.
fn check_latency(v: &Value, what: &str) -> u64 {
    for f in ["count", "p50", "p90", "p99", "p999", "max"] {
        assert!(
            v.get(f).and_then(Value::as_u64).is_some(),
            "{what}.{f}: {v}"
        );
    }
    let q: Vec<u64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|f| v[f].as_u64().unwrap())
        .collect();
    assert!(
        q.windows(2).all(|w| w[0] <= w[1]),
        "{what} not monotone: {v}"
    );
    v["count"].as_u64().unwrap()
}

/// Checks the `provenance` object (issue 17): the command as run, the
/// build, the host, and the load at start and end.
fn check_provenance(p: &Value) {
    let command: Vec<&str> = p["command"]
        .as_array()
        .expect("provenance.command is the argument list")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(command[0].ends_with("ipivirt"), "{p}");
    assert!(command.contains(&"--quiet"), "{p}");
    assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
    // Built from a git checkout here: the commit is known.
    let commit = p["commit"].as_str().expect("a commit when built from git");
    assert!(
        commit.len() >= 40 && commit[..40].chars().all(|c| c.is_ascii_hexdigit()),
        "{p}"
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(p["host_kernel"], kernel.trim());
    assert!(
        p["kvm_module"].is_string() || p["kvm_module"].is_null(),
        "{p}"
    );
    // A run's report: the kernel that ran; a sweep's: the mode asked for.
    let mode = p["guest_mode"].as_str().unwrap_or_default();
    assert!(
        ["plain", "pvm-native", "auto", "pvm"].contains(&mode),
        "{p}"
    );
    for f in ["load_start", "load_end"] {
        let l = p[f].as_array().unwrap_or_else(|| panic!("{f}: {p}"));
        assert_eq!(l.len(), 3);
        assert!(
            l.iter().all(|v| v.as_f64().is_some_and(|v| v >= 0.0)),
            "{p}"
        );
    }
}

/// The probe's lateness split (issue 15): arrival and dispatch are
/// histograms of the same probe runs as `sched_latency_ns` (every run the
/// timer woke), and each part is at most the whole's maximum plus a bucket.
fn check_probe_split(d: &Value, probes: u64) {
    let arrival = check_latency(&d["probe_arrival_ns"], "probe_arrival_ns");
    let dispatch = check_latency(&d["probe_dispatch_ns"], "probe_dispatch_ns");
    assert_eq!(arrival, dispatch, "{d}");
    assert!(arrival > 0 && arrival <= probes, "{d}");
    let whole = d["sched_latency_ns"]["max"].as_u64().unwrap();
    for part in ["probe_arrival_ns", "probe_dispatch_ns"] {
        let max = d[part]["max"].as_u64().unwrap();
        assert!(
            max <= whole + whole / 16 + 1000,
            "{part} above the whole: {d}"
        );
    }
}

/// The preempt-off object (issue 15): window, the P50/P99/max of the window
/// maxima (ordered; null only without windows), one entry per vCPU whose
/// windows add up, every cause named, and no section left unmatched.
fn check_preempt_off(d: &Value, vcpus: u64) {
    let p = &d["preempt_off"];
    assert!(p["window_ms"].as_f64().is_some_and(|w| w > 0.0), "{p}");
    let windows = uint(p, "/windows");
    assert!(windows > 0, "no window measured: {p}");
    let q: Vec<u64> = ["p50_ns", "p99_ns", "max_ns"]
        .iter()
        .map(|f| p[f].as_u64().unwrap_or_else(|| panic!("{f}: {p}")))
        .collect();
    assert!(q[0] <= q[1] && q[1] <= q[2] && q[2] > 0, "{p}");
    assert!(uint(p, "/sections") > 0, "{p}");
    assert_eq!(
        uint(p, "/unmatched"),
        0,
        "a section end the tracer missed: {p}"
    );
    let per_cpu = p["per_cpu"].as_array().expect("per_cpu");
    assert_eq!(per_cpu.len() as u64, vcpus, "{p}");
    let mut sum = 0;
    for (i, c) in per_cpu.iter().enumerate() {
        assert_eq!(uint(c, "/cpu"), i as u64);
        let n = uint(c, "/windows");
        sum += n;
        if n == 0 {
            assert!(c["p99_ns"].is_null(), "{c}");
            continue;
        }
        let (p50, p99, max) = (uint(c, "/p50_ns"), uint(c, "/p99_ns"), uint(c, "/max_ns"));
        assert!(p50 <= p99 && p99 <= max && max <= q[2], "{c}");
    }
    assert_eq!(sum, windows, "{p}");
    let causes = p["causes"].as_object().expect("causes");
    for name in [
        "other",
        "sched",
        "send",
        "csd_lock",
        "csd_lock_wait",
        "test_hook",
    ] {
        let c = &causes[name];
        assert!(c["windows"].is_u64(), "{name}: {p}");
        assert_eq!(c["max_ns"].is_null(), c["windows"] == 0, "{name}: {p}");
    }
    let attributed: u64 = causes
        .values()
        .map(|c| c["windows"].as_u64().unwrap())
        .sum();
    assert!(attributed <= windows, "{p}");
    // Less the host's steal time: null, or the same windows per vCPU with
    // every figure at most its raw twin.
    let e = &p["excl_steal"];
    if e.is_null() {
        return;
    }
    for f in ["p50_ns", "p99_ns", "max_ns", "sender_p99_ns"] {
        assert!(
            e[f].as_u64().unwrap() <= uint(p, &format!("/{f}")),
            "{f}: {p}"
        );
    }
    let ex = e["per_cpu"].as_array().expect("excl_steal.per_cpu");
    assert_eq!(ex.len(), per_cpu.len(), "{p}");
    for (x, c) in ex.iter().zip(per_cpu) {
        assert_eq!(
            (&x["cpu"], &x["windows"]),
            (&c["cpu"], &c["windows"]),
            "{p}"
        );
        for f in ["p50_ns", "p99_ns", "max_ns"] {
            assert_eq!(x[f].is_null(), c[f].is_null(), "{f}: {p}");
            assert!(x[f].as_u64() <= c[f].as_u64(), "{f}: {p}");
        }
    }
}

/// Checks a report against the contract; returns the design names.
fn check_report(r: &Value, vcpus: u64) -> Vec<String> {
    assert!(r["version"].is_string());
    assert_eq!(r["status"], "ok", "{r}");
    assert!(r["reason"].is_null(), "{r}");
    check_provenance(&r["provenance"]);
    let mode = &r["platform"]["mode"];
    assert!(mode == "plain" || mode == "pvm-native", "{r}");
    assert_eq!(r["provenance"]["guest_mode"], *mode, "{r}");
    let native = mode == "pvm-native";
    assert!(r["platform"]["native_error"].is_null(), "{r}");
    for cost in ["syscall_ns", "icr_write_ns", "eoi_write_ns"] {
        let ns = r["platform"][cost]
            .as_u64()
            .unwrap_or_else(|| panic!("{cost}: {r}"));
        assert!(ns > 0, "{r}");
    }
    if native {
        assert_eq!(r["platform"]["verdict"], "hardware-accelerated", "{r}");
    }
    // The guest's scheduler figures, as the text shows them.
    let g = &r["guest"];
    assert_eq!(
        g["vcpus"].as_array().map(Vec::len),
        Some(vcpus as usize),
        "{g}"
    );
    assert!(
        g["vcpus"][0]["ticks"].is_u64() && g["tasks_created"].is_u64(),
        "{g}"
    );
    assert!(
        g["heap_used_bytes"].is_u64() && g["workload_s"].is_f64(),
        "{g}"
    );
    let s = &r["scenario"];
    assert_eq!(uint(r, "/scenario/vcpus"), vcpus);
    assert!(s["host_cpus"].as_array().is_some_and(|a| !a.is_empty()));
    assert!(s["workload"].is_string());
    number(r, "/scenario/duration_s");
    let issuers = uint(r, "/scenario/shape/issuers_per_cpu");
    assert_eq!(uint(r, "/scenario/tasks_per_cpu"), issuers);
    uint(r, "/scenario/shape/hogs_per_cpu");
    uint(r, "/scenario/seed");
    assert!(s["preempt"]["mode"].is_string());
    uint(r, "/scenario/preempt/len_us");
    uint(r, "/scenario/preempt/every_us");
    uint(r, "/scenario/migrate_every_us");
    number(r, "/scenario/guest_preempt_prob");
    assert!(s["pv"].is_array());
    assert!(uint(r, "/tsc_khz") > 0);
    assert!(number(r, "/boot_ms") > 0.0);
    assert!(
        r.get("floor_latency_ns").is_some(),
        "floor_latency_ns missing"
    );
    assert!(number(r, "/platform/cpl0_cycles_per_iter") > 0.0);
    number(r, "/platform/cpl3_cycles_per_iter");
    assert!(r["platform"]["verdict"].is_string());
    uint(r, "/host/preemptions_injected");
    uint(r, "/host/migrations_injected");
    // Steal time is registered wherever KVM offers it (host.pv.steal_time);
    // otherwise null, never zeros that look measured.
    let registered = r["host"]["pv"]["steal_time"] == true;
    match r["host"]["steal_ns"].as_array() {
        Some(steal) => {
            assert!(registered, "{r}");
            assert_eq!(steal.len() as u64, vcpus);
            assert!(steal.iter().all(|s| s.as_u64().is_some()));
        }
        None => assert!(!registered && r["host"]["steal_ns"].is_null(), "{r}"),
    }
    for f in ["steal_time", "preempted_flag"] {
        assert!(r["host"]["pv"][f].is_boolean(), "host.pv.{f}");
    }
    // Probed only when the run uses PV features: null otherwise, never an
    // unmeasured `false`.
    let hc = &r["host"]["pv"]["kvm_hypercalls"];
    assert!(
        hc.is_boolean() || hc.is_null(),
        "host.pv.kvm_hypercalls: {hc}"
    );
    let mut names = Vec::new();
    for d in r["designs"].as_array().expect("designs array") {
        let name = d["design"].as_str().expect("design name").to_string();
        let calls = d["calls"].as_u64().unwrap();
        let violations = d["violations"].as_u64().unwrap();
        assert_eq!(violations, 0, "{name}");
        // Task creation: timed when tasks were created, null otherwise.
        let created = d["tasks_created"].as_u64().unwrap();
        assert_eq!(d["task_create_mean_ns"].is_u64(), created > 0, "{d}");
        let spawned = uint(d, "/shape/issuers") + uint(d, "/shape/hogs");
        assert!(spawned > 0 && spawned <= created, "{d}");
        assert!(d["first_violation_ms"].is_null(), "{name}");
        let sync_calls = check_latency(&d["call_latency_ns"], "call_latency_ns");
        // Synchronous calls are timed; asynchronous ones only counted.
        assert!(
            sync_calls > 0 && sync_calls <= calls,
            "{name}: {sync_calls} timed, {calls} calls"
        );
        let probes = check_latency(&d["sched_latency_ns"], "sched_latency_ns");
        check_probe_split(d, probes);
        check_preempt_off(d, vcpus);
        // Measured less steal exactly where steal time was tracked.
        assert_eq!(
            d["preempt_off"]["excl_steal"].is_null(),
            r["host"]["steal_ns"].is_null(),
            "{name}"
        );
        for f in [
            "waits_preempted",
            "waits_migrated",
            "mask_bytes_per_task",
            "mask_allocs",
            "fallbacks",
        ] {
            assert!(d[f].as_u64().is_some(), "{name}.{f}");
        }
        assert!(d["waits_preempted"].as_u64().unwrap() <= calls);
        names.push(name);
    }
    names
}

#[test]
fn test_json_and_svg_of_a_short_shootdown_run() {
    if !common::kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("r.svg");
    let (_, r) = quiet_json(&[
        "run",
        "--vcpus",
        "2",
        "--workload",
        "shootdown",
        "--designs",
        "upstream,task-local",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(check_report(&r, 2), vec!["upstream", "task-local"]);
    assert!(r["floor_latency_ns"].is_null(), "no floor outside ping");
    assert_eq!(r["scenario"]["workload"], "shootdown");
    // The report reads back into the library's type.
    let back: ipivirt::Report = serde_json::from_value(r.clone()).unwrap();
    assert_eq!(back.designs.len(), 2);

    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    let curves: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("path") && n.attribute("class") == Some("curve"))
        .collect();
    assert_eq!(curves.len(), 4, "one path per design per panel");
    // The preempt-off panel (issue 15): one curve per design.
    let poff = doc
        .descendants()
        .filter(|n| n.has_tag_name("path") && n.attribute("class") == Some("poff-curve"))
        .count();
    assert_eq!(poff, 2, "one preempt-off curve per design");
    for design in ["upstream", "task-local"] {
        assert_eq!(
            curves
                .iter()
                .filter(|n| n.attribute("data-design") == Some(design))
                .count(),
            2
        );
    }
    assert!(text.contains("latency (log scale)") && text.contains("class=\"legend\""));
    // A tail axis (issue 17): percentiles up to 99.99, labels apart, and
    // each curve's n in the legend.
    let ticks: Vec<(String, f64)> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("ytick"))
        .map(|n| {
            (
                n.text().unwrap().to_string(),
                n.attribute("y").unwrap().parse().unwrap(),
            )
        })
        .collect();
    let labels: Vec<&str> = ticks.iter().take(6).map(|t| t.0.as_str()).collect();
    assert_eq!(labels, ["0", "50", "90", "99", "99.9", "99.99"]);
    for w in ticks.windows(2).filter(|w| w[1].0 != "0") {
        assert!(w[0].1 - w[1].1 >= 14.0, "tick labels overlap: {ticks:?}");
    }
    let calls = r["designs"][0]["call_latency_ns"]["count"]
        .as_u64()
        .unwrap();
    assert!(
        text.contains(&format!("upstream (n={calls} calls, ")),
        "legend without n"
    );
}

#[test]
fn test_ping_run_states_latency_against_the_floor() {
    if !common::kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let (stdout, r) = quiet_json(&[
        "run",
        "--vcpus",
        "2",
        "--workload",
        "ping",
        "--designs",
        "upstream",
    ]);
    assert!(
        stdout.contains("floor (raw x2APIC IPI round trip"),
        "{stdout}"
    );
    assert!(stdout.contains("ping upstream: p50"), "{stdout}");
    assert!(stdout.contains("the floor"), "{stdout}");
    check_report(&r, 2);
    assert!(check_latency(&r["floor_latency_ns"], "floor_latency_ns") > 0);
}

#[test]
fn test_floor_workload_measures_round_trips() {
    if !common::kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let s = ipivirt::Scenario::new()
        .vcpus(2)
        .workload(ipivirt::Workload::Floor)
        .duration(std::time::Duration::from_millis(300))
        .preempt(ipivirt::PreemptMode::None)
        .migrate_every(None)
        .timeout(std::time::Duration::from_secs(120));
    let r = s.run().expect("floor run");
    let f = r.floor_latency_ns.expect("floor measured");
    assert!(f.count > 0 && f.p50 <= f.max, "{f:?}");
    assert!(r.designs.is_empty());
}

#[test]
fn test_sweep_of_two_small_cells() {
    if !common::kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let (stdout, r) = quiet_json(&common::TWO_CELL_SWEEP);
    assert!(
        stdout.contains("calls/s") && stdout.contains("probe p99"),
        "{stdout}"
    );
    let rows: Vec<_> = stdout.lines().filter(|l| l.contains("upstream")).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(
        rows[0].contains("2:1") && rows[1].contains("3:1"),
        "{stdout}"
    );
    assert_eq!(r["status"], "ok", "{r}");
    assert!(r["reason"].is_null(), "{r}");
    check_provenance(&r["provenance"]);
    let cells = r["cells"].as_array().expect("an array of cells");
    assert_eq!(cells.len(), 2);
    for (cell, vcpus) in cells.iter().zip([2, 3]) {
        assert_eq!(cell["outcome"], "ok", "{cell}");
        assert_eq!(cell["vcpus"], vcpus);
        check_report(&cell["report"], vcpus);
    }
}

#[test]
fn test_sweep_refuses_bad_ratio_with_exit_2() {
    let (_, stderr) = common::ipivirt_exits(&["sweep", "--ratios", "2"], 2);
    assert!(stderr.contains("not a ratio"), "{stderr}");
}

/// The host table's columns for vCPU 0: steal_ms and max_gap_us.
fn vcpu0_steal_and_gap(stdout: &str) -> (String, String) {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("vcpu  tid"));
    lines.next().expect("the host table");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    (row[2].to_string(), row[5].to_string())
}

/// KVM offers steal time on every host ipivirt runs on (the PV probe's
/// answer), so every workload run registers it; the largest TSC gap is
/// `spin`'s alone and null elsewhere.
#[test]
fn test_steal_time_is_measured_in_every_run_and_the_gap_only_by_spin() {
    if !common::kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let (stdout, r) = quiet_json(&["run", "--vcpus", "2", "--designs", "upstream"]);
    assert_eq!(r["host"]["pv"]["steal_time"], true, "{r}");
    let (steal, gap) = vcpu0_steal_and_gap(&stdout);
    assert!(steal.parse::<f64>().is_ok(), "{stdout}");
    assert_eq!(gap, "-", "{stdout}");
    assert!(stdout.contains("steal time total "), "{stdout}");
    assert!(!stdout.contains("not registered"), "{stdout}");
    let steal_ns = r["host"]["steal_ns"].as_array().expect("host.steal_ns");
    assert_eq!(steal_ns.len(), 2, "{r}");
    // The host table is in the JSON too: steal measured, the gap null.
    let rows = r["host"]["vcpus"].as_array().expect("host.vcpus");
    assert_eq!(rows.len(), 2, "{r}");
    for v in rows {
        assert!(v["tid"].as_u64().is_some_and(|t| t > 0), "{v}");
        assert!(v["steal_ns"].is_u64() && v["max_gap_ns"].is_null(), "{v}");
        assert!(v["run_delay_ns"].is_u64() && v["paused_ns"].is_u64(), "{v}");
        assert!(v["kvm"]["halt_exits"].is_u64(), "{v}");
    }
    // Steal time and the host's run delay measure the same descheduling
    // (here by whatever else the host runs): they agree where it is large.
    let total = |f: &str| rows.iter().map(|v| v[f].as_u64().unwrap()).sum::<u64>() as f64;
    let (steal, delay) = (total("steal_ns"), total("run_delay_ns"));
    if delay > 50e6 {
        assert!(
            (0.5..=1.5).contains(&(steal / delay)),
            "steal {steal} ns against run delay {delay} ns: {r}"
        );
    }

    // spin records the gap as well: numbers.
    let (stdout, r) = quiet_json(&["run", "--vcpus", "2", "--workload", "spin"]);
    let (steal, gap) = vcpu0_steal_and_gap(&stdout);
    assert!(
        steal.parse::<f64>().is_ok() && gap.parse::<f64>().is_ok(),
        "{stdout}"
    );
    let rows = r["host"]["vcpus"].as_array().unwrap();
    assert!(
        rows.iter()
            .all(|v| v["steal_ns"].is_u64() && v["max_gap_ns"].is_u64()),
        "{r}"
    );
}

#[test]
fn test_idle_run_json_has_the_probe_and_counters() {
    if !common::kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let (stdout, r) = quiet_json(&["run", "--vcpus", "2", "--workload", "idle"]);
    let n = uint(&r, "/guest/probe_latency_ns/count");
    assert!(n > 0, "{r}");
    assert!(
        stdout.contains(&format!("sched latency (probe): n={n},")),
        "{stdout}"
    );
    check_latency(&r["guest"]["probe_latency_ns"], "guest.probe_latency_ns");
    assert!(r["designs"].as_array().unwrap().is_empty());
}
