//! Messages and labels a new user can read (issue 17, item 9): sweep
//! ratios as given, `--timeout` with units, exit codes in `--help`, and
//! a `/dev/kvm` message that suggests only fixes that apply on this host.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{ipivirt, ipivirt_env, ipivirt_exits, kvm_or_skip, text};

#[test]
fn test_sweep_labels_ratios_as_given() {
    if !kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let (stdout, stderr) = ipivirt_exits(
        &[
            "sweep",
            "--quiet",
            "--host-cpus",
            "0,1",
            "--ratios",
            "1:1,2:1",
            "--designs",
            "upstream",
            "--duration",
            "50ms",
            "--tasks-per-cpu",
            "1",
            "--preempt",
            "none",
            "--migrate-every",
            "0",
        ],
        0,
    );
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("upstream")).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    let ratio = |row: &str| row.split_whitespace().nth(2).unwrap().to_string();
    assert_eq!(ratio(rows[0]), "1:1", "{stdout}");
    assert_eq!(ratio(rows[1]), "2:1", "{stdout}");
    // The rows streamed to stderr say which cell of how many, under a header.
    let streamed: Vec<&str> = stderr.lines().filter(|l| l.contains("upstream")).collect();
    assert!(
        stderr
            .lines()
            .next()
            .unwrap()
            .trim_start()
            .starts_with("cell"),
        "{stderr}"
    );
    assert!(streamed[0].trim_start().starts_with("[1/2]"), "{stderr}");
    assert!(streamed[1].trim_start().starts_with("[2/2]"), "{stderr}");
}

#[test]
fn test_timeout_accepts_units() {
    if !kvm_or_skip() {
        return;
    }
    for t in ["10s", "10000ms", "10"] {
        let (stdout, _) = ipivirt_exits(&["boot", "--quiet", "--vcpus", "2", "--timeout", t], 0);
        assert!(stdout.contains("online 2/2 vCPUs"), "{stdout}");
    }
}

#[test]
fn test_help_lists_exit_codes() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["boot", "--help"],
        &["sweep", "--help"],
    ] {
        let out = ipivirt(args);
        let (stdout, _) = text(&out);
        assert_eq!(out.status.code(), Some(0));
        assert!(stdout.contains("Exit status:"), "{args:?}: {stdout}");
        for code in ["  2 ", "  5 ", "  6 ", "130", "143"] {
            assert!(stdout.contains(code), "{args:?} lacks {code}: {stdout}");
        }
    }
}

#[test]
fn test_kvm_permission_message_suggests_only_fixes_that_apply() {
    if !kvm_or_skip() {
        return;
    }
    let m = std::fs::metadata("/dev/kvm").unwrap();
    // Needs root to become `nobody`, and a device `nobody` cannot open.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root || m.mode() & 0o006 != 0 {
        eprintln!("skipped: needs root and a /dev/kvm closed to others");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ipivirt"))
        .args(["boot", "--quiet"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(
        stderr.contains(&format!("{:04o}", m.mode() & 0o7777)),
        "the mode is shown: {stderr}"
    );
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    if !groups.lines().any(|l| l.starts_with("kvm:")) {
        assert!(
            !stderr.contains("add your user to the 'kvm' group"),
            "there is no kvm group to join: {stderr}"
        );
        assert!(stderr.contains("no kvm group yet"), "{stderr}");
    }
}

#[test]
fn test_kvm_path_that_is_not_kvm_or_empty() {
    if !kvm_or_skip() {
        return;
    }
    let out = ipivirt_env(&["boot", "--quiet"], &[("IPIVIRT_KVM_PATH", "/dev/null")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("/dev/null is not a KVM device"), "{stderr}");
    // Empty is unset: the default device boots.
    let out = ipivirt_env(
        &["boot", "--quiet", "--vcpus", "2"],
        &[("IPIVIRT_KVM_PATH", "")],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("online 2/2"), "{stdout}");
}

#[test]
fn test_quiet_failure_shows_the_last_guest_console_lines() {
    if !kvm_or_skip() {
        return;
    }
    // With --quiet the console is captured: a failure shows its tail.
    let (_, stderr) = ipivirt_exits(
        &["boot", "--quiet", "--vcpus", "2", "--test-hook", "panic"],
        3,
    );
    let tail = stderr
        .split("last guest console lines:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no console tail: {stderr}"));
    assert!(
        tail.contains("panic message: test hook: panic requested"),
        "{stderr}"
    );
}
