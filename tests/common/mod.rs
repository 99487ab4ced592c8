//! Helpers shared by the integration tests. Every test here boots a real
//! VM on /dev/kvm; none mocks KVM.
#![allow(dead_code)] // each test binary uses its own subset

pub mod host;
pub mod json;
pub mod machine;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Runs `ipivirt` with `args`, asserts it exits with `code`, and returns
/// its stdout and stderr.
pub fn ipivirt_exits(args: &[&str], code: i32) -> (String, String) {
    let out = ipivirt(args);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "ipivirt {args:?}: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Runs `ipivirt ARGS --json FILE` (FILE in a temporary directory), asserts
/// it exits 0, and returns its stdout and the JSON report.
pub fn ipivirt_json(args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut all = args.to_vec();
    all.extend(["--json", json.to_str().unwrap()]);
    let (stdout, _) = ipivirt_exits(&all, 0);
    (stdout, read_json(&json))
}

/// The options that turn host injection off: no preemption, no migration.
pub const NO_INJECTION: [&str; 4] = ["--preempt", "none", "--migrate-every", "0"];

/// A sweep of two small cells: 2 and 3 vCPUs on host CPU 0, `upstream`
/// only (options may follow).
pub const TWO_CELL_SWEEP: [&str; 7] = [
    "sweep",
    "--host-cpus",
    "0",
    "--vcpus-list",
    "2,3",
    "--designs",
    "upstream",
];

/// The arguments of `run --quiet` on `vcpus` vCPUs, followed by `extra`.
pub fn quiet_run<'a>(vcpus: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--quiet", "--vcpus", vcpus];
    args.extend_from_slice(extra);
    args
}

/// The arguments of `run --quiet` on 2 vCPUs, design upstream, with
/// `preempt` preemption for `duration`, followed by `extra`.
pub fn run_args<'a>(duration: &'a str, preempt: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = quiet_run(
        "2",
        &[
            "--designs",
            "upstream",
            "--duration",
            duration,
            "--preempt",
            preempt,
        ],
    );
    args.extend_from_slice(extra);
    args
}

/// [`run_args`] with pause preemption.
pub fn pause_run<'a>(duration: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    run_args(duration, "pause", extra)
}

/// Starts `ipivirt` with `args`, its stdout and stderr piped.
pub fn spawn_ipivirt(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ipivirt"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ipivirt starts")
}

/// Waits for `child` to exit; returns its status, stdout and stderr.
pub fn finish(child: Child) -> (ExitStatus, String, String) {
    let out = child.wait_with_output().expect("ipivirt exits");
    let (stdout, stderr) = text(&out);
    (out.status, stdout, stderr)
}

/// Polls `done` until it holds; panics saying `what` after 20 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until process `pid` has a thread whose name starts with `prefix`.
pub fn wait_for_thread(pid: u32, prefix: &str) {
    wait_until(&format!("no {prefix} thread started in {pid}"), || {
        task_names(pid).iter().any(|n| n.starts_with(prefix))
    });
}

/// Sends signal `sig` (a name such as `INT`) to process `pid` with kill(1).
pub fn send_signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{sig} {pid}: {status}");
}

/// Whether process `pid` has exited and been reaped.
pub fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// The JSON document in the file at `path`.
pub fn read_json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

/// Whether this suite's guests run in the PVM host's native mode: the host
/// offers it and `IPIVIRT_GUEST_MODE` does not force the plain kernel.
pub fn native_mode() -> bool {
    let forced_plain = std::env::var("IPIVIRT_GUEST_MODE").is_ok_and(|v| v == "plain");
    std::path::Path::new("/sys/module/kvm_pvm").is_dir() && !forced_plain
}
