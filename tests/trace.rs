//! The trace opens cleanly in Perfetto (issue 17, item 7): no two slices
//! of one track overlap (Perfetto drops such slices, so migrations went
//! missing), and a sweep writes one trace per cell instead of keeping
//! only the last.

mod common;

use std::collections::BTreeMap;

use common::json::{trace_events, uint};
use common::{ipivirt_exits, ipivirt_json, kvm_or_skip, pause_run, read_json};
use serde_json::Value;

/// A slice: start and length (us), name.
type Slice = (f64, f64, String);

/// The X slices of a trace, by track (pid, tid), sorted by start.
fn tracks(trace: &Value) -> BTreeMap<(u64, u64), Vec<Slice>> {
    let mut by: BTreeMap<(u64, u64), Vec<Slice>> = BTreeMap::new();
    for e in trace_events(trace) {
        if e["ph"] == "X" {
            by.entry((e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap()))
                .or_default()
                .push((
                    e["ts"].as_f64().unwrap(),
                    e["dur"].as_f64().unwrap(),
                    e["name"].as_str().unwrap().to_string(),
                ));
        }
    }
    for v in by.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    by
}

#[test]
fn test_trace_has_no_overlapping_slices_on_a_track() {
    if !kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.json");
    // Pauses and a migration storm on the same vCPUs (the review's case).
    let args = pause_run(
        "300ms",
        &[
            "--migrate-every",
            "100us",
            "--trace",
            trace.to_str().unwrap(),
        ],
    );
    let (_, r) = ipivirt_json(&args);
    let t = read_json(&trace);
    let mut slices = 0;
    let mut migrations = 0;
    for (track, s) in tracks(&t) {
        for w in s.windows(2) {
            // ts and dur are in us with ns precision.
            assert!(
                w[1].0 + 0.0005 >= w[0].0 + w[0].1,
                "track {track:?}: {:?} overlaps {:?}",
                w[1],
                w[0]
            );
        }
        slices += s.len();
        migrations += s.iter().filter(|e| e.2 == "migrate").count();
    }
    let injected = uint(&r, "/host/preemptions_injected") as usize;
    let migrated = uint(&r, "/host/migrations_injected") as usize;
    assert!(migrated > 0 && injected > 0, "{r}");
    assert_eq!(migrations, migrated, "every migration is a slice");
    // One design-phase marker per design, in the order they ran, on a
    // track of their own (issue 17, item 7).
    let designs: Vec<String> = r["designs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["design"].as_str().unwrap().to_string())
        .collect();
    let all = tracks(&t);
    let mut phases: Vec<&Slice> = all
        .values()
        .flatten()
        .filter(|s| designs.contains(&s.2))
        .collect();
    phases.sort_by(|a, b| a.0.total_cmp(&b.0));
    let names: Vec<&str> = phases.iter().map(|s| s.2.as_str()).collect();
    assert_eq!(names, designs, "the phase markers");
    assert!(phases.iter().all(|s| s.1 > 0.0), "{phases:?}");
    assert!(
        trace_events(&t)
            .iter()
            .any(|e| e["args"]["name"] == "design phases (guest)"),
        "the phase track is named"
    );
    assert_eq!(slices, injected + migrated + designs.len());
}

#[test]
fn test_sweep_writes_one_trace_per_cell() {
    if !kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.json");
    let mut args = common::TWO_CELL_SWEEP.to_vec();
    args.extend([
        "--quiet",
        "--duration",
        "100ms",
        "--preempt",
        "pause",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    let (stdout, _) = ipivirt_exits(&args, 0);
    assert!(!trace.exists(), "no cell writes the bare name");
    for (k, vcpus) in [(1, 2), (2, 3)] {
        let cell = dir.path().join(format!("t-{k}.json"));
        let t = read_json(&cell);
        // The cell's own vCPUs are named in its trace.
        let names: Vec<&str> = trace_events(&t)
            .iter()
            .filter_map(|e| e["args"]["name"].as_str())
            .collect();
        assert!(
            names.contains(&format!("vCPU {}", vcpus - 1).as_str()),
            "{names:?}"
        );
        assert!(
            !names.contains(&format!("vCPU {vcpus}").as_str()),
            "{names:?}"
        );
        assert!(
            stdout.contains(&format!("trace of cell {k} ({vcpus} vCPUs")),
            "{stdout}"
        );
    }
}
