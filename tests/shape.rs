//! The series' workload shape and its aimed injection (issue 15, item 3),
//! on real VMs: every bad shape or target list exits 2 before anything
//! boots (and the library refuses the same); `--placement` really puts
//! each vCPU thread on its host CPU; `pause` holds only the vCPUs named
//! (and only those on the host CPUs named); the issuers and hogs the guest
//! reports are the ones it spawned; `--scenario series` runs the series'
//! shape and its report names it.

mod common;

use std::time::{Duration, Instant};

use common::host::{allowed, sample_vcpu_cpus, two_cpus_or_skip};
use common::json::{trace_events, uint};
use common::machine::spin_config;
use common::{ipivirt_exits, ipivirt_json, kvm_or_skip};
use ipivirt::inject::trace::EventKind;
use ipivirt::{boot, Design, PreemptMode, Scenario};

#[test]
fn test_bad_shapes_and_targets_exit_2_before_booting() {
    if !kvm_or_skip() {
        return;
    }
    let cpus = allowed();
    let c0 = cpus[0].to_string();
    let far = (libc_cpu_setsize() - 1).to_string();
    let far_placement = format!("{c0},{c0},{c0},{far}");
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--placement", "0,1"], "2 host CPU(s) for 4 vCPU(s)"),
        (
            vec!["--placement", "0,0,0,0,0"],
            "5 host CPU(s) for 4 vCPU(s)",
        ),
        (vec!["--placement", &far_placement], "affinity mask"),
        (vec!["--placement", "0-3"], "is not a vCPU -> host CPU map"),
        (vec!["--placement", ""], "is not a vCPU -> host CPU map"),
        (vec!["--initiators", "4"], "[4] do not exist"),
        (vec!["--initiators", "x"], "is not a vCPU list"),
        (
            vec!["--initiators", "0", "--workload", "ping"],
            "no initiators",
        ),
        (vec!["--preempt-host-cpus", &far], "run no vCPU of this run"),
        (vec!["--preempt-host-cpus", "1-0"], "is not a CPU list"),
        (
            vec!["--preempt", "none", "--preempt-host-cpus", &c0],
            "injects none",
        ),
        (vec!["--preempt-vcpus", "1"], "--preempt pause only"),
        (
            vec!["--preempt", "pause", "--preempt-vcpus", "4"],
            "[4] do not exist",
        ),
        (
            vec!["--preempt", "pause", "--preempt-vcpus", "a"],
            "is not a vCPU list",
        ),
        (vec!["--issuers-per-cpu", "0"], "--issuers-per-cpu"),
        (vec!["--tasks-per-cpu", "65"], "--issuers-per-cpu"),
        (vec!["--hogs-per-cpu", "65"], "--hogs-per-cpu"),
        (
            vec!["--issuers-per-cpu", "40", "--hogs-per-cpu", "40"],
            "at most 64 together",
        ),
        (
            vec!["--workload", "hogs", "--issuers-per-cpu", "2"],
            "sends no IPI",
        ),
        (
            vec!["--workload", "hogs", "--hogs-per-cpu", "0"],
            "give 1 or more",
        ),
        (vec!["--scenario", "nope"], "unknown scenario 'nope'"),
        (
            vec!["--scenario", "series", "--host-cpus", &c0],
            "it needs two host CPUs",
        ),
        (
            vec!["--scenario", "series", "--vcpus", "1"],
            "at least 2 vCPUs",
        ),
    ];
    let c1;
    let outside;
    if cpus.len() >= 2 {
        c1 = cpus[1].to_string();
        outside = format!("{c0},{c1},{c1},{c1}");
        cases.push((
            vec!["--host-cpus", &c0, "--placement", &outside],
            "which is not in --host-cpus",
        ));
    }
    for (extra, says) in cases {
        let mut args = vec!["run", "--quiet", "--duration", "200ms"];
        args.extend(extra.iter().copied());
        let started = Instant::now();
        let (stdout, stderr) = ipivirt_exits(&args, 2);
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
        assert!(stdout.is_empty(), "{extra:?} booted: {stdout}");
        assert!(started.elapsed() < Duration::from_secs(5), "{extra:?}");
    }
    let (_, stderr) = ipivirt_exits(&["sweep", "--quiet", "--scenario", "series"], 2);
    assert!(stderr.contains("use them with `ipivirt run`"), "{stderr}");

    // The library refuses the same, before booting.
    let base = || {
        Scenario::new()
            .duration(Duration::from_millis(100))
            .timeout(Duration::from_secs(30))
    };
    for s in [
        base().placement(&[cpus[0]]),
        base().placement(&[cpus[0], cpus[0], cpus[0], libc_cpu_setsize() - 1]),
        base().initiators(&[7]),
        base().preempt(PreemptMode::Pause).preempt_vcpus(&[9]),
        base().preempt_vcpus(&[1]),
        base()
            .preempt(PreemptMode::None)
            .preempt_host_cpus(&[cpus[0]]),
        base().issuers_per_cpu(0),
        base().issuers_per_cpu(32).hogs_per_cpu(33),
    ] {
        let started = Instant::now();
        let e = s.run().expect_err("refused");
        assert_eq!(e.exit_code(), ipivirt::exit_code::USAGE, "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "{e}");
    }
}

fn libc_cpu_setsize() -> usize {
    1024 // libc::CPU_SETSIZE: the largest CPU number a list may name, plus one
}

#[test]
fn test_placement_puts_vcpu_threads_on_the_asked_host_cpus() {
    if !kvm_or_skip() {
        return;
    }
    let Some(cpus) = two_cpus_or_skip("this test") else {
        return;
    };
    let _serial = common::heavy();
    // Not the round-robin spread (which would be c0, c1, c0).
    let asked = vec![cpus[1], cpus[0], cpus[1]];
    let mut c = spin_config(3, Duration::from_millis(800));
    c.inject.placement = Some(asked.clone());
    let (r, seen) = sample_vcpu_cpus(|| boot(&c));
    let r = r.expect("run");
    for (v, &cpu) in asked.iter().enumerate() {
        assert_eq!(r.host.vcpus[v].host_cpu, Some(cpu), "{:?}", r.host.vcpus);
        let counts = seen.get(&format!("vcpu-{v}")).expect("vCPU thread sampled");
        let on: u32 = counts.get(&cpu).copied().unwrap_or(0);
        let off: u32 = counts.values().sum::<u32>() - on;
        // The thread pins itself before it first enters the guest; a sample
        // taken before that may show where it was created.
        assert!(on >= 50 && off <= 2, "vCPU {v} asked on {cpu}: {counts:?}");
    }
    assert!(r.host.affinity_restored);
}

#[test]
fn test_pause_hits_only_the_named_vcpus_and_host_cpus() {
    if !kvm_or_skip() {
        return;
    }
    let cpus = allowed();
    let _serial = common::heavy();
    let mut c = spin_config(3, Duration::from_millis(800));
    c.inject.host_cpus = Some(vec![cpus[0]]);
    c.inject.preempt = PreemptMode::Pause;
    c.inject.preempt_len = Duration::from_millis(1);
    c.inject.preempt_every = Duration::from_millis(5);
    c.inject.preempt_vcpus = Some(vec![1]);
    let r = boot(&c).expect("run");
    let h = &r.host;
    assert!(h.preemptions_injected >= 20, "{h:?}");
    assert!(
        h.timeline
            .iter()
            .all(|e| e.kind == EventKind::Pause && e.vcpus == [1]),
        "a pause of another vCPU"
    );
    assert!(h.vcpus[1].pauses > 0, "{:?}", h.vcpus);
    assert_eq!((h.vcpus[0].pauses, h.vcpus[2].pauses), (0, 0));

    if cpus.len() < 2 {
        eprintln!("the host-CPU half skipped: needs two host CPUs");
        return;
    }
    // Aimed by host CPU: vCPUs 1 and 2 on the second host CPU, only it
    // preempted.
    c.inject.preempt_vcpus = None;
    c.inject.host_cpus = None;
    c.inject.placement = Some(vec![cpus[0], cpus[1], cpus[1]]);
    c.inject.preempt_host_cpus = Some(vec![cpus[1]]);
    let r = boot(&c).expect("run");
    let h = &r.host;
    assert!(h.preemptions_injected >= 20, "{h:?}");
    assert!(
        h.timeline.iter().all(|e| e.host_cpu == cpus[1]),
        "a pause on the quiet host CPU"
    );
    assert_eq!(h.vcpus[0].pauses, 0, "{:?}", h.vcpus);
    assert!(h.vcpus[1].pauses + h.vcpus[2].pauses > 0, "{:?}", h.vcpus);
}

#[test]
fn test_issuers_and_hogs_reported_are_those_spawned() {
    if !kvm_or_skip() {
        return;
    }
    let _serial = common::heavy();
    let r = Scenario::new()
        .vcpus(3)
        .designs(&[Design::Upstream, Design::TaskLocal])
        .duration(Duration::from_millis(200))
        .preempt(PreemptMode::None)
        .migrate_every(None)
        .issuers_per_cpu(2)
        .hogs_per_cpu(3)
        .initiators(&[0, 2])
        .timeout(Duration::from_secs(120))
        .run()
        .expect("run");
    for d in &r.designs {
        assert_eq!((d.shape.issuers, d.shape.hogs), (4, 9), "{}", d.design);
        assert!(d.tasks_created >= 13, "{}: {}", d.design, d.tasks_created);
        assert!(d.calls > 0, "{}", d.design);
    }
    let shape = &r.scenario.shape;
    assert_eq!((shape.issuers_per_cpu, shape.hogs_per_cpu), (2, 3));
    assert_eq!(shape.initiators, Some(vec![0, 2]));
    // The initiators send the cross calls' IPIs (vCPU 1 runs hogs alone;
    // it may still send the odd reschedule IPI).
    let sent = |v: usize| r.guest.vcpus[v].counters.sched.ipis_sent;
    assert!(sent(0) > 0 && sent(2) > 0, "{:?}", r.guest.vcpus);
    assert!(sent(1) < sent(0).min(sent(2)), "{:?}", r.guest.vcpus);

    // The default shape: one issuer and one hog on every vCPU.
    let r = Scenario::new()
        .vcpus(2)
        .designs(&[Design::Upstream])
        .duration(Duration::from_millis(100))
        .preempt(PreemptMode::None)
        .migrate_every(None)
        .timeout(Duration::from_secs(120))
        .run()
        .expect("run");
    assert_eq!(
        (r.designs[0].shape.issuers, r.designs[0].shape.hogs),
        (2, 2)
    );
}

#[test]
fn test_series_scenario_runs_and_its_report_names_it() {
    if !kvm_or_skip() {
        return;
    }
    let Some(cpus) = two_cpus_or_skip("the series scenario") else {
        return;
    };
    let _serial = common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("series-trace.json");
    let (stdout, r) = ipivirt_json(&[
        "run",
        "--scenario",
        "series",
        "--quiet",
        "--duration",
        "200ms",
        "--designs",
        "upstream,task-local",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    let first = stdout.lines().next().unwrap_or("");
    assert!(first.starts_with("scenario series: 4 vCPUs"), "{stdout}");
    assert!(first.contains("3ms every 10ms"), "{first}");
    let s = &r["scenario"];
    assert_eq!(s["name"], "series", "{s}");
    let (c0, c1) = (cpus[0], cpus[1]);
    assert_eq!(s["shape"]["placement"], serde_json::json!([c0, c1, c1, c1]));
    assert_eq!(s["shape"]["initiators"], serde_json::json!([0]));
    assert_eq!(s["shape"]["preempt_host_cpus"], serde_json::json!([c1]));
    assert_eq!(s["preempt"]["len_us"], 3000);
    assert_eq!(s["preempt"]["every_us"], 10_000);
    assert_eq!(s["migrate_every_us"], 0);
    for d in r["designs"].as_array().unwrap() {
        assert_eq!(
            d["shape"],
            serde_json::json!({"issuers": 1, "hogs": 4}),
            "{d}"
        );
        assert!(d["calls"].as_u64().unwrap() > 0, "{d}");
        // The sender-side figure is the initiator's own.
        let p = &d["preempt_off"];
        assert_eq!(p["sender_cpus"], serde_json::json!([0]), "{p}");
        assert_eq!(p["sender_p99_ns"], p["per_cpu"][0]["p99_ns"], "{p}");
    }
    for e in r["summary"].as_array().unwrap() {
        assert!(e.get("sender_preempt_off_p99").is_some(), "{e}");
        assert!(e.get("sender_preempt_off_p99_excl_steal").is_some(), "{e}");
    }
    let placed: Vec<_> = r["host"]["vcpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["host_cpu"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(placed, [c0, c1, c1, c1]);
    assert!(uint(&r, "/host/preemptions_injected") > 0);
    assert_eq!(r["host"]["migrations_injected"], 0);
    // Every burst (antagonist, or pause without SCHED_FIFO) hit the
    // targets' host CPU, never the initiator's.
    let t = common::read_json(&trace);
    let bursts: Vec<_> = trace_events(&t)
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] != "phase")
        .collect();
    assert!(!bursts.is_empty(), "{t}");
    for e in bursts {
        assert_eq!(e["args"]["host_cpu"], c1, "{e}");
    }
}
