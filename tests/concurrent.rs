//! Two runs injecting on the same host CPUs disturb each other: the later
//! one says so (issue 17's review: "nothing detects or mentions the other
//! run"). Real VMs, two processes.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ipivirt, kvm_or_skip, text};

#[test]
fn test_second_run_on_the_same_host_cpus_is_warned() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("b.json");
    let first = Command::new(env!("CARGO_BIN_EXE_ipivirt"))
        .args([
            "run",
            "--quiet",
            "--vcpus",
            "2",
            "--designs",
            "upstream",
            "--duration",
            "60s",
            "--preempt",
            "pause",
            "--host-cpus",
            "0-1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !common::task_names(pid)
        .iter()
        .any(|n| n.starts_with("inj-"))
    {
        assert!(Instant::now() < deadline, "the first run never injected");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = ipivirt(&[
        "run",
        "--quiet",
        "--vcpus",
        "2",
        "--designs",
        "upstream",
        "--duration",
        "100ms",
        "--preempt",
        "pause",
        "--host-cpus",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = first.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(130));
    let (stdout, stderr) = text(&second);
    assert_eq!(second.status.code(), Some(0), "{stderr}");
    let says = "another ipivirt process is injecting on host CPUs [1]";
    assert!(stderr.contains(says), "{stderr}");
    assert!(stdout.contains(says), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(
        r["host"]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains(says)),
        "{r}"
    );
    // Alone again: no warning.
    let alone = ipivirt(&[
        "run",
        "--quiet",
        "--vcpus",
        "2",
        "--designs",
        "upstream",
        "--duration",
        "100ms",
        "--preempt",
        "pause",
        "--host-cpus",
        "1",
    ]);
    let (_, stderr) = text(&alone);
    assert!(!stderr.contains("another ipivirt"), "{stderr}");
}
