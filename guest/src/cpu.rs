//! Thin, typed wrappers around the privileged or special x86 instructions
//! the kernel uses, so that the rest of the guest stays safe Rust.

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

/// Disables interrupts and halts this vCPU for good. With the in-kernel
/// irqchip the vCPU then sleeps inside KVM until the VMM kicks its thread.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` stops this vCPU; it touches no memory.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
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

/// Writes a model-specific register.
///
/// # Safety
/// The MSR and value must be ones the guest may set without breaking its
/// own memory safety (e.g. MSR_KVM_STEAL_TIME with the address of a
/// 64-byte area that stays reserved for KVM for the guest's lifetime).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the MSR and value; `wrmsr` touches no
    // memory of its own.
    unsafe {
        asm!(
            "wrmsr",
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags)
        )
    };
}
