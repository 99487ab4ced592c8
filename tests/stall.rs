//! Stalls of the VMM itself (issue 17, item 3): a run whose VMM was
//! stopped (SIGSTOP ... SIGCONT) says so in the text and the JSON, is
//! marked unreliable (no design ratios, exit 6 instead of 0), its
//! injectors drop the preemptions they missed instead of replaying them,
//! and the watchdog does not count the stopped time against the guest.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kvm_or_skip;

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn test_stopped_vmm_is_detected_reported_and_not_replayed() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    // 2 designs x 1 s: a 3 s watchdog that a 2 s stop would trip if the
    // stopped time counted.
    let child = Command::new(env!("CARGO_BIN_EXE_ipivirt"))
        .args([
            "run",
            "--quiet",
            "--vcpus",
            "2",
            "--designs",
            "upstream,task-local",
            "--duration",
            "1s",
            "--preempt",
            "pause",
            "--timeout",
            "3",
            "--json",
            json.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !common::task_names(pid)
        .iter()
        .any(|n| n.starts_with("inj-"))
    {
        assert!(Instant::now() < deadline, "no injector started");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    signal(pid, "STOP");
    std::thread::sleep(Duration::from_secs(2));
    signal(pid, "CONT");
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stdout.contains("UNRELIABLE: the VMM itself was stopped"),
        "{stdout}"
    );
    assert!(!stdout.contains("of upstream"), "no ratios: {stdout}");
    assert!(stderr.contains("the run is unreliable"), "{stderr}");
    assert!(stdout.contains("planned preemptions dropped"), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["reliable"], false, "{r}");
    assert!(r["reason"].as_str().unwrap().contains("stopped"), "{r}");
    let stalls = &r["host"]["vmm_stalls"];
    assert!(stalls["count"].as_u64().unwrap() >= 1, "{r}");
    assert!(stalls["longest_ms"].as_f64().unwrap() > 1500.0, "{r}");
    // About 2 s of missed pauses (2 host CPUs, one per 2 ms each) were
    // dropped, not replayed: what ran is what 2 s of running time plans.
    let skipped = r["host"]["preemptions_skipped"].as_u64().unwrap();
    let injected = r["host"]["preemptions_injected"].as_u64().unwrap();
    assert!(skipped > 500, "{skipped} skipped");
    assert!(
        injected < 2500,
        "{injected} injected: missed ones were replayed"
    );
}

#[test]
fn test_undisturbed_run_is_reliable() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = common::ipivirt(&[
        "run",
        "--quiet",
        "--vcpus",
        "2",
        "--designs",
        "upstream",
        "--duration",
        "200ms",
        "--preempt",
        "pause",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", common::text(&out));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["reliable"], true, "{r}");
    assert_eq!(r["host"]["vmm_stalls"]["count"], 0);
    assert_eq!(r["host"]["preemptions_skipped"], 0);
}

#[test]
fn test_watchdog_counts_only_running_time_and_names_the_stall() {
    if !kvm_or_skip() {
        return;
    }
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_ipivirt"))
        .args([
            "boot",
            "--quiet",
            "--vcpus",
            "2",
            "--test-hook",
            "hang",
            "--timeout",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(500));
    signal(pid, "STOP");
    std::thread::sleep(Duration::from_millis(1500));
    signal(pid, "CONT");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("the VMM itself was also stopped"),
        "{stderr}"
    );
    // 2 s of running time plus the 1.5 s stop.
    assert!(
        started.elapsed() > Duration::from_millis(3300),
        "{:?}",
        started.elapsed()
    );
}
