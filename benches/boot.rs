//! Boot time: from VM creation until the guest reports every vCPU online,
//! for 1, 4 and 64 vCPUs. Measured by the VMM around real boots (the
//! figure `ipivirt boot` prints), so it includes KVM vCPU creation.
#![allow(missing_docs)] // criterion_group!/criterion_main! generate undocumented items

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ipivirt::{boot, MachineConfig};

fn bench_boot(c: &mut Criterion) {
    let mut group = c.benchmark_group("boot");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for vcpus in [1u32, 4, 64] {
        group.bench_with_input(BenchmarkId::from_parameter(vcpus), &vcpus, |b, &vcpus| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        boot(&MachineConfig::new(vcpus))
                            .expect("boot on a KVM host")
                            .boot_time
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_boot);
criterion_main!(benches);
