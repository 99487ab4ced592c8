//! Shared by the guest-timed benches: each criterion sample boots one VM,
//! runs a short scenario, and reports the GUEST-measured mean latency
//! (TSC cycles converted with the guest's tsc_khz) times the iteration
//! count, not the VMM's wall clock. On a host where guest kernel code is
//! emulated (see the report's platform verdict) the absolute figures are
//! not representative; compare designs within one host.
#![allow(dead_code)] // each bench uses its own subset

use std::time::Duration;

use criterion::{BenchmarkGroup, BenchmarkId};
use ipivirt::{GuestMode, PreemptMode, Report, Scenario};

/// The guest kernel modes this host can run, each with its benchmark id
/// prefix: the plain kernel everywhere, the PVM native one where offered.
pub fn modes() -> Vec<(GuestMode, &'static str)> {
    let mut m = vec![(GuestMode::Plain, "plain")];
    if ipivirt::guest_mode::host_offers_pvm() {
        m.push((GuestMode::Pvm, "pvm-native"));
    }
    m
}

/// A quiet, injection-free scenario of `vcpus` vCPUs on the first
/// `host_cpus` CPUs this process may use.
pub fn scenario(vcpus: u32, host_cpus: usize, duration: Duration) -> Scenario {
    let all = ipivirt::inject::placement::process_cpus().expect("the process's CPUs");
    let cpus: Vec<usize> = all.into_iter().take(host_cpus.max(1)).collect();
    Scenario::new()
        .vcpus(vcpus)
        .host_cpus(&cpus)
        .duration(duration)
        .preempt(PreemptMode::None)
        .migrate_every(None)
        .timeout(Duration::from_secs(300))
}

/// Configures a group for VM-per-sample benches: 10 samples, one warm-up
/// run (criterion's clock here is the guest's figure).
pub fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
}

/// Benchmarks `scenario` under `id`: each sample is one run, timed as
/// `pick(report)` nanoseconds per iteration.
pub fn bench(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    scenario: &Scenario,
    pick: fn(&Report) -> f64,
) {
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let report = scenario.run().expect("a run on a KVM host");
            let ns = pick(&report);
            assert!(ns > 0.0, "the guest measured nothing: {}", report.to_json());
            Duration::from_secs_f64(ns * iters as f64 / 1e9)
        })
    });
}
