//! The ipivirt guest: a tiny SMP micro-kernel that the VMM boots straight
//! into 64-bit mode on every vCPU (see `boot`).
//!
//! Built for the host target as a freestanding static ELF: no `std`, no C
//! runtime, our own `memcpy` family (`mem`), and `panic = "abort"`.
#![no_std]
#![no_main]

extern crate alloc;

mod apic;
mod boot;
mod checker;
mod console;
mod cpu;
mod cpumask;
mod floor;
mod fmt;
mod heap;
mod mask;
mod mem;
mod panic;
mod percpu;
mod pv;
mod sched;
mod shared;
mod smp;
mod spin;
mod sync;
mod syscall;
mod torture;
mod trap;
mod user;
mod workload;
