//! Trap entry and exit, shared by every IDT gate. The return is `iretq`,
//! except to kernel code in the PVM host's native mode, where `iretq` traps:
//! there the stub restores the registers and the virtual IF itself and
//! returns with `popfq; ret` on the interrupted stack (NMI and #DF keep
//! `iretq`).
//!
//! Red zone: the prebuilt `core` uses the 128-byte red zone below RSP, so
//! an interrupt frame must never be pushed onto an interrupted kernel
//! stack. Every IDT gate therefore switches to an IST stack (the CPU does
//! this unconditionally for IST gates). The common stub then moves the
//! frame off the IST stack, before anything can reschedule:
//! - from CPL3, to the top of the running task's kernel stack;
//! - from CPL0, to the interrupted stack *below its red zone*
//!   (`(rsp - 128) & !15`), so the interrupted code's red zone survives.
//!
//! In the PVM host's native mode the same holds: the host honours IST for
//! every gate (so it never pushes onto an interrupted stack either), and
//! the software return writes only below the interrupted red zone.
//!
//! After the move the IST stack is free again, so a later interrupt (after
//! a context switch, on another task) can reuse it. Interrupt gates clear
//! IF, so handlers never nest; exceptions use a second IST stack and #DF /
//! NMI a third, so a fault inside the stub cannot overwrite its own frame.
//!
//! The frame then gets every general-purpose register and the SSE state
//! (`fxsave`, 512 bytes, which KVM's emulator implements), and
//! `kernel::trap::trap_dispatch` runs on the task's stack, where it may
//! switch tasks.
//!
//! System calls: user tasks enter the kernel with `ud2` (rax = number),
//! which the #UD handler recognises. On the nested host ipivirt's CI uses,
//! `syscall` jumps to LSTAR but memory accesses there are still checked as
//! user-mode accesses (the first push to a kernel-only stack page faults
//! with error code 7), `int N` from CPL3 raises #UD and `sysretq` triple-
//! faults; exceptions from CPL3, though, are delivered through the IDT at
//! CPL0 like on any x86. A trapping instruction is the one entry that works
//! the same on every host.

use core::arch::global_asm;

use crate::kernel::percpu::{selector, OFFSET_KSTACK_TOP};
use crate::kernel::trap::trap_dispatch;

/// Registers saved on entry, lowest address first.
#[repr(C)]
pub struct TrapFrame {
    /// fxsave area.
    pub fx: [u8; 512],
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Vector.
    pub vector: u64,
    /// Error code (0 when the vector has none).
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl TrapFrame {
    /// Whether the trap came from user mode.
    pub fn is_from_user(&self) -> bool {
        self.cs == u64::from(selector::USER_CODE)
    }
}

// One 16-byte stub per vector: push a zero error code where the CPU does
// not push one, push the vector, jump to the common code.
global_asm!(
    ".section .text",
    ".balign 16",
    ".global trap_stubs",
    "trap_stubs:",
    ".set vec, 0",
    ".rept 256",
    ".balign 16",
    ".if (vec == 8) | ((vec >= 10) & (vec <= 14)) | (vec == 17) | (vec == 21) | (vec == 29) | (vec == 30)",
    "push vec",
    ".else",
    "push 0",
    "push vec",
    ".endif",
    "jmp trap_common",
    ".set vec, vec + 1",
    ".endr",
    // On the IST stack: [rsp] vector, +8 error, +16 rip, +24 cs,
    // +32 rflags, +40 rsp, +48 ss.
    "trap_common:",
    "push rax",
    "push rcx",
    // Offsets below are +16 for the two pushes.
    // From user mode: the frame's CS is the user code selector. (Not "RPL
    // 3": in the PVM host's native mode the kernel itself runs at hardware
    // RPL 3.)
    "cmp word ptr [rsp + 16 + 24], {user_cs}",
    "je 1f",
    "mov rax, [rsp + 16 + 40]",
    "sub rax, 128", // skip the interrupted code's red zone
    "and rax, -16",
    "jmp 2f",
    "1:",
    "mov rax, gs:[{kstack}]",
    "2:",
    // Copy the 7-word hardware frame to the target stack (top = rax).
    "mov rcx, [rsp + 16 + 48]",
    "mov [rax - 8], rcx",
    "mov rcx, [rsp + 16 + 40]",
    "mov [rax - 16], rcx",
    "mov rcx, [rsp + 16 + 32]",
    "mov [rax - 24], rcx",
    "mov rcx, [rsp + 16 + 24]",
    "mov [rax - 32], rcx",
    "mov rcx, [rsp + 16 + 16]",
    "mov [rax - 40], rcx",
    "mov rcx, [rsp + 16 + 8]",
    "mov [rax - 48], rcx",
    "mov rcx, [rsp + 16]",
    "mov [rax - 56], rcx",
    // Park the saved rcx/rax just below, switch stacks, restore them.
    "mov rcx, [rsp]",
    "mov [rax - 64], rcx",
    "mov rcx, [rsp + 8]",
    "mov [rax - 72], rcx",
    "lea rsp, [rax - 72]",
    "pop rax",
    "pop rcx",
    // rsp now points at the vector slot on the target stack.
    "trap_save:",
    "push rax",
    "push rbx",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push rbp",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "sub rsp, 512",
    "fxsave [rsp]",
    "mov rdi, rsp",
    "cld",
    "call {dispatch}",
    "fxrstor [rsp]",
    "add rsp, 512",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rbp",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    // Left: rcx, rbx, rax, vector, error, then the hardware frame (rip,
    // cs, rflags, rsp, ss) at +40.
    "cmp byte ptr [rip + {native}], 0",
    "je 8f",
    "cmp qword ptr [rsp + 48], {kernel_cs}",
    "jne 8f",
    "cmp qword ptr [rsp + 24], 2", // NMI and #DF keep iretq
    "je 8f",
    "cmp qword ptr [rsp + 24], 8",
    "je 8f",
    // The PVM host's native mode, back to kernel code: return in software
    // (an `iretq` is a trap there). Three slots just below the interrupted
    // code's red zone, T = its rsp - 152, get rax, rflags and rip; the
    // frame (below T or overlapping it in slots already read) is dead once
    // rsp = T. A nested interrupt after IF is on lands below T - 128.
    "mov rax, [rsp + 64]",
    "lea rax, [rax - 152]",
    "mov rbx, [rsp + 40]",
    "mov [rax + 16], rbx",
    "mov rbx, [rsp + 56]",
    "mov [rax + 8], rbx",
    "mov rbx, [rsp + 16]",
    "mov [rax], rbx",
    "mov rcx, [rsp]",
    "mov rbx, [rsp + 8]",
    "mov rsp, rax",
    "test byte ptr [rsp + 9], 2", // the saved RFLAGS.IF
    "jz 7f",
    "mov byte ptr fs:[0], 1",
    "cmp byte ptr fs:[1], 0",
    "je 7f",
    // An interrupt became pending while IF was off: any trap lets the host
    // deliver it (a null hypercall; every register it may touch is saved).
    "push rbx",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "mov eax, 0x9999",
    "int 0x1b",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rbx",
    "7:",
    "pop rax",
    "popfq", // leaves the virtual IF alone
    "ret 128", // rip from T + 16; rsp ends at the interrupted rsp
    "8:",
    "pop rcx",
    "pop rbx",
    "pop rax",
    "add rsp, 16", // vector and error code
    "iretq",
    kstack = const OFFSET_KSTACK_TOP,
    user_cs = const selector::USER_CODE,
    kernel_cs = const selector::KERNEL_CODE,
    native = sym super::NATIVE,
    dispatch = sym trap_dispatch,
);

extern "C" {
    /// The first of the 256 16-byte entry stubs (vector `v` at `+16 * v`).
    pub static trap_stubs: u8;
}
