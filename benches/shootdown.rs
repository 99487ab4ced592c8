//! A broadcast cross call with wait (`shootdown`: tasks call random vCPU
//! subsets), per design, at 1:1 (2 vCPUs on 2 host CPUs) and 2:1 (4 vCPUs
//! on 2 host CPUs) overcommit, as the guest times it (mean call latency
//! from the design's histogram), in each guest mode the host offers; and
//! the time per completed call at 2:1 (the inverse of calls/s).
#![allow(missing_docs)] // criterion_group!/criterion_main! generate undocumented items

mod guest;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ipivirt::{Design, Workload};

fn bench_shootdown(c: &mut Criterion) {
    let mut group = c.benchmark_group("shootdown");
    guest::configure(&mut group);
    for (mode, name) in guest::modes() {
        for (ratio, vcpus) in [("1:1", 2), ("2:1", 4)] {
            for design in [
                Design::Upstream,
                Design::TaskLocal,
                Design::Stack,
                Design::AllocInPath,
            ] {
                let s = guest::scenario(vcpus, 2, Duration::from_millis(200))
                    .workload(Workload::Shootdown)
                    .designs(&[design])
                    .guest_mode(mode);
                guest::bench(
                    &mut group,
                    BenchmarkId::new(format!("{name}/{}", design.name()), ratio),
                    &s,
                    |r| r.designs[0].call_latency_ns.mean,
                );
            }
        }
        // Throughput at 2:1: the time per completed call (1 / calls per s).
        let s = guest::scenario(4, 2, Duration::from_millis(200))
            .workload(Workload::Shootdown)
            .designs(&[Design::Upstream])
            .guest_mode(mode);
        guest::bench(
            &mut group,
            BenchmarkId::new(format!("{name}/per-call"), "2:1"),
            &s,
            |r| 1e9 / r.designs[0].calls_per_s,
        );
    }
    group.finish();
}

criterion_group!(benches, bench_shootdown);
criterion_main!(benches);
