//! CPU hotplug under load on real VMs (issue 16): the host takes vCPUs
//! offline and back while the torture workload runs with host preemption
//! and migration; every safe design keeps every invariant, a vCPU really
//! goes offline (no cross-call IPI reaches it, its tasks run elsewhere) and
//! comes back (runs tasks again); the two broken hotplug variants are
//! caught; torture's own onoff mode works without the host. Sized by time:
//! guest kernel code may be emulated.

mod common;

use std::time::Duration;

use common::machine::{boot_captured, SAFE_DESIGNS as SAFE};
use ipivirt::inject::trace::EventKind;
use ipivirt::{BootReport, Design, PreemptMode, Workload};

/// Torture on 4 vCPUs with the host's hotplug every 20 ms, preemption
/// (pause: no privileges needed) and vCPU thread migration.
fn hotplug_run(designs: &[Design], secs: f64, seed: u64) -> BootReport {
    let timeout = Duration::from_secs(300);
    boot_captured(4, Workload::Torture, secs, timeout, |c| {
        c.designs = designs.to_vec();
        c.seed = seed;
        c.guest_preempt_prob = 0.2;
        c.inject.host_cpus = Some(common::host::allowed());
        c.inject.preempt = PreemptMode::Pause;
        c.inject.preempt_len = Duration::from_micros(200);
        c.inject.preempt_every = Duration::from_millis(2);
        c.inject.migrate_every = Some(Duration::from_millis(5));
        c.inject.hotplug_every = Some(Duration::from_millis(20));
        c.inject.hotplug_len = Duration::from_millis(10);
    })
}

#[test]
fn test_safe_designs_keep_every_invariant_under_hotplug() {
    if !common::kvm_or_skip() {
        return;
    }
    let _heavy = common::heavy();
    let r = hotplug_run(&SAFE, 1.5, 1);
    assert_eq!(r.guest.designs.len(), SAFE.len());
    for d in &r.guest.designs {
        let name = d.design.name();
        assert_eq!(d.violations, 0, "{name}: {:?}", d.violation_log);
        assert!(d.calls >= 20, "{name}: only {} calls", d.calls);
        assert!(
            d.hotplug.offlines > 0,
            "{name}: no vCPU went offline: {:?}",
            d.hotplug
        );
        assert_eq!(d.hotplug.dropped_csds, 0, "{name}");
        assert!(d.hotplug.skipped_targets > 0, "{name}: {:?}", d.hotplug);
    }
    for (name, inv, err) in &r.guest.torture {
        assert_eq!(*err, 0, "torture {name}: {err} failed checks of {inv}");
    }
    assert!(r.host.hotplug_events > 0, "no hotplug event injected");
    assert!(r.host.hotplug_acked > 0, "the guest acted on no request");
    assert!(
        r.host.timeline.iter().any(|e| e.kind == EventKind::Hotplug),
        "hotplug events in the timeline"
    );

    // A vCPU really went offline and came back.
    let vcpus = &r.guest.vcpus;
    assert_eq!(
        vcpus[0].hotplug.offlines, 0,
        "the boot vCPU never goes offline"
    );
    for (i, v) in vcpus.iter().enumerate() {
        assert_eq!(
            v.hotplug.ipis_offline, 0,
            "vCPU {i} was sent a call IPI while offline"
        );
        assert!(
            v.hotplug.onlines <= v.hotplug.offlines,
            "vCPU {i}: {:?}",
            v.hotplug
        );
    }
    let cycled = vcpus.iter().find(|v| {
        v.hotplug.onlines > 0 && v.hotplug.tasks_moved > 0 && v.hotplug.switches_since_online > 0
    });
    assert!(
        cycled.is_some(),
        "no vCPU went offline with tasks moved away and ran tasks again after coming back: {:?}",
        vcpus.iter().map(|v| &v.hotplug).collect::<Vec<_>>()
    );
    // Time offline is time it did not run: its tasks ran elsewhere.
    assert!(vcpus.iter().any(|v| v.hotplug.offline_cycles > 0));
}

/// Each broken variant, up to three runs: the violation kind it must show.
fn caught(design: Design, kind: u32) {
    let mut seen = Vec::new();
    for seed in 1..=3 {
        let r = hotplug_run(&[design], 1.5, seed);
        let d = &r.guest.designs[0];
        if d.violations > 0 {
            assert!(d.first_violation_cycles.is_some());
            assert!(
                d.violation_log.iter().any(|v| v.kind == kind),
                "{}: {:?}",
                design.name(),
                d.violation_log
            );
            return;
        }
        seen.push((d.calls, d.hotplug.offlines, d.waits_migrated));
    }
    panic!(
        "the checker never caught {} in 3 runs (calls, offlines, migrated waits): {seen:?}",
        design.name()
    );
}

#[test]
fn test_free_csd_offline_is_caught() {
    if !common::kvm_or_skip() {
        return;
    }
    let _heavy = common::heavy();
    caught(Design::FreeCsdOffline, 8); // abi::violation::CSD_FREED
}

#[test]
fn test_no_dying_flush_is_caught() {
    if !common::kvm_or_skip() {
        return;
    }
    let _heavy = common::heavy();
    caught(Design::NoDyingFlush, 9); // abi::violation::DROPPED_OFFLINE
}

#[test]
fn test_torture_onoff_mode_without_the_host() {
    if !common::kvm_or_skip() {
        return;
    }
    let _heavy = common::heavy();
    let timeout = Duration::from_secs(300);
    let r = boot_captured(4, Workload::Torture, 1.0, timeout, |c| {
        c.designs = vec![Design::TaskLocal];
        c.torture_onoff = Some(Duration::from_millis(20));
    });
    let d = &r.guest.designs[0];
    assert_eq!(d.violations, 0, "{:?}", d.violation_log);
    assert!(
        d.hotplug.offlines > 0 && d.hotplug.onlines > 0,
        "{:?}",
        d.hotplug
    );
    assert_eq!(r.host.hotplug_events, 0, "the host injected nothing");
}

#[test]
fn test_hotplug_flags_are_checked_before_booting() {
    if !common::kvm_or_skip() {
        return;
    }
    let cases: [(&[&str], &str); 4] = [
        (
            &["--vcpus", "2", "--hotplug-every", "20ms"],
            "needs 3 or more vCPUs",
        ),
        (
            &[
                "--vcpus",
                "4",
                "--workload",
                "shootdown",
                "--torture-onoff",
                "20ms",
            ],
            "--torture-onoff applies to --workload torture only",
        ),
        (
            &[
                "--vcpus",
                "4",
                "--hotplug-every",
                "20ms",
                "--hotplug-len",
                "0",
            ],
            "--hotplug-len must be above zero",
        ),
        (
            &["--vcpus", "4", "--hotplug-every", "5x"],
            "--hotplug-every",
        ),
    ];
    for (extra, says) in cases {
        let mut args = vec!["run", "--quiet", "--duration", "200ms"];
        args.extend_from_slice(extra);
        let (stdout, stderr) = common::ipivirt_exits(&args, 2);
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
        assert!(stdout.is_empty(), "{extra:?} booted: {stdout}");
    }
}
