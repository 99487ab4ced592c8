//! Ctrl-C (SIGINT) and SIGTERM during a run: the injectors stop, vCPU
//! affinities are restored, the partial report is printed marked PARTIAL,
//! and the exit code is 130 or 143. In-process, the run returns
//! `Error::Interrupted` with nothing left behind.
//!
//! The in-process test sends a signal to this test process, so it lives in
//! its own test binary and is the only test that boots a VM here.

mod common;

use std::time::{Duration, Instant};

use common::{finish, gone, kvm_or_skip, send_signal, spawn_ipivirt, task_names, wait_until};
use ipivirt::{boot, Error, InjectConfig, MachineConfig, PreemptMode, Workload};

#[test]
fn test_sigint_and_sigterm_print_partial_report_and_exit_128_plus_n() {
    if !kvm_or_skip() {
        return;
    }
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let child = spawn_ipivirt(&[
            "run",
            "--quiet",
            "--vcpus",
            "2",
            "--preempt",
            "pause",
            "--migrate-every",
            "2ms",
            "--workload",
            "spin",
            "--duration",
            "60s",
            "--timeout",
            "120",
        ]);
        let pid = child.id();
        wait_until("no injector thread started", || {
            task_names(pid).iter().any(|n| n == "inj-migrate")
        });
        std::thread::sleep(Duration::from_millis(500));
        send_signal(pid, signal);
        let started = Instant::now();
        let (status, stdout, stderr) = finish(child);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SIG{signal} took {:?}",
            started.elapsed()
        );
        assert_eq!(status.code(), Some(code), "SIG{signal}: {stdout}{stderr}");
        assert!(
            stdout.starts_with(&format!(
                "PARTIAL report: interrupted by SIG{signal} after "
            )),
            "{stdout}"
        );
        assert!(stdout.contains("online 2/2 vCPUs in "), "{stdout}");
        assert!(stdout.contains("preemptions_injected "), "{stdout}");
        assert!(stdout.contains("affinities restored: yes"), "{stdout}");
        assert!(stderr.contains("the report is partial"), "{stderr}");
        assert!(gone(pid), "process {pid} still there");
    }
}

#[test]
fn test_signal_in_process_stops_run_and_leaves_nothing() {
    if !kvm_or_skip() {
        return;
    }
    ipivirt::signals::install().unwrap();
    let mask_before = common::host::affinity();
    let mut c = MachineConfig::new(2);
    c.timeout = Duration::from_secs(120);
    c.workload = Workload::Spin;
    c.duration = Duration::from_secs(60);
    c.inject = InjectConfig {
        host_cpus: Some(common::host::allowed()),
        preempt: PreemptMode::Pause,
        migrate_every: Some(Duration::from_millis(2)),
        ..InjectConfig::default()
    };
    let run = std::thread::spawn(move || boot(&c));
    wait_until("no injector thread started", || {
        common::threads_named("inj-")
            .iter()
            .any(|n| n == "inj-migrate")
    });
    std::thread::sleep(Duration::from_millis(500));
    send_signal(std::process::id(), "TERM");
    let started = Instant::now();
    let err = run.join().unwrap().expect_err("the run is interrupted");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(err.exit_code(), 143, "{err}");
    let Error::Interrupted(p) = &err else {
        panic!("{err}")
    };
    assert_eq!((p.online, p.vcpus), (2, 2));
    assert!(p.host.active && p.host.affinity_restored, "{:?}", p.host);
    assert!(p.host.migrations_injected > 0, "{:?}", p.host);
    common::host::assert_nothing_left(&mask_before, "after the interrupted run");
}
