//! Per-CPU data, reached through the GS base: each vCPU's GDT, TSS,
//! interrupt stacks, scheduler state and counters. The GS base always
//! points at this CPU's [`PerCpu`], and so does KERNEL_GS_BASE (the PVM
//! host's native mode swaps the two on user/kernel transitions), so no
//! `swapgs` is needed. User tasks never load GS or write its base: in plain
//! mode CR4.FSGSBASE is off; in native mode the hardware CR4 is the host's,
//! and the rule holds only because every user task is ipivirt's own code.

use core::cell::Cell;
use core::ptr::addr_of;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use abi::MAX_VCPUS;

use guest_lib::rng::{self, XorShift64Star};

use crate::kernel::arch::{self, msr, DescriptorTablePointer};
use crate::kernel::sched::{RunQueue, Task};
use crate::kernel::sync::IrqSpinLock;

/// Selectors of the per-CPU GDT.
pub mod selector {
    /// Kernel code (64-bit).
    pub const KERNEL_CODE: u16 = 0x08;
    /// Kernel data.
    pub const KERNEL_DATA: u16 = 0x10;
    /// User data, RPL 3.
    pub const USER_DATA: u16 = 0x18 | 3;
    /// User code (64-bit), RPL 3.
    pub const USER_CODE: u16 = 0x20 | 3;
    /// The TSS (two slots).
    pub const TSS: u16 = 0x28;
}

/// Offsets used by assembly (trap.rs): keep in sync with the field order.
pub const OFFSET_KSTACK_TOP: usize = 8;

/// Offset of [`PerCpu::scratch`], for assembly that needs one free slot.
pub const OFFSET_SCRATCH: usize = core::mem::offset_of!(PerCpu, scratch);

/// Offset of [`PerCpu::current`], for a gs-relative load.
pub const OFFSET_CURRENT: usize = core::mem::offset_of!(PerCpu, current);

/// Offset of [`PerCpu::preempt_count`], for gs-relative updates.
pub const OFFSET_PREEMPT_COUNT: usize = core::mem::offset_of!(PerCpu, preempt_count);

/// Interrupt stack table slots (1-based, as in the IDT).
pub const IST_INTERRUPT: u8 = 1;
/// Exceptions other than #DF/NMI.
pub const IST_EXCEPTION: u8 = 2;
/// #DF and NMI.
pub const IST_CRITICAL: u8 = 3;
/// Size of each IST stack.
pub const IST_SIZE: usize = 8192;

/// The 64-bit TSS.
#[repr(C, packed)]
pub struct Tss {
    reserved0: u32,
    /// Stack for entries from CPL3 (the current task's kernel stack).
    pub rsp0: u64,
    rsp1: u64,
    rsp2: u64,
    reserved1: u64,
    /// IST1..IST7.
    pub ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

/// A counter only its own CPU increments (no lock prefix needed), read by
/// others when reporting.
pub struct LocalCounter(AtomicU64);

impl LocalCounter {
    const fn new() -> Self {
        LocalCounter(AtomicU64::new(0))
    }
    /// Adds one (owning CPU only).
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n` (owning CPU only).
    pub fn add(&self, n: u64) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One vCPU's kernel state.
#[repr(C, align(64))]
pub struct PerCpu {
    self_ptr: Cell<*const PerCpu>,
    /// Top of the running task's kernel stack (mirrors TSS.RSP0); read by
    /// the trap and syscall entry code.
    pub kstack_top: Cell<u64>,
    /// A free slot for entry assembly: the native-mode `syscall` entry parks
    /// the user stack pointer here while it switches stacks.
    pub scratch: Cell<u64>,
    /// vCPU index.
    pub id: Cell<u32>,
    gdt: Cell<[u64; 7]>,
    tss: core::cell::UnsafeCell<Tss>,
    /// The task running here.
    pub current: Cell<*mut Task>,
    /// This CPU's idle task.
    pub idle: Cell<*mut Task>,
    /// The task switched away from, for finish_switch.
    pub prev: Cell<*mut Task>,
    /// Preemption disabled when non-zero.
    pub preempt_count: Cell<u32>,
    /// Set (by the tick, an IPI or a remote CPU) when schedule() should run.
    pub need_resched: AtomicBool,
    /// Runnable and sleeping tasks.
    pub rq: IrqSpinLock<RunQueue>,
    /// xorshift state for this CPU's random choices.
    pub rng: Cell<u64>,
    /// TSC of the next scheduler tick (0: tick stopped).
    pub next_tick: Cell<u64>,
    /// The TSC deadline the timer is armed with (0: disarmed or fired).
    pub armed_deadline: Cell<u64>,
    /// Timer ticks handled.
    pub ticks: LocalCounter,
    /// Context switches.
    pub context_switches: LocalCounter,
    /// Switches that preempted a task on return from interrupt.
    pub preemptions: LocalCounter,
    /// Tasks that migrated here.
    pub migrations_in: AtomicU64,
    /// IPIs sent.
    pub ipis_sent: LocalCounter,
    /// IPIs received.
    pub ipis_received: LocalCounter,
    /// Native mode: interrupts that landed between the idle IF store and
    /// the `hlt` (the halt was skipped).
    pub halt_rollbacks: LocalCounter,
}

// SAFETY: the Cell fields are only touched by the owning vCPU (through GS),
// with interrupts disabled where an interrupt handler touches them too;
// fields other CPUs touch are atomics or behind IrqSpinLock.
unsafe impl Sync for PerCpu {}

#[allow(clippy::declare_interior_mutable_const)] // the array initialiser needs a const
const PERCPU_INIT: PerCpu = PerCpu {
    self_ptr: Cell::new(core::ptr::null()),
    kstack_top: Cell::new(0),
    scratch: Cell::new(0),
    id: Cell::new(0),
    gdt: Cell::new([0; 7]),
    tss: core::cell::UnsafeCell::new(Tss {
        reserved0: 0,
        rsp0: 0,
        rsp1: 0,
        rsp2: 0,
        reserved1: 0,
        ist: [0; 7],
        reserved2: 0,
        reserved3: 0,
        iomap_base: core::mem::size_of::<Tss>() as u16,
    }),
    current: Cell::new(core::ptr::null_mut()),
    idle: Cell::new(core::ptr::null_mut()),
    prev: Cell::new(core::ptr::null_mut()),
    preempt_count: Cell::new(0),
    need_resched: AtomicBool::new(false),
    rq: IrqSpinLock::new(RunQueue::new()),
    rng: Cell::new(0),
    next_tick: Cell::new(0),
    armed_deadline: Cell::new(0),
    ticks: LocalCounter::new(),
    context_switches: LocalCounter::new(),
    preemptions: LocalCounter::new(),
    migrations_in: AtomicU64::new(0),
    ipis_sent: LocalCounter::new(),
    ipis_received: LocalCounter::new(),
    halt_rollbacks: LocalCounter::new(),
};

static PERCPU: [PerCpu; MAX_VCPUS] = [PERCPU_INIT; MAX_VCPUS];

/// This vCPU's data.
pub fn this() -> &'static PerCpu {
    let p: *const PerCpu;
    // SAFETY: GS base points at this CPU's PerCpu (set in `init` before any
    // caller runs) whose first field holds its own address.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) p, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: `p` is an element of the static PERCPU array.
    unsafe { &*p }
}

/// vCPU `index`'s data (for cross-CPU operations).
pub fn of(index: u32) -> &'static PerCpu {
    &PERCPU[index as usize]
}

/// This vCPU's index.
pub fn cpu_id() -> u32 {
    this().id.get()
}

/// This vCPU's index, also before [`init`] ran on it (then from CPUID,
/// which the VMM sets to the index; after the switch to the PVM host's
/// native mode CPUID may show the host CPU's instead, but GS is set by
/// then). For cold paths: it reads an MSR.
pub fn cpu_id_anytime() -> u32 {
    if arch::rdmsr(msr::GS_BASE) == 0 {
        arch::x2apic_id()
    } else {
        cpu_id()
    }
}

fn descriptor(base: u64, limit: u32, access: u8, flags: u8) -> u64 {
    (u64::from(limit) & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (u64::from(access) << 40)
        | ((u64::from(limit) >> 16 & 0xf) << 48)
        | (u64::from(flags) << 52)
        | ((base >> 24 & 0xff) << 56)
}

/// Sets up vCPU `index`: its GDT (kernel and user segments, TSS), IST
/// stacks (from the heap), GS base. Called on that vCPU.
pub fn init(index: u32) {
    let pc = of(index);
    pc.self_ptr.set(pc);
    pc.id.set(index);
    pc.rng
        .set(0x9e37_79b9_7f4a_7c15 ^ (u64::from(index) + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    // SAFETY: only this vCPU touches its TSS, before TR points at it.
    let tss = unsafe { &mut *pc.tss.get() };
    // The three IST stacks sit at the start of this CPU's fixed area
    // (abi::layout::percpu_area): no allocation, no lock, no zeroing.
    let stacks = abi::layout::percpu_area(index);
    for (i, slot) in [IST_INTERRUPT, IST_EXCEPTION, IST_CRITICAL]
        .into_iter()
        .enumerate()
    {
        tss.ist[slot as usize - 1] = stacks + (i as u64 + 1) * IST_SIZE as u64;
    }
    let tss_base = pc.tss.get() as u64;
    let tss_limit = core::mem::size_of::<Tss>() as u32 - 1;
    pc.gdt.set([
        0,
        descriptor(0, 0xfffff, 0x9a, 0xa), // kernel code: present, DPL0, L
        descriptor(0, 0xfffff, 0x92, 0xc), // kernel data
        descriptor(0, 0xfffff, 0xf2, 0xc), // user data, DPL3
        descriptor(0, 0xfffff, 0xfa, 0xa), // user code, DPL3, L
        descriptor(tss_base, tss_limit, 0x89, 0), // 64-bit TSS (available)
        tss_base >> 32,
    ]);
    let gdtr = DescriptorTablePointer {
        limit: 7 * 8 - 1,
        base: pc.gdt.as_ptr() as u64,
    };
    // SAFETY: the GDT lives in the static PERCPU array (never moves) and
    // holds the descriptors named; GS base is this CPU's PerCpu from now on.
    unsafe {
        arch::load_gdt(
            &gdtr,
            selector::KERNEL_CODE,
            selector::KERNEL_DATA,
            selector::TSS,
        );
        let base = addr_of!(PERCPU[index as usize]) as u64;
        arch::wrmsr(msr::GS_BASE, base);
        // The same in KERNEL_GS_BASE: the PVM host's native mode swaps the
        // two on every user/kernel transition (as `swapgs` would), and the
        // kernel never swaps them itself.
        arch::wrmsr(msr::KERNEL_GS_BASE, base);
    }
}

/// Points TSS.RSP0 and the entry code at a new kernel stack top.
pub fn set_kernel_stack(top: u64) {
    let pc = this();
    pc.kstack_top.set(top);
    // SAFETY: the TSS is this CPU's; the CPU reads RSP0 only on a privilege
    // change, which cannot happen while this (kernel) code runs.
    unsafe { (*pc.tss.get()).rsp0 = top };
}

/// Next pseudo-random number of this CPU (xorshift64*).
pub fn random() -> u64 {
    let pc = this();
    let mut g = XorShift64Star::from_state(pc.rng.get());
    let x = g.next_u64();
    pc.rng.set(g.state());
    x
}

/// Seeds this CPU's generator from the scenario seed.
pub fn seed(seed: u64) {
    let pc = this();
    pc.rng.set(rng::cpu_seed(seed, pc.id.get()));
}
