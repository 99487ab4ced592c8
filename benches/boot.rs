//! Boot time: from VM creation until the guest reports every vCPU online,
//! for 1, 4, 64, 256 and 1024 vCPUs, in each guest mode the host offers.
//! Measured by the VMM around real boots (the figure `ipivirt boot`
//! prints), so it includes KVM vCPU creation.
#![allow(missing_docs)] // criterion_group!/criterion_main! generate undocumented items

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ipivirt::{boot, GuestMode, MachineConfig};

fn bench_boot(c: &mut Criterion) {
    let mut group = c.benchmark_group("boot");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let mut modes = vec![(GuestMode::Plain, "plain")];
    if ipivirt::guest_mode::host_offers_pvm() {
        modes.push((GuestMode::Pvm, "pvm-native"));
    }
    for (mode, name) in modes {
        for vcpus in [1u32, 4, 64, 256, 1024] {
            let id = BenchmarkId::new(name, vcpus);
            group.bench_with_input(id, &vcpus, |b, &vcpus| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let config = MachineConfig {
                                guest_mode: Some(mode),
                                ..MachineConfig::new(vcpus)
                            };
                            boot(&config).expect("boot on a KVM host").boot_time
                        })
                        .sum()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_boot);
criterion_main!(benches);
