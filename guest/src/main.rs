//! The ipivirt guest: a tiny SMP micro-kernel that the VMM boots straight
//! into 64-bit mode on every vCPU.
//!
//! Three layers, each importing only the ones below it:
//! - [`kernel`]: boot, the arch seam, traps, APIC, per-CPU data, the
//!   scheduler, locks, heap, console, user mode and system-call dispatch;
//! - [`xcall`]: the object under study: Linux's cross-CPU function calls,
//!   the wait-mask designs, the PV call paths and the invariant checker;
//! - [`workload`]: what runs on top (one file per workload), the
//!   calibration and the latency probe.
//!
//! The kernel reaches the layers above only through registration points
//! set once at boot (interrupt handlers, task hooks, system calls) and the
//! [`kernel::boot::Program`] this file hands it. `scripts/check-layers`
//! enforces the direction.
//!
//! Built for the host target as a freestanding static ELF: no `std`, no C
//! runtime, our own `memcpy` family (`kernel::mem`), and `panic = "abort"`.
#![no_std]
#![no_main]

extern crate alloc;

mod kernel;
mod workload;
mod xcall;

kernel::boot::entry_point!(workload::PROGRAM);
