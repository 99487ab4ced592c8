//! The ipivirt guest: a tiny SMP micro-kernel that the VMM boots straight
//! into 64-bit mode on every vCPU (see `boot`).
//!
//! Built for the host target as a freestanding static ELF: no `std`, no C
//! runtime, our own `memcpy` family (`mem`), and `panic = "abort"`.
#![no_std]
#![no_main]

mod boot;
mod console;
mod cpu;
mod fmt;
mod mem;
mod panic;
mod pv;
mod shared;
mod spin;
