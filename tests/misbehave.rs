//! A guest that misbehaves on purpose (hidden `--test-hook` values): it
//! scribbles garbage over the results, floods the console, loses a vCPU
//! before it comes online, reports Done from an AP, or triple-faults on an
//! AP while the others run a workload. Each ends with its exit code and a
//! message that points at the cause, and, with host injection on, no
//! injector or vCPU thread is left behind and affinities are restored.

mod common;

use std::time::{Duration, Instant};

use common::{ipivirt, ipivirt_exits, kvm_or_skip, text};
use ipivirt::{boot, InjectConfig, MachineConfig, TestHook, Workload};

/// Runs `hook` on `vcpu` of a 4-vCPU guest with pause preemption and a
/// 2 ms migration storm; returns the error's exit code and message after
/// checking that nothing is left behind.
fn hooked_with_injection(
    hook: TestHook,
    vcpu: u32,
    workload: Workload,
    timeout: Duration,
) -> (u8, String) {
    let _serial = common::heavy();
    let mask_before = common::host::affinity();
    let mut c = MachineConfig::new(4);
    c.timeout = timeout;
    c.test_hook = hook;
    c.test_hook_vcpu = vcpu;
    c.workload = workload;
    c.duration = Duration::from_secs(2);
    c.inject = InjectConfig {
        host_cpus: Some(common::host::allowed()),
        ..common::host::pause_and_migrate()
    };
    let started = Instant::now();
    let result = boot(&c);
    let elapsed = started.elapsed();
    common::host::assert_nothing_left(&mask_before, &format!("{hook:?}"));
    // Ended by its own failure or the watchdog, not by the stop grace.
    assert!(
        elapsed < timeout + Duration::from_secs(4),
        "{hook:?}: {elapsed:?}"
    );
    match result {
        Ok(r) => (0, format!("{r:?}")),
        Err(e) => {
            if e.exit_code() == 3 {
                assert_eq!(e.register_dumps().len(), 4, "every vCPU's registers: {e}");
            }
            (e.exit_code(), e.to_string())
        }
    }
}

#[test]
fn test_garbage_results_name_a_field_exit_3() {
    if !kvm_or_skip() {
        return;
    }
    let (code, msg) = hooked_with_injection(
        TestHook::Garbage,
        0,
        Workload::None,
        Duration::from_secs(30),
    );
    assert_eq!(code, 3, "{msg}");
    assert!(msg.starts_with("guest wrote invalid results: "), "{msg}");
    assert!(
        ["results.", "vcpus[].", "vcpu_results[]."]
            .iter()
            .any(|f| msg.contains(f)),
        "names a field: {msg}"
    );
    // Through the CLI: the same message, and the VMM does not panic.
    for seed in ["1", "2", "3"] {
        let (_, stderr) = ipivirt_exits(
            &[
                "boot",
                "--quiet",
                "--vcpus",
                "4",
                "--seed",
                seed,
                "--timeout",
                "30",
                "--test-hook",
                "garbage",
            ],
            3,
        );
        assert!(stderr.contains("guest wrote invalid results: "), "{stderr}");
        assert!(stderr.contains(", expected "), "{stderr}");
        assert!(!stderr.contains("panicked at"), "{stderr}");
    }
}

#[test]
fn test_console_flood_is_capped_and_run_ends() {
    if !kvm_or_skip() {
        return;
    }
    let (code, msg) = hooked_with_injection(
        TestHook::ConsoleFlood,
        1,
        Workload::None,
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{msg}");
    // The CLI prints at most the cap (plus its own lines) and one note.
    let started = Instant::now();
    let out = ipivirt(&[
        "boot",
        "--vcpus",
        "4",
        "--timeout",
        "60",
        "--test-hook",
        "console-flood",
        "--test-hook-vcpu",
        "1",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        &stderr[..stderr.len().min(2000)]
    );
    assert!(stdout.contains("online 4/4 vCPUs"), "{stdout}");
    let cap = ipivirt::console::MAX_OUTPUT as usize;
    assert!(
        abi_flood_bytes() > 2 * cap,
        "the flood is larger than the cap"
    );
    assert!(
        stderr.len() < cap + cap / 4,
        "stderr {} bytes for a {cap}-byte cap",
        stderr.len()
    );
    assert_eq!(
        stderr
            .matches(&format!("console output suppressed after {cap} bytes"))
            .count(),
        1,
        "one note"
    );
    eprintln!("flood run took {:?}", started.elapsed());
}

fn abi_flood_bytes() -> usize {
    // The abi crate is not a dependency of the tests; the guest writes 1 MiB.
    1 << 20
}

#[test]
fn test_vcpu_lost_before_online_is_named_by_watchdog() {
    if !kvm_or_skip() {
        return;
    }
    let (code, msg) = hooked_with_injection(
        TestHook::HaltEarly,
        2,
        Workload::Idle,
        Duration::from_secs(2),
    );
    assert_eq!(code, 4, "{msg}");
    assert!(msg.contains("(3/4 vCPUs online)"), "{msg}");
    assert!(msg.contains("never came online: vCPUs [2]"), "{msg}");
}

#[test]
fn test_done_from_an_ap_is_a_contract_error() {
    if !kvm_or_skip() {
        return;
    }
    let (code, msg) = hooked_with_injection(
        TestHook::DoneFromAp,
        3,
        Workload::Idle,
        Duration::from_secs(30),
    );
    assert_eq!(code, 3, "{msg}");
    assert!(
        msg.contains("vCPU 3 reported Done, which only the BSP (vCPU 0) may report"),
        "{msg}"
    );
}

#[test]
fn test_triple_fault_on_ap_during_workload_exits_3() {
    if !kvm_or_skip() {
        return;
    }
    let (code, msg) = hooked_with_injection(
        TestHook::TripleFaultLate,
        2,
        Workload::Idle,
        Duration::from_secs(30),
    );
    assert_eq!(code, 3, "{msg}");
    assert!(
        msg.contains("vCPU 2 stopped: triple fault (KVM_EXIT_SHUTDOWN)"),
        "{msg}"
    );
    // The CLI prints the register dump, the faulting vCPU in full.
    let (_, stderr) = ipivirt_exits(
        &[
            "run",
            "--quiet",
            "--vcpus",
            "4",
            "--timeout",
            "30",
            "--workload",
            "idle",
            "--duration",
            "2s",
            "--preempt",
            "pause",
            "--migrate-every",
            "2ms",
            "--test-hook",
            "triple-fault-late",
            "--test-hook-vcpu",
            "2",
        ],
        3,
    );
    assert!(stderr.contains("vCPU 2 stopped: triple fault"), "{stderr}");
    assert!(stderr.contains("vCPU registers at stop:"), "{stderr}");
    for vcpu in 0..4 {
        assert!(
            stderr.contains(&format!("vcpu {vcpu}: mp_state=")),
            "vcpu {vcpu} missing: {stderr}"
        );
    }
}
