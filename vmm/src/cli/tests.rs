//! The command line's parsing and its translation into a `MachineConfig`.

use std::time::Duration;

use clap::Parser;

use super::args::{Cli, Command, RunArgs, RunCmd, SweepCmd};
use super::parse::{parse_duration, parse_timeout};
use crate::inject::PreemptMode;
use crate::machine::MachineConfig;

#[test]
fn test_cli_parses_boot_and_default_run() {
    let c = Cli::try_parse_from(["ipivirt", "boot", "--vcpus", "64"]).unwrap();
    assert!(matches!(
        c.command,
        Some(Command::Boot(RunArgs { vcpus: 64, .. }))
    ));
    let c = Cli::try_parse_from(["ipivirt"]).unwrap();
    assert!(c.command.is_none());
    assert_eq!(c.run.common.vcpus, 4);
}

#[test]
fn test_cli_rejects_bad_values() {
    for args in [
        &["ipivirt", "boot", "--vcpus", "0"][..],
        &["ipivirt", "boot", "--vcpus", "5000"],
        &["ipivirt", "boot", "--timeout", "-1"],
        &["ipivirt", "boot", "--timeout", "soon"],
        &["ipivirt", "boot", "--test-hook", "explode"],
        &["ipivirt", "run", "--host-cpus", "x"],
        &["ipivirt", "run", "--host-cpus", "1-0"],
        &["ipivirt", "run", "--preempt", "sometimes"],
        &["ipivirt", "run", "--preempt-len", "5 parsecs"],
        &["ipivirt", "run", "--migrate-every", "-1ms"],
        &["ipivirt", "run", "--max-duty", "95"],
        &["ipivirt", "run", "--workload", "dance"],
        &["ipivirt", "boot", "--preempt", "pause"],
        &["ipivirt", "run", "--probe-period", "0"],
        &["ipivirt", "run", "--torture-weights", "single=1,single=2"],
        &["ipivirt", "run", "--scenario", "bogus"],
        &["ipivirt", "run", "--issuers-per-cpu", "0"],
        &["ipivirt", "run", "--hogs-per-cpu", "65"],
        &["ipivirt", "run", "--initiators", "x"],
        &["ipivirt", "run", "--placement", "0-1"],
        &["ipivirt", "run", "--preempt-host-cpus", ""],
        &["ipivirt", "run", "--preempt-vcpus", "3-1"],
    ] {
        let err = Cli::try_parse_from(args).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{args:?}");
    }
}

#[test]
fn test_cli_repeat() {
    let c = Cli::try_parse_from(["ipivirt", "run", "--repeat", "3"]).unwrap();
    assert!(matches!(c.command, Some(Command::Run(RunCmd { ref stats, .. })) if stats.repeat == 3));
    assert_eq!(
        Cli::try_parse_from(["ipivirt"]).unwrap().run.stats.repeat,
        1
    );
    let c = Cli::try_parse_from(["ipivirt", "sweep", "--repeat", "2"]).unwrap();
    assert!(
        matches!(c.command, Some(Command::Sweep(SweepCmd { ref run, .. })) if run.stats.repeat == 2)
    );
    for bad in ["0", "101", "two"] {
        let err = Cli::try_parse_from(["ipivirt", "run", "--repeat", bad]).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{bad}");
    }
}

#[test]
fn test_cli_run_scenario_options() {
    let c = Cli::try_parse_from([
        "ipivirt",
        "run",
        "--host-cpus",
        "0,2-3",
        "--preempt",
        "pause",
        "--preempt-len",
        "1.5ms",
        "--migrate-every",
        "0",
        "--workload",
        "spin",
        "--duration",
        "500ms",
    ])
    .unwrap();
    let Some(Command::Run(run)) = c.command else {
        panic!()
    };
    let m = run.machine_config().unwrap();
    assert_eq!(m.inject.host_cpus, Some(vec![0, 2, 3]));
    assert_eq!(m.inject.preempt, PreemptMode::Pause);
    assert_eq!(m.inject.preempt_len, Duration::from_micros(1500));
    assert_eq!(m.inject.preempt_every, Duration::from_millis(2));
    assert_eq!(m.inject.migrate_every, None);
    assert_eq!(m.workload, abi::Workload::Spin);
    assert_eq!(m.duration, Duration::from_millis(500));
    let c = Cli::try_parse_from(["ipivirt"]).unwrap();
    let m = c.run.machine_config().unwrap();
    assert_eq!(m.inject.preempt, PreemptMode::Antagonist);
    assert_eq!(m.inject.migrate_every, Some(Duration::from_millis(5)));
    assert_eq!(m.inject.preempt_len, Duration::from_micros(200));
    assert_eq!(m.inject.max_duty, 0.5);
    assert_eq!((m.issuers_per_cpu, m.hogs_per_cpu), (1, 1));
    assert_eq!(
        (m.initiators.as_ref(), m.scenario_name.as_ref()),
        (None, None)
    );
}

fn run_config(args: &[&str]) -> MachineConfig {
    let c = Cli::try_parse_from(args).unwrap();
    let Some(Command::Run(run)) = c.command else {
        panic!()
    };
    run.machine_config().unwrap()
}

#[test]
fn test_cli_series_scenario_and_overrides() {
    // `run --scenario series` on two host CPUs, then with every option of
    // the shape given explicitly over it.
    const SERIES: [&str; 6] = [
        "ipivirt",
        "run",
        "--scenario",
        "series",
        "--host-cpus",
        "0,1",
    ];
    let m = run_config(&SERIES);
    assert_eq!(m.scenario_name.as_deref(), Some("series"));
    assert_eq!(m.inject.placement, Some(vec![0, 1, 1, 1]));
    assert_eq!(m.inject.preempt_host_cpus, Some(vec![1]));
    assert_eq!(m.initiators, Some(vec![0]));
    assert_eq!(m.inject.preempt_len, Duration::from_millis(3));
    assert_eq!(m.inject.preempt_every, Duration::from_millis(10));
    assert_eq!(m.inject.migrate_every, None);
    let m = run_config(
        &[
            &SERIES[..],
            &[
                "--preempt-len",
                "1ms",
                "--placement",
                "0,0,1,1",
                "--initiators",
                "0-1",
                "--issuers-per-cpu",
                "2",
                "--hogs-per-cpu",
                "0",
                "--preempt",
                "pause",
                "--preempt-vcpus",
                "3",
            ][..],
        ]
        .concat(),
    );
    assert_eq!(m.inject.preempt_len, Duration::from_millis(1));
    assert_eq!(m.inject.preempt_every, Duration::from_millis(10));
    assert_eq!(m.inject.placement, Some(vec![0, 0, 1, 1]));
    assert_eq!(m.initiators, Some(vec![0, 1]));
    assert_eq!((m.issuers_per_cpu, m.hogs_per_cpu), (2, 0));
    assert_eq!(m.inject.preempt, PreemptMode::Pause);
    assert_eq!(m.inject.preempt_vcpus, Some(vec![3]));
    let m = run_config(&["ipivirt", "run", "--tasks-per-cpu", "3"]);
    assert_eq!(m.issuers_per_cpu, 3);
    let c = Cli::try_parse_from(["ipivirt", "run", "--scenario", "series", "--host-cpus", "0"]);
    let Some(Command::Run(run)) = c.unwrap().command else {
        panic!()
    };
    let e = run.machine_config().unwrap_err();
    assert!(e.to_string().contains("two host CPUs"), "{e}");
}

#[test]
fn test_timeout_accepts_units_like_every_duration() {
    assert_eq!(parse_timeout("10s"), Ok(10.0));
    assert_eq!(parse_timeout("1500ms"), Ok(1.5));
    assert_eq!(parse_timeout("2"), Ok(2.0));
    assert!(parse_timeout("0").is_err() && parse_timeout("0s").is_err());
    let c = Cli::try_parse_from(["ipivirt", "boot", "--timeout", "10s"]).unwrap();
    assert!(matches!(c.command, Some(Command::Boot(RunArgs { timeout, .. })) if timeout == 10.0));
}

#[test]
fn test_parse_duration_units() {
    assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
    assert_eq!(parse_duration("2ms"), Ok(Duration::from_millis(2)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert!(parse_duration("ms").is_err());
    assert!(parse_duration("-2ms").is_err());
    assert!(parse_duration("1e9s").is_err());
}

#[test]
fn test_help_lists_every_exit_code() {
    use crate::exit_code::*;
    for code in [
        OK,
        VIOLATION,
        USAGE,
        GUEST_CRASH,
        WATCHDOG,
        KVM_UNUSABLE,
        HOST_FAILURE,
        INTERRUPTED,
        TERMINATED,
    ] {
        let listed = HELP.lines().any(|l| {
            l.trim_start().starts_with(&format!("{code} ")) || l.contains(&format!("; {code} "))
        });
        assert!(listed, "exit code {code} is missing from the help");
    }
}
