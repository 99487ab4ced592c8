//! ipivirt: a KVM testbed for cross-CPU function calls (IPIs) on preempted
//! and migrated vCPUs. This crate re-exports the library in `vmm/`
//! ([`ipivirt_vmm`]) so that users write `ipivirt::...`.
pub use ipivirt_vmm::*;
