//! Scenarios that cannot be measured as asked are refused with exit 2 and
//! the reason, before anything boots (issue 17, item 4); the library
//! (`Scenario`) refuses the same. Each command here is one the hostile
//! review ran and that booted a VM and exited 0 (or hung) before the fix.

mod common;

use std::time::{Duration, Instant};

use common::{ipivirt, ipivirt_exits, kvm_or_skip, text};
use ipivirt::{Error, Scenario};

#[test]
fn test_unmeasurable_scenarios_exit_2_before_booting() {
    if !kvm_or_skip() {
        return;
    }
    let svg = std::env::temp_dir().join(format!("ipivirt-refuse-{}.svg", std::process::id()));
    let svg = svg.to_str().unwrap();
    let q = ["run", "--quiet"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--workload", "floor", "--vcpus", "1"],
            "at least 2 vCPUs",
        ),
        (
            vec!["--workload", "ping", "--vcpus", "1"],
            "at least 2 vCPUs",
        ),
        (vec!["--vcpus", "1"], "at least 2 vCPUs"),
        (
            vec![
                "--preempt",
                "pause",
                "--preempt-len",
                "1.5ms",
                "--preempt-every",
                "2ms",
            ],
            "above --max-duty 50%",
        ),
        (
            vec!["--timeout", "1", "--duration", "60s"],
            "shorter than the run",
        ),
        (vec!["--timeout", "0.001"], "--timeout"),
        (vec!["--duration", "0"], "too short to time anything"),
        (vec!["--duration", "1us"], "too short to time anything"),
        (vec!["--svg", svg, "--workload", "idle"], "nothing to plot"),
        (vec!["--svg", svg, "--workload", "floor"], "nothing to plot"),
        (vec!["--svg", svg, "--workload", "spin"], "nothing to plot"),
        (vec!["--svg", svg, "--workload", "none"], "nothing to plot"),
        (vec!["--pv", ""], "at least one PV feature"),
        (vec!["--pv", "all,all"], "named twice"),
        (vec!["--pv", "steal-time,steal-time"], "named twice"),
        (vec!["--designs", "upstream+"], "no PV feature"),
        (
            vec!["--designs", "upstream+send-ipi+send-ipi"],
            "named twice",
        ),
        (vec!["--probe-period", "0"], "give a period above 0"),
        (
            vec!["--torture-weights", "single=1"],
            "--torture-weights applies",
        ),
        (
            vec!["--alloc-fail-prob", "0.1", "--designs", "upstream"],
            "--alloc-fail-prob applies",
        ),
        (
            vec!["--torture-weights", "single=1,single=2"],
            "weighted twice",
        ),
    ];
    for (extra, says) in cases {
        let mut args: Vec<&str> = q.iter().copied().chain(extra.iter().copied()).collect();
        if !extra.contains(&"--duration") {
            args.extend(["--duration", "200ms"]);
        }
        let started = Instant::now();
        let (stdout, stderr) = ipivirt_exits(&args, 2);
        let says = if says == "nothing to plot" {
            "no per-design latency to plot"
        } else {
            says
        };
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
        assert!(stdout.is_empty(), "{extra:?} booted: {stdout}");
        assert!(started.elapsed() < Duration::from_secs(5), "{extra:?}");
    }
    assert!(!std::path::Path::new(svg).exists());
}

#[test]
fn test_explicit_antagonist_without_sched_fifo_is_refused() {
    use std::os::unix::process::CommandExt;
    if !kvm_or_skip() {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        eprintln!("skipped: needs root to become an unprivileged user");
        return;
    }
    // `nobody` may not use SCHED_FIFO (RLIMIT_RTPRIO 0).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipivirt"))
        .args([
            "run",
            "--quiet",
            "--preempt",
            "antagonist",
            "--duration",
            "100ms",
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("--preempt antagonist needs SCHED_FIFO"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
}

#[test]
fn test_sweep_with_every_cell_skipped_exits_2() {
    if !kvm_or_skip() {
        return;
    }
    for args in [
        &[
            "sweep",
            "--quiet",
            "--host-cpus",
            "0",
            "--ratios",
            "1:2",
            "--vcpus-list",
            "4",
        ][..],
        // 1 vCPU cannot run the default shootdown.
        &[
            "sweep",
            "--quiet",
            "--vcpus-list",
            "1,1",
            "--duration",
            "100ms",
        ],
    ] {
        let out = ipivirt(args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("every cell of the sweep is skipped"),
            "{stderr}"
        );
        assert!(stdout.is_empty(), "{stdout}");
    }
}

#[test]
fn test_library_refuses_nan_and_out_of_range_without_booting() {
    if !kvm_or_skip() {
        return;
    }
    let base = || {
        Scenario::new()
            .vcpus(2)
            .duration(Duration::from_millis(100))
            .timeout(Duration::from_secs(30))
    };
    for s in [
        base().guest_preempt_prob(f64::NAN),
        base().alloc_fail_prob(2.0),
        base().forced_migration(-0.5),
        base().issuers_per_cpu(1000),
        base().issuers_per_cpu(0),
        base().designs(&[]),
        base().timeout(Duration::ZERO),
        base().vcpus(1),
    ] {
        let started = Instant::now();
        let e = s.run().expect_err("refused");
        assert!(matches!(e, Error::Invalid(_)), "{e}");
        assert_eq!(e.exit_code(), 2);
        assert!(started.elapsed() < Duration::from_secs(1), "{e}");
    }
}
