//! Thin, typed wrappers around the x86 instructions both arch backends
//! share: the TSC, CPUID, port I/O, MSRs and the descriptor tables.

use core::arch::asm;

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` only reads the TSC into edx:eax; CR4.TSD is clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The result of one `cpuid`.
#[allow(dead_code)] // all four registers are part of the result
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Executes `cpuid` for `leaf`/`subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    Cpuid {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// This vCPU's x2APIC id (CPUID leaf 0xB, EDX), which the VMM sets to the
/// vCPU index.
pub fn x2apic_id() -> u32 {
    cpuid(0xb, 0).edx
}

/// Writes a 32-bit value to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: port I/O only reaches the VMM (every port traps to it); it
    // touches no guest memory.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes `bytes` to an I/O port with one `rep outsb` (one VM exit per page
/// at most, instead of one per byte).
pub fn outsb(port: u16, bytes: &[u8]) {
    // SAFETY: `rep outsb` reads exactly `bytes.len()` bytes starting at
    // `bytes.as_ptr()` (DF is clear per the ABI) and writes them to the
    // port; rsi and rcx are declared clobbered.
    unsafe {
        asm!(
            "rep outsb",
            in("dx") port,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(nostack, preserves_flags, readonly)
        )
    };
}

/// Spin-loop hint.
#[inline]
pub fn pause() {
    core::hint::spin_loop();
}

/// Forces a triple fault: load an empty IDT and raise #UD. With no usable
/// gate the CPU escalates #UD -> #GP -> #DF -> shutdown, which KVM reports
/// as KVM_EXIT_SHUTDOWN. Test hook only.
pub fn triple_fault() -> ! {
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let empty = Idtr { limit: 0, base: 0 };
    // SAFETY: deliberately unsound for the machine (that is the point):
    // loading an empty IDT and executing `ud2` ends this VM. Nothing in the
    // guest runs after it.
    unsafe { asm!("lidt [{}]", "ud2", in(reg) &empty, options(noreturn, nostack)) }
}

/// Model-specific registers the kernel touches.
pub mod msr {
    /// IA32_APIC_BASE.
    pub const APIC_BASE: u32 = 0x1b;
    /// IA32_TSC_DEADLINE.
    pub const TSC_DEADLINE: u32 = 0x6e0;
    /// IA32_EFER.
    pub const EFER: u32 = 0xc000_0080;
    /// IA32_STAR: the `syscall`/`sysret` selectors.
    pub const STAR: u32 = 0xc000_0081;
    /// IA32_LSTAR: the 64-bit `syscall` entry.
    pub const LSTAR: u32 = 0xc000_0082;
    /// IA32_FMASK: RFLAGS bits `syscall` clears.
    pub const SFMASK: u32 = 0xc000_0084;
    /// IA32_FS_BASE.
    pub const FS_BASE: u32 = 0xc000_0100;
    /// IA32_GS_BASE.
    pub const GS_BASE: u32 = 0xc000_0101;
    /// IA32_KERNEL_GS_BASE (what `swapgs` exchanges GS base with).
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// Reads an MSR.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the kernel only reads MSRs that exist on every x86_64 CPU
    // KVM exposes (the constants in `msr` and the x2APIC range).
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
/// The write must keep the machine consistent (the caller knows what the
/// MSR controls: EFER, syscall entry, GS base, APIC registers).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: delegated to the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

/// A `#[repr(C, packed)]` operand of lgdt/lidt.
#[repr(C, packed)]
pub struct DescriptorTablePointer {
    /// Size in bytes minus one.
    pub limit: u16,
    /// Linear address.
    pub base: u64,
}

/// Loads the GDT, reloads CS and the data segments, and loads TR.
///
/// # Safety
/// `gdt` must stay valid and hold a 64-bit code descriptor at `code`, a
/// data descriptor at `data` and a TSS descriptor at `tss`.
pub unsafe fn load_gdt(gdt: &DescriptorTablePointer, code: u16, data: u16, tss: u16) {
    // SAFETY: delegated to the caller; the far return reloads CS with a
    // descriptor the caller vouches for. GS is not reloaded (its base is
    // the per-CPU pointer, set with wrmsr afterwards).
    unsafe {
        asm!(
            "lgdt [{gdt}]",
            "push {code}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {data:x}",
            "mov es, {data:x}",
            "mov ss, {data:x}",
            "ltr {tss:x}",
            gdt = in(reg) gdt,
            code = in(reg) u64::from(code),
            data = in(reg) u64::from(data),
            tss = in(reg) u64::from(tss),
            tmp = out(reg) _,
        )
    };
}

/// Loads the IDT.
///
/// # Safety
/// `idt` must stay valid for as long as interrupts can arrive.
pub unsafe fn load_idt(idt: &DescriptorTablePointer) {
    // SAFETY: delegated to the caller.
    unsafe { asm!("lidt [{}]", in(reg) idt, options(readonly, nostack, preserves_flags)) };
}
