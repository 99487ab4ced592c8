//! Resource exhaustion ends cleanly (issue 17, item 5): under a low
//! address-space limit every run ends with exit 0 or 6 and a message,
//! never a signal (the allocator's abort, a stack that cannot grow); out
//! of file descriptors is exit 6 naming `ulimit -n`, not "KVM unusable";
//! statistics lost to the fd limit are a warning, not silent blanks.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use common::kvm_or_skip;

/// Runs the binary under `sh -c "ulimit ...; exec ipivirt ..."`.
fn limited(ulimit: &str, args: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit {ulimit}; exec {} {args}",
            env!("CARGO_BIN_EXE_ipivirt")
        ))
        .output()
        .unwrap()
}

const RUN: &str = "run --quiet --vcpus 4 --duration 10ms --designs upstream --preempt pause";

#[test]
fn test_low_address_space_limit_never_kills_by_signal() {
    if !kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    // The smallest limit (KiB) under which the run succeeds, by bisection.
    let ok = |kib: u64| limited(&format!("-v {kib}"), RUN).status.success();
    let (mut lo, mut hi) = (64_000u64, 4_000_000u64);
    assert!(ok(hi), "the run needs more than {hi} KiB?");
    while hi - lo > 500 {
        let mid = (lo + hi) / 2;
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // Just below it every allocation of the run fails somewhere: guest
    // memory, a thread, a heap allocation (the abort before issue 17).
    let mut outcomes = std::collections::BTreeMap::new();
    for kib in (hi.saturating_sub(40_000)..hi + 2_000).step_by(500) {
        let out = limited(&format!("-v {kib}"), RUN);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            None,
            "ulimit -v {kib}: killed by a signal: {stderr}"
        );
        let code = out.status.code().unwrap();
        assert!(
            code == 0 || code == 6,
            "ulimit -v {kib}: exit {code}: {stderr}"
        );
        if code == 6 {
            assert!(
                stderr.contains("ipivirt: error: "),
                "ulimit -v {kib}: {stderr}"
            );
            let first = stderr.lines().next().unwrap_or("").to_string();
            *outcomes
                .entry(first.chars().take(50).collect::<String>())
                .or_insert(0) += 1;
        }
    }
    eprintln!("success from {hi} KiB; failures: {outcomes:#?}");
}

#[test]
fn test_out_of_file_descriptors_names_the_limit() {
    if !kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let out = limited("-n 16", "boot --quiet --vcpus 64");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("out of file descriptors (ulimit -n is 16)"),
        "{stderr}"
    );
    assert!(!stderr.contains("KVM unusable"), "{stderr}");
}

#[test]
fn test_statistics_lost_to_the_fd_limit_are_a_warning() {
    if !kvm_or_skip() {
        return;
    }
    let _g = common::heavy();
    let mut degraded = 0;
    for n in 8..=24 {
        let out = limited(&format!("-n {n}"), RUN);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let code = out.status.code();
        assert!(
            code == Some(0) || code == Some(6),
            "-n {n}: {:?} {stderr}",
            out.status
        );
        if code == Some(6) {
            assert!(
                stderr.contains("out of file descriptors"),
                "-n {n}: {stderr}"
            );
            continue;
        }
        // A vCPU row whose five kvm: columns are all `-`.
        let blank = stdout
            .lines()
            .skip_while(|l| !l.starts_with("vcpu  tid"))
            .skip(1)
            .take_while(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .any(|l| l.split_whitespace().rev().take(5).all(|c| c == "-"));
        if blank {
            degraded += 1;
            assert!(
                stderr.contains("warning: KVM statistics of")
                    && stderr.contains(&format!("ulimit -n is {n}")),
                "-n {n}: blank kvm: columns without a warning: {stderr}"
            );
            assert!(stdout.contains("host: warning: KVM statistics"), "{stdout}");
        }
    }
    assert!(
        degraded > 0,
        "no fd limit degraded the statistics: the test tests nothing"
    );
}
