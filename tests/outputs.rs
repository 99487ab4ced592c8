//! Report files a user can trust: bad `--json`/`--svg`/`--trace` paths
//! are refused before the VM boots (exit 2), a failed run never leaves the
//! previous run's report in place, a trace that cannot be written never
//! costs the text report, `--json -` is stdout, and a full stdout is an
//! error. Every test boots real VMs (or would, without the fix).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ipivirt_exits, kvm_or_skip, pause_run, read_json, run_args};

/// The arguments of a short real run (2 vCPUs, one design, no injection)
/// followed by `extra`.
fn short<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    run_args(
        "100ms",
        "none",
        &[&["--migrate-every", "0"][..], extra].concat(),
    )
}

#[test]
fn test_bad_output_paths_exit_2_before_booting() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let missing = format!("{d}/no-such-dir/r.json");
    for (option, path, says) in [
        ("--json", missing.as_str(), "does not exist"),
        ("--json", d.as_str(), "is a directory"),
        ("--json", "/proc/version", "cannot write there"),
        ("--svg", missing.as_str(), "does not exist"),
        ("--trace", missing.as_str(), "does not exist"),
        ("--trace", d.as_str(), "is a directory"),
        ("--trace", "-", "needs a file name"),
    ] {
        let started = Instant::now();
        // A 60 s run: booting at all would show in the time taken.
        let (stdout, stderr) = ipivirt_exits(
            &[
                "run",
                "--quiet",
                "--vcpus",
                "2",
                "--duration",
                "60s",
                "--preempt",
                "pause",
                option,
                path,
            ],
            2,
        );
        assert!(stderr.contains(option) && stderr.contains(says), "{stderr}");
        assert!(stdout.is_empty(), "nothing ran: {stdout}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{option} {path}"
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn test_failed_run_replaces_the_previous_json_and_removes_the_svg() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let svg = dir.path().join("r.svg");
    let (j, s) = (json.to_str().unwrap(), svg.to_str().unwrap());
    ipivirt_exits(&short(&["--json", j, "--svg", s]), 0);
    let first = read_json(&json);
    assert_eq!(first["status"], "ok");
    assert!(svg.exists());

    let (_, stderr) = ipivirt_exits(
        &short(&["--json", j, "--svg", s, "--test-hook", "panic"]),
        3,
    );
    let second = read_json(&json);
    assert_eq!(second["status"], "failed", "{second}");
    assert_eq!(second["exit_code"], 3);
    assert!(
        second["reason"].as_str().unwrap().contains("panic"),
        "{second}"
    );
    assert_eq!(second["scenario"]["vcpus"], 2);
    // A failed run's provenance names the mode asked for.
    let asked = std::env::var("IPIVIRT_GUEST_MODE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "auto".into());
    assert_eq!(second["provenance"]["guest_mode"], asked.as_str());
    assert!(second["provenance"]["load_end"].is_array(), "{second}");
    assert!(stderr.contains("(status \"failed\")"), "{stderr}");
    assert!(!svg.exists(), "the earlier plot is removed");
    assert!(stderr.contains("removed the earlier"), "{stderr}");
    // No temporary file is left beside the report.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn test_trace_write_failure_keeps_the_text_report() {
    if !kvm_or_skip() {
        return;
    }
    // /dev/full opens for writing (the check passes) and fails on write.
    let (stdout, stderr) = ipivirt_exits(&pause_run("100ms", &["--trace", "/dev/full"]), 6);
    assert!(
        stderr.contains("cannot write the trace file /dev/full"),
        "{stderr}"
    );
    assert!(stdout.contains("online 2/2 vCPUs"), "{stdout}");
    assert!(stdout.contains("call p99 (us)"), "{stdout}");
    assert!(stdout.contains("preemptions_injected"), "{stdout}");
}

#[test]
fn test_json_dash_writes_the_report_to_stdout_and_text_to_stderr() {
    if !kvm_or_skip() {
        return;
    }
    let (stdout, stderr) = ipivirt_exits(&short(&["--json", "-"]), 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is the JSON");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["designs"][0]["design"], "upstream");
    assert!(stderr.contains("online 2/2 vCPUs"), "{stderr}");
    assert!(!std::path::Path::new("-").exists());
}

#[test]
fn test_report_to_a_full_stdout_is_an_error() {
    if !kvm_or_skip() {
        return;
    }
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ipivirt"))
        .args(short(&[]))
        .stdout(Stdio::from(full))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("cannot write the report to standard output"),
        "{stderr}"
    );
}
