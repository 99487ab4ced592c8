//! The IDT, the common trap handler and the registration point for the
//! interrupt vectors of the layers above ([`set_handler`]). The entry
//! stubs, the frame layout and the return are the arch layer's
//! ([`crate::kernel::arch::entry`], which also explains the red-zone and IST
//! rules every gate follows).

use core::ptr::addr_of;

use abi::vector;

use crate::kernel::arch::entry::trap_stubs;
use crate::kernel::arch::{self, DescriptorTablePointer, TrapFrame};
use crate::kernel::percpu::{self, selector, IST_CRITICAL, IST_EXCEPTION, IST_INTERRUPT};
use crate::kernel::sync::BootCell;
use crate::kernel::{apic, hotplug, sched, shared, syscall, trace};

/// One IDT gate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    kind: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

struct Idt(core::cell::UnsafeCell<[Gate; 256]>);
// SAFETY: written once by the BSP in `init_idt` before any other CPU
// loads it; read-only afterwards.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(core::cell::UnsafeCell::new(
    [Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        kind: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    }; 256],
));

/// Fills the shared IDT (BSP, once, before StartAps).
pub fn init_idt() {
    let stubs = addr_of!(trap_stubs) as u64;
    // SAFETY: no CPU has loaded the IDT yet (see Idt).
    let idt = unsafe { &mut *IDT.0.get() };
    for (v, gate) in idt.iter_mut().enumerate() {
        let addr = stubs + 16 * v as u64;
        let ist = match v {
            2 | 8 => IST_CRITICAL,
            0..=31 => IST_EXCEPTION,
            _ => IST_INTERRUPT,
        };
        *gate = Gate {
            offset_low: addr as u16,
            selector: selector::KERNEL_CODE,
            ist,
            kind: 0x8e, // present, DPL0, 64-bit interrupt gate (clears IF)
            offset_mid: (addr >> 16) as u16,
            offset_high: (addr >> 32) as u32,
            reserved: 0,
        };
    }
}

/// Loads the IDT on this CPU.
pub fn init_cpu() {
    let idtr = DescriptorTablePointer {
        limit: 256 * 16 - 1,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is static and was filled by init_idt before any CPU
    // got here.
    unsafe { arch::load_idt(&idtr) };
}

/// An interrupt handler registered with [`set_handler`]: runs with
/// interrupts off and sends the EOI itself (a handler that answers with an
/// IPI of its own orders the two as it needs).
pub type Handler = fn();

/// Handlers of the vectors the layers above own.
static HANDLERS: [BootCell<Option<Handler>>; 256] = [const { BootCell::new(None) }; 256];

/// Registers `handler` for interrupt `vector` (once per vector).
/// Exceptions and the kernel's own vectors (timer, reschedule, spurious)
/// cannot be taken over: that is a bug and panics.
///
/// # Safety
/// As [`BootCell::set`]: the BSP, at boot, before the vector can arrive.
pub unsafe fn set_handler(vector: u8, handler: Handler) {
    assert!(
        vector >= 32
            && ![
                vector::TIMER,
                vector::RESCHEDULE,
                vector::HOTPLUG,
                vector::SPURIOUS
            ]
            .contains(&vector),
        "an exception or kernel vector cannot be taken over"
    );
    // SAFETY: delegated to the caller.
    unsafe { HANDLERS[usize::from(vector)].set(Some(handler)) };
}

/// The common trap handler, called by the entry stubs with the saved frame.
pub extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let interrupted_preemptible = frame.is_from_user() || arch::frame_irqs_enabled(frame);
    trace::trap_entry(interrupted_preemptible);
    match frame.vector {
        6 if arch::is_user_syscall(frame) => {
            frame.rip += arch::SYSCALL_INSN_LEN;
            syscall::dispatch(frame);
        }
        arch::SYSCALL_VECTOR => syscall::dispatch(frame),
        0..=31 => {
            if !arch::fixup(frame) {
                exception(frame)
            }
        }
        v if v == u64::from(vector::TIMER) => {
            apic::eoi();
            apic::timer_fired();
            sched::on_tick();
        }
        v if v == u64::from(vector::RESCHEDULE) => {
            apic::eoi();
            percpu::this().ipis_received.inc();
            sched::on_resched_ipi();
        }
        v if v == u64::from(vector::HOTPLUG) => hotplug::on_hotplug_irq(),
        v if v == u64::from(vector::SPURIOUS) => {}
        v => match HANDLERS[v as usize & 0xff].get() {
            Some(handler) => handler(),
            None => apic::eoi(),
        },
    }
    arch::on_trap_return(frame);
    // Preemption point: only where the interrupted context could have been
    // preempted anyway (user mode, or kernel code with interrupts on).
    if interrupted_preemptible {
        sched::preempt_on_return();
        trace::to_preemptible();
    }
}

fn exception(frame: &TrapFrame) -> ! {
    let rec = shared::exception_record();
    let (task_id, task_name) = sched::current_identity();
    // SAFETY: this vCPU stops right after; the record is written once
    // (a second faulting vCPU overwrites it, which only loses detail).
    unsafe {
        (*rec).vcpu = percpu::cpu_id();
        (*rec).vector = frame.vector;
        (*rec).error_code = frame.error_code;
        (*rec).rip = frame.rip;
        (*rec).cr2 = arch::fault_address();
        (*rec).cs = frame.cs;
        (*rec).task_id = task_id;
        (*rec).task_name = task_name;
        (*rec).valid = 1;
    }
    arch::outl(abi::Port::Status as u16, abi::GuestStatus::Exception as u32);
    arch::halt_forever()
}
