//! The host side of a run as the tests see it: the CPUs this process may
//! use, where its vCPU threads ran, and that a run left nothing behind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipivirt::inject::placement;
use ipivirt::{InjectConfig, PreemptMode};

/// The host CPUs this process may run on.
pub fn allowed() -> Vec<usize> {
    placement::process_cpus().expect("sched_getaffinity")
}

/// [`allowed`] when it has two CPUs or more; otherwise `None` after saying
/// that the test is skipped and why (`what` needs two host CPUs).
pub fn two_cpus_or_skip(what: &str) -> Option<Vec<usize>> {
    let cpus = allowed();
    if cpus.len() < 2 {
        eprintln!("skipped: {what} needs two host CPUs");
        return None;
    }
    Some(cpus)
}

/// vCPU thread name -> host CPU -> how many samples saw it there.
pub type VcpuCpus = BTreeMap<String, BTreeMap<usize, u32>>;

/// Samples, every 0.5 ms while `run` runs, the host CPU each vCPU thread
/// of this process is on (field 39 of its stat); returns `run`'s result
/// and the samples.
pub fn sample_vcpu_cpus<T>(run: impl FnOnce() -> T) -> (T, VcpuCpus) {
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = VcpuCpus::new();
            while !done.load(Ordering::Relaxed) {
                for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                    let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                    let comm = comm.trim();
                    if !comm.starts_with("vcpu-") {
                        continue;
                    }
                    let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                    if let Some(cpu) = placement::stat_field(&stat, 39).and_then(|f| f.parse().ok())
                    {
                        *seen
                            .entry(comm.to_string())
                            .or_default()
                            .entry(cpu)
                            .or_default() += 1;
                    }
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            seen
        })
    };
    let r = run();
    done.store(true, Ordering::Relaxed);
    (r, sampler.join().unwrap())
}

/// This thread's affinity mask, to compare with after a run.
pub fn affinity() -> placement::CpuMask {
    placement::get_affinity(0).unwrap()
}

/// Asserts that a run (`what`, for the message) left no injector or vCPU
/// thread in this process and this thread's affinity at `mask_before`.
pub fn assert_nothing_left(mask_before: &placement::CpuMask, what: &str) {
    assert_eq!(super::threads_named("inj-"), Vec::<String>::new(), "{what}");
    assert_eq!(
        super::threads_named("vcpu-"),
        Vec::<String>::new(),
        "{what}"
    );
    assert_eq!(&affinity(), mask_before, "{what}");
}

/// 200 us vCPU pauses every 2 ms and a vCPU thread migration every 2 ms.
pub fn pause_and_migrate() -> InjectConfig {
    InjectConfig {
        preempt: PreemptMode::Pause,
        preempt_len: Duration::from_micros(200),
        preempt_every: Duration::from_millis(2),
        migrate_every: Some(Duration::from_millis(2)),
        ..InjectConfig::default()
    }
}
