//! A synchronous single-target cross call (`ping`: each vCPU's task calls
//! the next vCPU and waits), per design, as the guest times it (mean call
//! latency from the design's histogram). 2 vCPUs on 2 host CPUs.
#![allow(missing_docs)] // criterion_group!/criterion_main! generate undocumented items

mod guest;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ipivirt::{Design, Workload};

fn bench_call_single(c: &mut Criterion) {
    let mut group = c.benchmark_group("call_single");
    guest::configure(&mut group);
    for (mode, name) in guest::modes() {
        for design in [
            Design::Upstream,
            Design::TaskLocal,
            Design::Stack,
            Design::AllocInPath,
        ] {
            let s = guest::scenario(2, 2, Duration::from_millis(200))
                .workload(Workload::Ping)
                .designs(&[design])
                .guest_mode(mode);
            guest::bench(&mut group, BenchmarkId::new(name, design.name()), &s, |r| {
                r.designs[0].call_latency_ns.mean
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_call_single);
criterion_main!(benches);
