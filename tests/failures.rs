//! Every failure mode ends with its exit code from the interface contract
//! and a message that says what happened. The guest fails on purpose
//! through the hidden `--test-hook` flag.

mod common;

use common::{ipivirt, ipivirt_env, kvm_or_skip, text};

fn hooked(hook: &str, vcpu: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "boot",
        "--quiet",
        "--vcpus",
        "4",
        "--test-hook",
        hook,
        "--test-hook-vcpu",
        vcpu,
    ];
    args.extend_from_slice(extra);
    let out = ipivirt(&args);
    let (_, stderr) = text(&out);
    (out.status.code().expect("exited, not killed"), stderr)
}

#[test]
fn test_guest_panic_exits_3_with_location_and_message() {
    if !kvm_or_skip() {
        return;
    }
    let (code, stderr) = hooked("panic", "2", &[]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("guest panicked on vCPU 2 at src/kernel/hooks.rs:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("test hook: panic requested on vCPU 2"),
        "{stderr}"
    );
}

#[test]
fn test_triple_fault_exits_3_with_register_dump() {
    if !kvm_or_skip() {
        return;
    }
    let (code, stderr) = hooked("triple-fault", "1", &[]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("vCPU 1 stopped: triple fault (KVM_EXIT_SHUTDOWN)"),
        "{stderr}"
    );
    assert!(stderr.contains("vCPU registers at stop:"), "{stderr}");
    for vcpu in 0..4 {
        assert!(
            stderr.contains(&format!("vcpu {vcpu}: mp_state=")),
            "vcpu {vcpu} missing: {stderr}"
        );
    }
    assert!(stderr.contains("rip=0x"), "{stderr}");
}

#[test]
fn test_hang_fires_watchdog_exit_4() {
    if !kvm_or_skip() {
        return;
    }
    let start = std::time::Instant::now();
    let (code, stderr) = hooked("hang", "0", &["--timeout", "2"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("watchdog: the guest did not finish within 2s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("vcpu 0: mp_state=runnable"),
        "the spinning BSP is dumped: {stderr}"
    );
    // In the PVM host's native mode the dump carries the virtual IF (off:
    // the hook spins before the BSP enables interrupts).
    if common::native_mode() {
        assert!(stderr.contains(" vif=0/"), "{stderr}");
    } else {
        assert!(!stderr.contains(" vif="), "{stderr}");
    }
    // Kicked out of KVM_RUN promptly, not after the stop grace period.
    assert!(
        start.elapsed() < std::time::Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn test_hang_on_ap_fires_watchdog() {
    if !kvm_or_skip() {
        return;
    }
    // An AP spins with interrupts off before coming online, so the BSP
    // waits forever: both kinds of thread (spinning in the guest, halted
    // in KVM) must be kicked out.
    let (code, stderr) = hooked("hang", "3", &["--timeout", "1.5"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("(3/4 vCPUs online)"), "{stderr}");
}

#[test]
fn test_bad_results_magic_is_a_clear_error() {
    if !kvm_or_skip() {
        return;
    }
    let (code, stderr) = hooked("bad-results-magic", "0", &[]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("guest wrote invalid results: results.magic = 0xbadc0de"),
        "{stderr}"
    );
}

#[test]
fn test_out_of_range_count_is_a_clear_error() {
    if !kvm_or_skip() {
        return;
    }
    let (code, stderr) = hooked("bad-online-count", "0", &[]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("results.nr_online = 0x68, expected at most control.nr_vcpus"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked at"),
        "the VMM must not panic: {stderr}"
    );
}

#[test]
fn test_missing_kvm_exits_5() {
    let out = ipivirt_env(&["boot"], &[("IPIVIRT_KVM_PATH", "/nonexistent/kvm")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/kvm does not exist: ipivirt needs a Linux host with KVM"),
        "{stderr}"
    );
}

#[test]
fn test_bad_cli_values_exit_2() {
    for args in [
        &["boot", "--vcpus", "0"][..],
        &["boot", "--vcpus", "100000"],
        &["boot", "--timeout", "0"],
        &["run", "--vcpus", "many"],
        &["boot", "--test-hook-vcpu", "9"],
        &["frobnicate"],
    ] {
        let out = ipivirt(args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?} prints why");
    }
}
