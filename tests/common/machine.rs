//! Machines booted through the library: the configurations the tests
//! start from.

use std::time::Duration;

use ipivirt::{boot, BootReport, ConsoleMode, Design, InjectConfig, MachineConfig, Workload};

/// The four designs that must never violate an invariant.
pub const SAFE_DESIGNS: [Design; 4] = [
    Design::Upstream,
    Design::TaskLocal,
    Design::Stack,
    Design::AllocInPath,
];

/// A `spin` run of `vcpus` vCPUs for `duration` with no injection yet and
/// a 60-s timeout.
pub fn spin_config(vcpus: u32, duration: Duration) -> MachineConfig {
    let mut c = MachineConfig::new(vcpus);
    c.timeout = Duration::from_secs(60);
    c.workload = Workload::Spin;
    c.duration = duration;
    c.inject = InjectConfig::default();
    c
}

/// Boots `vcpus` vCPUs running `workload` for `secs` with the guest
/// console captured and `timeout`, after `tune` has had its say; panics
/// if the run fails.
pub fn boot_captured(
    vcpus: u32,
    workload: Workload,
    secs: f64,
    timeout: Duration,
    tune: impl FnOnce(&mut MachineConfig),
) -> BootReport {
    let mut cfg = MachineConfig::new(vcpus);
    cfg.console = ConsoleMode::Capture;
    cfg.timeout = timeout;
    cfg.workload = workload;
    cfg.duration = Duration::from_secs_f64(secs);
    tune(&mut cfg);
    boot(&cfg).unwrap_or_else(|e| panic!("{workload:?} run failed: {e}"))
}
