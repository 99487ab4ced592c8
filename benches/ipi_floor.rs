//! The raw x2APIC IPI ping-pong round trip between vCPU 0 and vCPU 1 (no
//! cross-call layer), as the guest times it: the floor of every cross call.
//! In each guest mode the host offers (`plain`, `pvm-native`).
//! `cargo bench --bench ipi_floor -- --quick`.
#![allow(missing_docs)] // criterion_group!/criterion_main! generate undocumented items

mod guest;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ipivirt::Workload;

fn bench_floor(c: &mut Criterion) {
    let mut group = c.benchmark_group("ipi_floor");
    guest::configure(&mut group);
    for (mode, name) in guest::modes() {
        let s = guest::scenario(2, 2, Duration::from_millis(100))
            .workload(Workload::Floor)
            .guest_mode(mode);
        guest::bench(&mut group, BenchmarkId::new(name, "2vcpu"), &s, |r| {
            r.floor_latency_ns.map_or(0.0, |f| f.mean)
        });
    }
    group.finish();
}

criterion_group!(benches, bench_floor);
criterion_main!(benches);
