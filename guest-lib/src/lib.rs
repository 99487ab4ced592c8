//! The pure parts of the ipivirt guest kernel: CPU masks, the wait-set
//! walk, the lock-free call list, the checker's request table, the random
//! generators and weighted draws. They build `no_std` for the guest and
//! with std for `cargo test`, so their unit tests run on the host in
//! milliseconds instead of through a VM.
#![cfg_attr(not(test), no_std)]

pub mod cpumask;
pub mod llist;
pub mod requests;
pub mod rng;

#[cfg(test)]
mod test_support {
    use std::sync::Mutex;

    /// `nr_cpu_ids` is global, as in the guest: tests that set it serialise.
    static NR: Mutex<()> = Mutex::new(());

    /// Runs `f` with `nr_cpu_ids` set to `n`, alone among such tests.
    pub fn with_cpus<R>(n: u32, f: impl FnOnce() -> R) -> R {
        let _g = NR.lock().unwrap_or_else(|p| p.into_inner());
        crate::cpumask::set_nr_cpu_ids(n);
        f()
    }
}
