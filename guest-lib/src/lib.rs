//! The pure parts of the ipivirt guest kernel: CPU masks, the wait-set
//! walk, the lock-free call list, the checker's request table, the random
//! generators and weighted draws. They build `no_std` for the guest and
//! with std for `cargo test`, so their unit tests run on the host in
//! milliseconds instead of through a VM.
#![cfg_attr(not(test), no_std)]

pub mod cpumask;
pub mod llist;
pub mod rng;
