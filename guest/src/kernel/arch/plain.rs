//! The plain backend of the arch seam: an ordinary x86-64 kernel at CPL0.
//! The interrupt flag is RFLAGS.IF (`cli`/`sti`), halting is `sti; hlt`
//! (the one-instruction `sti` shadow closes the wake-up race), x2APIC
//! registers are MSRs, the fault address is CR2, traps return with `iretq`
//! (see [`super::entry`]) and user tasks enter the kernel with `ud2`.
//!
//! On VMX/SVM hosts this runs on the hardware; on PVM hosts (this
//! project's CI) KVM emulates every instruction of it.

use core::arch::asm;

use super::entry::TrapFrame;
use crate::kernel::percpu::selector;

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// Reads RFLAGS.
fn rflags() -> u64 {
    let r: u64;
    // SAFETY: pushfq/pop only touch the stack slot they use.
    unsafe { asm!("pushfq", "pop {}", out(reg) r, options(nomem, preserves_flags)) };
    r
}

/// Whether interrupts are enabled on this CPU.
pub fn irqs_enabled() -> bool {
    rflags() & RFLAGS_IF != 0
}

// The interrupt-flag operations are compiler barriers (no `nomem`): memory
// accesses the compiler moved across `cli` or `sti` would leave or enter
// the interrupts-off section they belong to.

/// Enables interrupts.
///
/// # Safety
/// The IDT and the interrupt stacks must be set up.
pub unsafe fn irq_enable() {
    // SAFETY: delegated to the caller.
    unsafe { asm!("sti", options(nostack)) };
}

/// Disables interrupts.
pub fn irq_disable() {
    // SAFETY: masking interrupts is always safe.
    unsafe { asm!("cli", options(nostack)) };
}

/// Disables interrupts and returns whether they were enabled.
pub fn irq_save() -> bool {
    let was = irqs_enabled();
    irq_disable();
    was
}

/// Re-enables interrupts if `was` says they were enabled.
pub fn irq_restore(was: bool) {
    if was {
        // SAFETY: interrupts were enabled before irq_save, so the machine
        // was already set up for them.
        unsafe { irq_enable() };
    }
}

/// Atomically enables interrupts and halts until one arrives (the
/// one-instruction interrupt shadow of `sti` closes the wake-up race).
///
/// # Safety
/// As [`irq_enable`].
pub unsafe fn safe_halt() {
    // SAFETY: delegated to the caller.
    unsafe { asm!("sti", "hlt", options(nostack)) };
}

/// Disables interrupts and halts this vCPU for good. With the in-kernel
/// irqchip the vCPU then sleeps inside KVM until the VMM kicks its thread.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` stops this vCPU; it touches no memory.
        unsafe { asm!("cli", "hlt", options(nostack)) };
    }
}

/// Writes an x2APIC register (an MSR in 0x800..0x8ff).
///
/// # Safety
/// As [`super::wrmsr`]: the caller knows what the register controls.
pub unsafe fn x2apic_write(reg: u32, value: u64) {
    // SAFETY: delegated to the caller.
    unsafe { super::wrmsr(reg, value) };
}

/// The faulting address of the last page fault (CR2).
pub fn fault_address() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Whether the context `frame` interrupted had interrupts enabled.
pub fn frame_irqs_enabled(frame: &TrapFrame) -> bool {
    frame.rflags & RFLAGS_IF != 0
}

/// Drops to CPL3 at `f(arg)` on `stack`, interrupts on.
pub fn enter_user(f: extern "C" fn(usize) -> !, arg: usize, stack: u64) -> ! {
    // SAFETY: builds an iretq frame for a 64-bit user code segment and
    // user data segment of this CPU's GDT; `f` is in the guest image and
    // `stack` in the user window, both mapped user-accessible by the VMM.
    // The kernel stack is abandoned: traps from user mode start at
    // TSS.RSP0 (this task's kernel stack top).
    unsafe {
        asm!(
            "push {ss}",
            "push {rsp}",
            "push {rflags}",
            "push {cs}",
            "push {rip}",
            "xor ebp, ebp",
            "iretq",
            ss = in(reg) u64::from(selector::USER_DATA),
            rsp = in(reg) stack,
            rflags = in(reg) 0x202u64,
            cs = in(reg) u64::from(selector::USER_CODE),
            rip = in(reg) f as *const () as u64,
            in("rdi") arg,
            options(noreturn)
        )
    }
}

/// `ud2`, the system call instruction of user tasks.
pub const UD2: [u8; 2] = [0x0f, 0x0b];

/// Whether `frame` is a #UD raised by a user task's `ud2`.
pub fn is_user_syscall(frame: &TrapFrame) -> bool {
    use abi::layout::{IMAGE_ADDR, IMAGE_LIMIT};
    if frame.vector != 6
        || !frame.is_from_user()
        || !(IMAGE_ADDR..IMAGE_LIMIT - 2).contains(&frame.rip)
    {
        return false;
    }
    // SAFETY: rip lies inside the guest image (checked above), which is
    // mapped and readable.
    let bytes = unsafe { core::ptr::read_unaligned(frame.rip as *const [u8; 2]) };
    bytes == UD2
}

/// Length of the system-call instruction [`is_user_syscall`] recognises
/// (the return address steps over it).
pub const SYSCALL_INSN_LEN: u64 = UD2.len() as u64;

/// A system call from user mode: `ud2` with the number in rax and the
/// argument in rdi (see the module docs of `kernel::arch::entry` for why not `syscall`).
#[inline(always)]
pub fn sys(nr: u64, a0: u64) -> u64 {
    let ret: u64;
    // SAFETY: the kernel's #UD handler recognises a user `ud2`, runs the
    // call, steps over the instruction and restores every register but rax
    // (the result).
    unsafe { asm!("ud2", inlateout("rax") nr => ret, in("rdi") a0, options(nostack)) };
    ret
}
