//! The local APIC in x2APIC mode (MSR interface): enable, EOI, IPIs and
//! the timer in TSC-deadline mode (KVM offers it; one MSR write arms it).

use abi::vector;

use crate::kernel::arch::{self, msr};
use crate::kernel::percpu;

const X2APIC_EOI: u32 = 0x80b;
const X2APIC_SVR: u32 = 0x80f;
const X2APIC_ICR: u32 = 0x830;
const X2APIC_LVT_TIMER: u32 = 0x832;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const SVR_ENABLE: u64 = 1 << 8;
const LVT_TSC_DEADLINE: u64 = 0b10 << 17;

/// Whether CPUID says the TSC-deadline timer exists.
pub fn has_tsc_deadline() -> bool {
    arch::cpuid(1, 0).ecx & (1 << 24) != 0
}

/// Puts this CPU's APIC in x2APIC mode with the spurious vector and the
/// timer in TSC-deadline mode (disarmed).
pub fn init() {
    assert!(has_tsc_deadline(), "the TSC-deadline timer is required");
    // SAFETY: enabling the x2APIC and programming its SVR and timer LVT
    // only affects interrupt delivery to this CPU, whose IDT is loaded.
    unsafe {
        arch::wrmsr(
            msr::APIC_BASE,
            arch::rdmsr(msr::APIC_BASE) | APIC_BASE_ENABLE | APIC_BASE_X2APIC,
        );
        arch::wrmsr(X2APIC_SVR, SVR_ENABLE | u64::from(vector::SPURIOUS));
        arch::wrmsr(
            X2APIC_LVT_TIMER,
            LVT_TSC_DEADLINE | u64::from(vector::TIMER),
        );
        arch::wrmsr(msr::TSC_DEADLINE, 0);
    }
}

/// Signals end of interrupt.
pub fn eoi() {
    // SAFETY: an EOI write only retires the in-service interrupt.
    unsafe { arch::x2apic_write(X2APIC_EOI, 0) };
}

/// Sends fixed-vector IPI `vector` to the CPU with x2APIC id `dest`.
pub fn send_ipi(dest: u32, vector: u8) {
    percpu::this().ipis_sent.inc();
    // SAFETY: a fixed, physical-destination IPI to a vCPU whose IDT
    // handles every vector.
    unsafe { arch::x2apic_write(X2APIC_ICR, (u64::from(dest) << 32) | u64::from(vector)) };
}

/// Arms the timer to fire at TSC `deadline` (0 disarms it). A deadline
/// equal to the one armed is not written again: every write is a trap in
/// the PVM host's native mode (and emulated in plain mode there), and the
/// scheduler re-arms the same tick often. Interrupts off.
pub fn arm(deadline: u64) {
    let pc = percpu::this();
    if pc.armed_deadline.get() == deadline {
        return;
    }
    pc.armed_deadline.set(deadline);
    // SAFETY: programming this CPU's own timer.
    unsafe { arch::x2apic_write(msr::TSC_DEADLINE, deadline) };
}

/// The timer fired: the hardware disarmed it (so the next [`arm`] writes).
pub fn timer_fired() {
    percpu::this().armed_deadline.set(0);
}

/// The cost of one ICR write (a reschedule IPI to this CPU, which then
/// runs its handler once interrupts are on) and of one EOI write with
/// nothing in service, in TSC cycles, the best of 8 each. Interrupts off.
pub fn measure_write_costs() -> (u64, u64) {
    let me = u64::from(percpu::cpu_id());
    let irq = arch::irq_save();
    let (mut icr, mut eoi) = (u64::MAX, u64::MAX);
    for _ in 0..8 {
        let t0 = arch::rdtsc();
        // SAFETY: a fixed reschedule IPI to this CPU, whose IDT handles it.
        unsafe { arch::x2apic_write(X2APIC_ICR, (me << 32) | u64::from(vector::RESCHEDULE)) };
        let t1 = arch::rdtsc();
        // SAFETY: an EOI with nothing in service is ignored.
        unsafe { arch::x2apic_write(X2APIC_EOI, 0) };
        let t2 = arch::rdtsc();
        icr = icr.min(t1 - t0);
        eoi = eoi.min(t2 - t1);
    }
    arch::irq_restore(irq);
    (icr, eoi)
}
