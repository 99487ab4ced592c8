//! The arch seam: every privileged or platform-specific operation the
//! kernel performs goes through this module, so that a second backend (the
//! PVM host's native mode) can be added without touching the scheduler,
//! the cross-call layer or any workload.
//!
//! The operations:
//! - interrupts: [`irq_disable`], [`irq_enable`], [`irq_save`],
//!   [`irq_restore`], [`irqs_enabled`], [`frame_irqs_enabled`];
//! - halting: [`safe_halt`] (enable and halt without a wake-up race),
//!   [`halt_forever`];
//! - the local APIC: [`x2apic_write`] (ICR, EOI, TSC deadline);
//! - traps: the entry stubs and the return to kernel and user mode
//!   ([`entry`]), the fault address ([`fault_address`]);
//! - user mode: [`enter_user`], the system-call instruction ([`sys`]) and
//!   its recognition on entry ([`is_user_syscall`]);
//! - CR3 and TLB: none yet (the guest runs on the VMM's identity map and its
//!   shootdown callback flushes nothing); they belong here when they come.
//!
//! Boot-time set-up (descriptor tables, MSRs, CPUID, the TSC, port I/O) is
//! in [`x86`], shared by every backend. Today the one backend is
//! [`plain`]: an ordinary CPL0 kernel.

pub mod entry;
mod plain;
mod x86;

pub use entry::TrapFrame;
pub use plain::{
    enter_user, fault_address, frame_irqs_enabled, halt_forever, irq_disable, irq_enable,
    irq_restore, irq_save, irqs_enabled, is_user_syscall, safe_halt, sys, x2apic_write,
    SYSCALL_INSN_LEN,
};
pub use x86::*;
