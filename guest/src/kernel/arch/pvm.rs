//! The PVM backend of the arch seam: the PVM host's native mode, in which
//! the kernel runs on the hardware at CPL3 (see
//! `../shared/design/native-mode.md` for the host's undocumented ABI and
//! what each rule below was verified with).
//!
//! - The interrupt flag is the virtual one, byte 0 of this vCPU's VIF page
//!   (`cli`/`sti` trap and do not change it); byte 1 says an interrupt is
//!   pending, delivered at the next trap. Both are reached through FS
//!   (FS base = this vCPU's VIF page), always with one instruction: a
//!   pointer loaded first could belong to the CPU a migrated task left.
//! - Halting stores IF = 1, then `hlt` at [`idle_hlt`]; an interrupt that
//!   lands between the two has its return moved past the `hlt` (the idle
//!   rollback, [`rollback_idle_halt`]).
//! - x2APIC writes (ICR, EOI, TSC deadline) are the WRMSR hypercall.
//! - The fault address is the host's copy at VIF+8.
//! - Traps return with `iretq` (trapped by the host, it restores the virtual
//!   IF from the frame); user tasks keep the `ud2` system call.
//!
//! Never `vmcall` (KVM's emulator loops on it), `vmmcall`, or an `int N`
//! other than 3, 4 and the hypercall vector 0x1b.

use core::arch::asm;

use super::entry::TrapFrame;
use super::{msr, rdmsr, wrmsr};
use crate::kernel::percpu::{self, selector};

/// EFER.SCE: `syscall`/`sysret` enabled.
const EFER_SCE: u64 = 1;

/// Points this vCPU's `syscall` at [`pvm_syscall_entry`]: the kernel's CS
/// (and SS after it) in STAR, the entry in LSTAR, IF, TF and DF cleared on
/// entry (SFMASK), and EFER.SCE. Native mode only: on the plain kernel of a
/// PVM host `syscall` does not work (docs/native-mode.md).
///
/// # Safety
/// This vCPU runs in native mode with its GDT and per-CPU data set up.
pub unsafe fn enable_syscall() {
    let star = u64::from(selector::KERNEL_CODE) << 32 | u64::from(selector::USER_DATA - 8) << 48;
    // SAFETY: delegated to the caller; the MSRs only affect `syscall`.
    unsafe {
        wrmsr(msr::STAR, star);
        wrmsr(msr::LSTAR, pvm_syscall_entry as *const () as u64);
        wrmsr(msr::SFMASK, 0x700);
        wrmsr(msr::EFER, rdmsr(msr::EFER) | EFER_SCE);
    }
}

/// A system call from user mode in native mode: `syscall` with the number
/// in rax and the argument in rdi; rcx and r11 are the CPU's.
#[inline(always)]
pub fn sys(nr: u64, a0: u64) -> u64 {
    let ret: u64;
    // SAFETY: the kernel's syscall entry runs the call and returns to the
    // next instruction with every register but rax (the result), rcx and
    // r11 restored.
    unsafe {
        asm!("syscall", inlateout("rax") nr => ret, in("rdi") a0, lateout("rcx") _,
             lateout("r11") _, options(nostack))
    };
    ret
}

/// MSR that switches a vCPU to native mode (value: VIF page | flags).
const MSR_PVM_VIF: u32 = 0x4b56_4d10;
/// MSR that reads [`PVM_SIGNATURE`] on a PVM host (#GP elsewhere).
const MSR_PVM_SIGNATURE: u32 = 0x4b56_4d11;
/// "PVM".
pub const PVM_SIGNATURE: u64 = 0x4d_5650;
/// VIF flag: the host stores CR2 at VIF+8 on a page fault. (Bit 0 would
/// shut the vCPU down on entry to user mode: never set it.)
const VIF_FLAG_CR2: u64 = 1 << 4;

/// Hypercall numbers (`int 0x1b`, number in rax).
const HC_WRMSR: u64 = 0x1003;
/// An unknown number: returns -38, a trap that lets the host deliver a
/// pending interrupt.
const HC_NULL: u64 = 0x9999;

/// The hypercall `nr` with arguments `a0` (rbx) and `a1` (rcx).
#[inline]
fn hypercall(nr: u64, a0: u64, a1: u64) -> u64 {
    let ret: u64;
    // SAFETY: `int 0x1b` is the host's hypercall gate: it touches no guest
    // memory we rely on. Which registers it preserves is not documented:
    // every caller-saved one is declared clobbered; rbx is the compiler's,
    // so it is swapped in and out.
    unsafe {
        asm!("xchg {a0}, rbx", "int 0x1b", "xchg {a0}, rbx",
            a0 = inout(reg) a0 => _, inout("rax") nr => ret, inout("rcx") a1 => _,
            out("rdx") _, out("rsi") _, out("rdi") _, out("r8") _, out("r9") _,
            out("r10") _, out("r11") _, options(nostack))
    };
    ret
}

// The interrupt-flag operations are compiler barriers (no `nomem`), as in
// the plain backend.

/// Whether interrupts are enabled on this CPU (the virtual IF).
pub fn irqs_enabled() -> bool {
    let v: u8;
    // SAFETY: FS base is this vCPU's VIF page (set before the switch).
    unsafe { asm!("mov {}, byte ptr fs:[0]", out(reg_byte) v, options(nostack, preserves_flags)) };
    v != 0
}

/// Disables interrupts.
pub fn irq_disable() {
    // SAFETY: as in irqs_enabled; one store to this CPU's IF.
    unsafe { asm!("mov byte ptr fs:[0], 0", options(nostack, preserves_flags)) };
}

/// Enables interrupts, and lets the host deliver one that became pending
/// while they were off.
///
/// # Safety
/// The IDT and the interrupt stacks must be set up.
pub unsafe fn irq_enable() {
    let pending: u8;
    // SAFETY: as in irqs_enabled. The store and the load hit the same
    // vCPU's page even if an interrupt moves the task in between: after a
    // migration the load reads the new CPU's pending bit, whose IF is on.
    unsafe {
        asm!("mov byte ptr fs:[0], 1", "mov {p}, byte ptr fs:[1]", p = out(reg_byte) pending,
            options(nostack, preserves_flags))
    };
    if pending != 0 {
        hypercall(HC_NULL, 0, 0);
    }
}

/// Disables interrupts and returns whether they were enabled.
pub fn irq_save() -> bool {
    let was: u8;
    // SAFETY: as in irqs_enabled. An interrupt between the load and the
    // store returns with IF as it found it (on), so the store is right.
    unsafe {
        asm!("mov {w}, byte ptr fs:[0]", "mov byte ptr fs:[0], 0", w = out(reg_byte) was,
            options(nostack, preserves_flags))
    };
    was != 0
}

/// Re-enables interrupts if `was` says they were enabled.
pub fn irq_restore(was: bool) {
    if was {
        // SAFETY: interrupts were enabled before irq_save.
        unsafe { irq_enable() };
    }
}

// The instructions whose addresses the trap handler must know (the idle
// `hlt` and the two that may raise #GP while probing) live in these small
// functions, where they can carry global labels.
core::arch::global_asm!(
    ".section .text",
    ".global pvm_safe_halt",
    "pvm_safe_halt:",
    "mov byte ptr fs:[0], 1",
    ".global pvm_idle_hlt",
    "pvm_idle_hlt:",
    "hlt",
    "ret",
    ".global pvm_read_signature",
    "pvm_read_signature:",
    "mov ecx, {sig_msr}",
    ".global pvm_probe_rdmsr",
    "pvm_probe_rdmsr:",
    "rdmsr",
    ".global pvm_probe_done",
    "pvm_probe_done:",
    "shl rdx, 32",
    "mov eax, eax",
    "or rax, rdx",
    "ret",
    ".global pvm_switch",
    "pvm_switch:",
    "mov ecx, {vif_msr}",
    "mov eax, edi",
    "mov rdx, rdi",
    "shr rdx, 32",
    ".global pvm_switch_wrmsr",
    "pvm_switch_wrmsr:",
    "wrmsr",
    "mov eax, 1",
    ".global pvm_switch_done",
    "pvm_switch_done:",
    "ret",
    sig_msr = const MSR_PVM_SIGNATURE,
    vif_msr = const MSR_PVM_VIF,
);

/// The pseudo-vector of a `syscall` in the frame the entry builds (above
/// every hardware vector, so the dispatcher cannot mistake it).
pub const SYSCALL_VECTOR: u64 = 0x100;

// The `syscall` entry (LSTAR): interrupts off first (whether the host
// applies SFMASK to the virtual IF is not known), park the user rsp, switch
// to the task's kernel stack and build the frame an interrupt from user
// mode would have (ss, rsp, rflags = r11, cs, rip = rcx, error 0, the
// pseudo-vector), then the common trap path. The return is the common one:
// `iretq` to user mode (trapped, it restores the virtual IF from rflags).
core::arch::global_asm!(
    ".section .text",
    ".global pvm_syscall_entry",
    "pvm_syscall_entry:",
    "mov byte ptr fs:[0], 0",
    "mov gs:[{scratch}], rsp",
    "mov rsp, gs:[{kstack}]",
    "push {user_ss}",
    "push qword ptr gs:[{scratch}]",
    "push r11",
    "push {user_cs}",
    "push rcx",
    "push 0",
    "push {vector}",
    "jmp trap_save",
    scratch = const percpu::OFFSET_SCRATCH,
    kstack = const percpu::OFFSET_KSTACK_TOP,
    user_ss = const selector::USER_DATA,
    user_cs = const selector::USER_CODE,
    vector = const SYSCALL_VECTOR,
);

// The hypercall ABI self-test: a null hypercall with a known value in
// every general-purpose register the host could touch, their values
// afterwards stored to the array at rdi (rax, rbx, rcx, rdx, rsi, r8-r15).
core::arch::global_asm!(
    ".section .text",
    ".global pvm_hypercall_probe",
    "pvm_hypercall_probe:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdi",
    "mov rax, {null}",
    "mov rbx, 0x1111",
    "mov rcx, 0x2222",
    "mov rdx, 0x3333",
    "mov rsi, 0x4444",
    "mov r8, 0x5555",
    "mov r9, 0x6666",
    "mov r10, 0x7777",
    "mov r11, 0x8888",
    "mov r12, 0x9999",
    "mov r13, 0xaaaa",
    "mov r14, 0xbbbb",
    "mov r15, 0xcccc",
    "int 0x1b",
    "pop rdi",
    "mov [rdi], rax",
    "mov [rdi + 8], rbx",
    "mov [rdi + 16], rcx",
    "mov [rdi + 24], rdx",
    "mov [rdi + 32], rsi",
    "mov [rdi + 40], r8",
    "mov [rdi + 48], r9",
    "mov [rdi + 56], r10",
    "mov [rdi + 64], r11",
    "mov [rdi + 72], r12",
    "mov [rdi + 80], r13",
    "mov [rdi + 88], r14",
    "mov [rdi + 96], r15",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    null = const HC_NULL,
);

/// What the host's unknown-number return value is: -ENOSYS.
const ENOSYS: u64 = (-38i64) as u64;

/// Checks the hypercall ABI the backend relies on: a null hypercall
/// returns -ENOSYS and leaves every register but rax, rcx and r11 (which
/// [`hypercall`] declares clobbered, as `syscall` would) as it was.
/// Returns the registers that changed, as a bit mask (bit 0: rax not
/// -ENOSYS; bits 1..: rbx, rcx, rdx, rsi, r8..r15), 0 when all is as
/// expected.
pub fn hypercall_abi_mismatch() -> u32 {
    const SENT: [u64; 13] = [
        ENOSYS, 0x1111, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666, 0x7777, 0x8888, 0x9999, 0xaaaa,
        0xbbbb, 0xcccc,
    ];
    /// rcx (2) and r11 (8) may change: hypercall() declares them clobbered.
    const MAY_CHANGE: u32 = 1 << 2 | 1 << 8;
    let mut out = [0u64; 13];
    // SAFETY: a null hypercall (returns -ENOSYS); the probe saves and
    // restores every callee-saved register and writes 13 words to `out`.
    unsafe { pvm_hypercall_probe(out.as_mut_ptr()) };
    let mut changed = 0;
    for (i, (got, want)) in out.iter().zip(SENT).enumerate() {
        if *got != want {
            changed |= 1 << i;
        }
    }
    changed & !MAY_CHANGE
}

extern "C" {
    fn pvm_hypercall_probe(out: *mut u64);
    fn pvm_syscall_entry();
    fn pvm_safe_halt();
    fn pvm_read_signature() -> u64;
    fn pvm_switch(value: u64) -> u32;
    static pvm_idle_hlt: u8;
    static pvm_probe_rdmsr: u8;
    static pvm_probe_done: u8;
    static pvm_switch_wrmsr: u8;
    static pvm_switch_done: u8;
}

/// Enables interrupts and halts until one arrives.
///
/// # Safety
/// As [`irq_enable`].
pub unsafe fn safe_halt() {
    // SAFETY: delegated to the caller. An interrupt taken after the IF
    // store and before the `hlt` returns past the `hlt`
    // (rollback_idle_halt), so the vCPU never sleeps with work queued; one
    // already pending when the `hlt` traps is delivered by the host's halt
    // check.
    unsafe { pvm_safe_halt() };
}

/// The address of the `hlt` in [`safe_halt`].
fn idle_hlt() -> u64 {
    core::ptr::addr_of!(pvm_idle_hlt) as u64
}

/// If `frame` interrupted [`safe_halt`] between its IF store and its
/// `hlt`, returns past the `hlt` instead (the interrupt was the wake-up).
pub fn rollback_idle_halt(frame: &mut TrapFrame) {
    if !frame.is_from_user() && frame.rip == idle_hlt() {
        frame.rip += 1; // `hlt` is one byte
        percpu::this().halt_rollbacks.inc();
    }
}

/// Disables interrupts and halts this vCPU for good (with the virtual IF
/// clear, `hlt` never wakes; a VMM kick still ends KVM_RUN).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: as in irqs_enabled; then a trapped `hlt`.
        unsafe { asm!("mov byte ptr fs:[0], 0", "hlt", options(nostack)) };
    }
}

/// Writes an x2APIC register: the WRMSR hypercall.
///
/// # Safety
/// As [`super::wrmsr`]: the caller knows what the register controls.
pub unsafe fn x2apic_write(reg: u32, value: u64) {
    hypercall(HC_WRMSR, u64::from(reg), value);
}

/// The faulting address of the last page fault: the host's copy at VIF+8.
pub fn fault_address() -> u64 {
    let v: u64;
    // SAFETY: as in irqs_enabled; VIF+8 is the CR2 cell (VIF_FLAG_CR2).
    unsafe {
        asm!("mov {}, qword ptr fs:[8]", out(reg) v, options(nostack, readonly, preserves_flags))
    };
    v
}

/// Whether this CPU runs in native mode now: its code segment reads RPL 3
/// (the host runs the kernel at hardware CPL3; KVM still reports CPL0).
/// Exact per CPU, so usable before the mode is known everywhere.
pub fn on_native_cpu() -> bool {
    let cs: u16;
    // SAFETY: reading CS has no side effect.
    unsafe { asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    cs & 3 == 3
}

/// Reads the host's PVM signature MSR; 0 where it raised #GP (the fault
/// handler resumes at `pvm_probe_done` with rax = rdx = 0, see [`fixup`]).
pub fn signature() -> u64 {
    // SAFETY: `rdmsr` of the signature MSR: on a PVM host it reads, on any
    // other it raises #GP, which `fixup` turns into a zero result.
    unsafe { pvm_read_signature() }
}

/// Switches this vCPU to native mode with `vif` as its VIF page (FS base
/// must already point at it). Returns false where the MSR write raised #GP
/// (resumed at `pvm_switch_done` with rax = 0, see [`fixup`]).
///
/// # Safety
/// The IDT, GDT, TSS and GS base are loaded, no interrupt source is set up
/// yet, every page the kernel touches is user-accessible, and `vif` is
/// this vCPU's private, zeroed, page-aligned VIF page.
pub unsafe fn switch(vif: u64) -> bool {
    // SAFETY: delegated to the caller; the faulting case is handled by
    // `fixup`.
    unsafe { pvm_switch(vif | VIF_FLAG_CR2) == 1 }
}

/// The kernel's exception fixups: a #GP at the signature read or at the
/// switch resumes after it with a zero result. Returns whether it applied.
pub fn fixup(frame: &mut TrapFrame) -> bool {
    if frame.vector != 13 || frame.is_from_user() {
        return false;
    }
    let table = [
        (
            core::ptr::addr_of!(pvm_probe_rdmsr),
            core::ptr::addr_of!(pvm_probe_done),
        ),
        (
            core::ptr::addr_of!(pvm_switch_wrmsr),
            core::ptr::addr_of!(pvm_switch_done),
        ),
    ];
    for (at, resume) in table {
        if frame.rip == at as u64 {
            frame.rip = resume as u64;
            frame.rax = 0;
            frame.rdx = 0;
            return true;
        }
    }
    false
}
