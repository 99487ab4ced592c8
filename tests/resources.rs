//! Resource bounds of the library: many short runs in one process keep the
//! VMM's memory (RSS) flat and leak no file descriptor or thread.
//!
//! `cargo test` runs 200 boots; the 1,000-boot run of issue 9 is
//! `cargo test --release --test resources -- --ignored` (figures in the
//! README).

mod common;

use std::time::Instant;

use common::kvm_or_skip;
use ipivirt::{boot, MachineConfig};

/// Resident set size of this process, in bytes (`VmRSS` of
/// /proc/self/status).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Boots `n` short VMs (1 and 2 vCPUs alternately, no workload) after a
/// warm-up of 20, and checks that RSS, open fds and threads stay flat.
fn many_boots(n: usize) {
    // The two tests of this binary would see each other's VMs and fds.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let one = |i: usize| {
        let mut c = MachineConfig::new(1 + (i % 2) as u32);
        c.timeout = std::time::Duration::from_secs(60);
        boot(&c).unwrap_or_else(|e| panic!("boot {i}: {e}"));
    };
    for i in 0..20 {
        one(i);
    }
    let (rss0, fds0, threads0) = (rss_bytes(), open_fds(), threads());
    let started = Instant::now();
    let mut peak = rss0;
    for i in 0..n {
        one(i);
        peak = peak.max(rss_bytes());
    }
    let secs = started.elapsed().as_secs_f64();
    let (rss1, fds1, threads1) = (rss_bytes(), open_fds(), threads());
    eprintln!(
        "{n} boots in {secs:.1} s: RSS {:.1} MiB -> {:.1} MiB (peak {:.1} MiB), fds {fds0} -> {fds1}, threads {threads0} -> {threads1}",
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
    assert_eq!(fds1, fds0, "file descriptors leaked");
    assert_eq!(threads1, threads0, "threads leaked");
    // Flat: at most 4 MiB of growth (allocator slack), whatever n is.
    assert!(
        rss1 <= rss0 + (4 << 20),
        "RSS grew from {rss0} to {rss1} bytes over {n} boots"
    );
}

#[test]
fn test_resources_flat_over_200_boots() {
    if !kvm_or_skip() {
        return;
    }
    many_boots(200);
}

#[test]
#[ignore = "1,000 boots (about a minute): cargo test --release --test resources -- --ignored"]
fn test_resources_flat_over_1000_boots() {
    if !kvm_or_skip() {
        return;
    }
    many_boots(1000);
}
