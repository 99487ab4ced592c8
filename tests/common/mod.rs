//! Helpers shared by the integration tests. Every test here boots a real
//! VM on /dev/kvm; none mocks KVM.
#![allow(dead_code)] // each test binary uses its own subset

use std::process::{Command, Output};

/// Set to `1` to skip VM-booting tests on a machine without KVM (they
/// fail otherwise, saying why).
pub const SKIP_ENV: &str = "IPIVIRT_SKIP_KVM_TESTS";

/// Whether the KVM tests should run. Panics with a clear message when
/// /dev/kvm is unusable and the opt-out is not set.
pub fn kvm_or_skip() -> bool {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if usable {
        return true;
    }
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        eprintln!("skipped: /dev/kvm is not usable and {SKIP_ENV}=1");
        return false;
    }
    panic!(
        "/dev/kvm is missing or not accessible: these tests boot real VMs and need a KVM host \
         (or set {SKIP_ENV}=1 to skip them)"
    );
}

/// Runs the `ipivirt` binary with `args`.
pub fn ipivirt(args: &[&str]) -> Output {
    ipivirt_env(args, &[])
}

/// Runs the `ipivirt` binary with `args` and extra environment variables.
pub fn ipivirt_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipivirt"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the ipivirt binary runs")
}

/// stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Serialises the heavy VM tests of one test binary: many vCPUs on the 2
/// host CPUs of a CI machine, all emulating guest kernel code at once,
/// would starve each other into timeouts.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Names (comm) of the threads of process `pid` (empty if it is gone).
pub fn task_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Threads of this process whose name starts with `prefix`.
pub fn threads_named(prefix: &str) -> Vec<String> {
    task_names(std::process::id())
        .into_iter()
        .filter(|c| c.starts_with(prefix))
        .collect()
}
