//! The kernel layer: everything a small SMP kernel needs, and nothing of
//! the experiment. It imports neither `xcall` nor `workload`; they plug in
//! through [`trap::set_handler`], [`sched::set_hooks`],
//! [`syscall::register`] and the [`boot::Program`].

pub mod apic;
pub mod arch;
pub mod boot;
pub mod console;
pub mod fmt;
pub mod heap;
pub mod hooks;
pub mod hotplug;
mod mem;
mod panic;
pub mod percpu;
pub mod pv;
pub mod sched;
pub mod shared;
pub mod sync;
pub mod syscall;
pub mod trace;
pub mod trap;
pub mod usermode;
