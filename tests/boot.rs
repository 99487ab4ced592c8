//! Booting real VMs: vCPU counts on both sides of the 64-CPU word boundary
//! and up to 256, and the `boot` command's output.

mod common;

use std::time::Duration;

use ipivirt::{boot, ConsoleMode, MachineConfig};

fn boot_n(vcpus: u32) {
    if !common::kvm_or_skip() {
        return;
    }
    let _serial = (vcpus > 64).then(common::heavy);
    let mut cfg = MachineConfig::new(vcpus);
    cfg.timeout = Duration::from_secs(60);
    cfg.console = ConsoleMode::Capture;
    let report = boot(&cfg).unwrap_or_else(|e| panic!("boot of {vcpus} vCPUs failed: {e}"));
    assert_eq!((report.vcpus, report.online), (vcpus, vcpus));
    assert!(
        report.boot_time > Duration::ZERO && report.boot_time < cfg.timeout,
        "{:?}",
        report.boot_time
    );
    assert!(
        report.console_tail.iter().any(|l| l.contains(&format!(
            "ipivirt guest: abi v{}, {vcpus} vCPUs",
            ipivirt::abi::ABI_VERSION
        ))),
        "{:?}",
        report.console_tail
    );
}

#[test]
fn test_boot_1_vcpu() {
    boot_n(1);
}

#[test]
fn test_boot_4_vcpus() {
    boot_n(4);
}

#[test]
fn test_boot_65_vcpus() {
    boot_n(65);
}

#[test]
fn test_boot_256_vcpus() {
    boot_n(256);
}

#[test]
fn test_boot_1024_vcpus_formats_large_numbers() {
    // 1024 takes core's 4-digit integer formatting path, which KVM cannot
    // emulate: the guest must use its own formatting (guest/src/kernel/fmt.rs).
    boot_n(1024);
}

#[test]
fn test_cli_boot_prints_online_line() {
    if !common::kvm_or_skip() {
        return;
    }
    let out = common::ipivirt(&["boot", "--vcpus", "4", "--quiet"]);
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stderr}");
    let line = stdout.lines().next().unwrap_or_default();
    let (ms, kernel) = line
        .strip_prefix("online 4/4 vCPUs in ")
        .and_then(|rest| rest.split_once(" ms (kernel "))
        .and_then(|(n, k)| Some((n.parse::<f64>().ok()?, k.strip_suffix(')')?)))
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    assert!(ms > 0.0, "{line}");
    assert!(["plain", "pvm-native"].contains(&kernel), "{line}");
}

/// The mode the environment asks for is the mode that runs: `plain` gives
/// the plain kernel everywhere; on a PVM host `auto` gives the native one.
#[test]
fn test_guest_mode_flag_picks_the_kernel() {
    if !common::kvm_or_skip() {
        return;
    }
    let boot = |mode: &str| {
        let out = common::ipivirt(&["boot", "--vcpus", "2", "--quiet", "--guest-mode", mode]);
        let (stdout, stderr) = common::text(&out);
        (out.status.code(), stdout, stderr)
    };
    let (code, stdout, stderr) = boot("plain");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("(kernel plain)"), "{stdout}");
    let pvm_host = std::path::Path::new("/sys/module/kvm_pvm").is_dir();
    let (code, stdout, stderr) = boot("pvm");
    if pvm_host {
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("(kernel pvm-native)"), "{stdout}");
        let (_, auto, _) = boot("auto");
        assert!(auto.contains("(kernel pvm-native)"), "{auto}");
    } else {
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("kvm_pvm"), "{stderr}");
    }
    let (code, _, stderr) = boot("emulated");
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn test_cli_console_has_vcpu_prefix() {
    if !common::kvm_or_skip() {
        return;
    }
    let out = common::ipivirt(&["boot", "--vcpus", "2"]);
    let (_, stderr) = common::text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "[vcpu 0] ipivirt guest: abi v{}, 2 vCPUs, x2APIC id 0",
            ipivirt::abi::ABI_VERSION
        )),
        "{stderr}"
    );
}
