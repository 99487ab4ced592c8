//! The preempt-off tracer: on every vCPU, the length of every section in
//! which the running code cannot be preempted (preemption count above zero,
//! or interrupts off: an interrupt handler, an `irq_save` region, the
//! scheduler), the longest one of every window, and what it was spent on.
//! This is the series' own figure ("the longest preemption-disabled
//! section per window, per CPU"), measured where the series measured it,
//! instead of inferred from a bystander's lateness.
//!
//! A section opens when the CPU leaves a preemptible state (count 0 and
//! interrupts on) and closes when it returns to one; the hooks sit at every
//! such transition: [`sched::preempt_disable`](super::sched::preempt_disable)
//! and `preempt_enable`, the interrupt-flag operations of
//! [`arch`], [`arch::safe_halt`], the trap entry and return, and the first
//! entry of a user task. Sections are per CPU, not per task: a switch
//! inside one (the scheduler) continues it on the next task.
//!
//! The cause of a section is the tag that was current for most of its
//! time; the layers above tag their regions with [`cause`] (only while
//! pinned: the tag is per CPU). Per phase ([`begin_phase`]) each CPU keeps
//! histograms of its window maxima (in the reserved area
//! [`abi::layout::PREEMPT_OFF_ADDR`], not in .bss: 34 KiB per possible
//! vCPU); the BSP reads them with [`with_snapshot`] after [`end_phase`].
//! Windows are per CPU, starting at its first section end in the phase; a
//! window is counted only if it ends by the phase's end; a window in which
//! no section ended counts as 0, in no cause.
//!
//! Where KVM's steal time is registered ([`pv::steal_registered`]), each
//! section is also measured less the steal time accrued while it was open
//! (the host not running this vCPU although it was runnable): read at the
//! open and at the close (a versioned read of this vCPU's steal-time area:
//! a few loads, no exit), converted to cycles and subtracted, saturating.
//! Those lengths get their own window maximum over the same windows and a
//! second histogram, `windows_excl_steal`, so the figure with steal is
//! untouched; a window's steal-excluded maximum is at most its maximum.

use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

use abi::preempt_off::cause as causes;
use abi::{layout, Histogram, PreemptOffCause, MAX_VCPUS};

use crate::kernel::{arch, percpu, pv, sched};

/// Whether the tracer runs (off before the first phase, and for the hidden
/// measurement of its own cost).
static ON: AtomicBool = AtomicBool::new(false);
/// Window length in TSC cycles.
static WINDOW: AtomicU64 = AtomicU64::new(u64::MAX);
/// The phase number; a CPU that sees a new one starts its figures afresh.
static EPOCH: AtomicU32 = AtomicU32::new(0);
/// The phase's end: windows ending later are not counted.
static PHASE_END: AtomicU64 = AtomicU64::new(u64::MAX);

/// What the BSP reads of one CPU.
pub struct Snapshot {
    /// The phase these figures belong to.
    epoch: u32,
    /// Sections ended in the phase.
    pub sections: u64,
    /// Sections found open where none could be (an end the hooks missed).
    pub unmatched: u64,
    /// The window maxima (TSC cycles).
    pub windows: Histogram,
    /// The same windows' maxima of the sections less their steal time
    /// (all zero where steal time is not registered).
    pub windows_excl_steal: Histogram,
    /// Per cause: windows whose longest section it was, and the longest.
    pub causes: [PreemptOffCause; causes::COUNT],
}

/// An all-zero histogram (the read buffer lives in .bss).
const ZERO_HIST: Histogram = Histogram {
    count: 0,
    sum: 0,
    min: 0,
    max: 0,
    buckets: [0; abi::hist::BUCKETS],
};

const ZERO_CAUSE: PreemptOffCause = PreemptOffCause { windows: 0, max: 0 };

/// One CPU's tracer state. The `Cell`s are touched only by their own CPU
/// with the section's pin in force (preemption or interrupts off), so an
/// interrupt on that CPU never sees them half-updated: its handler touches
/// them only when it interrupted a preemptible context, where no hook is
/// running. Its [`Snapshot`] (`data`) is also read by the BSP, under the
/// `seq` count.
struct Cpu {
    /// TSC at which the open section started (0: none open).
    start: Cell<u64>,
    /// The current cause tag and since when.
    cause: Cell<usize>,
    since: Cell<u64>,
    /// Cycles of the open section per cause.
    spent: Cell<[u64; causes::COUNT]>,
    /// The window being filled: its end, longest section and its cause.
    win_end: Cell<u64>,
    win_max: Cell<u64>,
    win_cause: Cell<usize>,
    /// This vCPU's steal time (ns) at the open section's start.
    steal_start: Cell<u64>,
    /// The window's longest section less its steal time.
    win_max_excl: Cell<u64>,
    /// Odd while the owner writes its `data`.
    seq: AtomicU32,
}

// SAFETY: see `Cpu`: the Cells are owner-only (its data is written by its
// owner under `seq` and read by others with the seqlock protocol).
unsafe impl Sync for Cpu {}

// Each CPU's Snapshot fits its slot of the reserved area.
const _: () = assert!(core::mem::size_of::<Snapshot>() as u64 <= layout::PREEMPT_OFF_SIZE);
const _: () =
    assert!(layout::PREEMPT_OFF_SIZE.is_multiple_of(core::mem::align_of::<Snapshot>() as u64));

#[allow(clippy::declare_interior_mutable_const)] // the array initialiser needs a const
const CPU_INIT: Cpu = Cpu {
    start: Cell::new(0),
    cause: Cell::new(causes::OTHER),
    since: Cell::new(0),
    spent: Cell::new([0; causes::COUNT]),
    win_end: Cell::new(0),
    win_max: Cell::new(0),
    win_cause: Cell::new(causes::OTHER),
    steal_start: Cell::new(0),
    win_max_excl: Cell::new(0),
    seq: AtomicU32::new(0),
};

static CPUS: [Cpu; MAX_VCPUS] = [CPU_INIT; MAX_VCPUS];

/// CPU `c`'s figures, in its slot of the reserved area (identity-mapped,
/// zero at boot like all guest RAM: the all-zero Snapshot the static
/// initialiser gave before; epoch 0 is never a phase's, so the first
/// section a CPU ends in a phase resets it).
fn data(c: &Cpu) -> *mut Snapshot {
    // SAFETY: `c` is an element of CPUS (the only Cpus there are).
    let index = unsafe { (c as *const Cpu).offset_from(CPUS.as_ptr()) };
    layout::preempt_off_addr(index as u32) as *mut Snapshot
}

fn this_cpu() -> &'static Cpu {
    &CPUS[percpu::cpu_id() as usize]
}

fn preempt_count() -> u32 {
    percpu::this().preempt_count.get()
}

/// Starts a new phase's figures with windows of `window_cycles`; `on`
/// false turns the tracer off (BSP, between phases).
pub fn begin_phase(window_cycles: u64, on: bool) {
    // Before the new epoch: a CPU that sees it must see the window too.
    WINDOW.store(window_cycles.max(1), Ordering::Relaxed);
    PHASE_END.store(u64::MAX, Ordering::Relaxed);
    EPOCH.fetch_add(1, Ordering::Release);
    ON.store(on, Ordering::Release);
}

/// Ends the phase's windows now (BSP, at the phase's end).
pub fn end_phase() {
    PHASE_END.store(arch::rdtsc(), Ordering::Release);
}

/// Whether the tracer runs.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The BSP's copy buffer for [`with_snapshot`] (too big for a stack).
struct ReadBuf(UnsafeCell<Snapshot>);
// SAFETY: used only under READING (one reader at a time).
unsafe impl Sync for ReadBuf {}
static READ_BUF: ReadBuf = ReadBuf(UnsafeCell::new(Snapshot {
    epoch: 0,
    sections: 0,
    unmatched: 0,
    windows: ZERO_HIST,
    windows_excl_steal: ZERO_HIST,
    causes: [ZERO_CAUSE; causes::COUNT],
}));
static READING: AtomicBool = AtomicBool::new(false);

/// Calls `f` with a consistent copy of `cpu`'s figures of the running (or
/// just ended) phase, if that CPU recorded any in it.
pub fn with_snapshot(cpu: u32, f: impl FnOnce(&Snapshot)) {
    let c = &CPUS[cpu as usize];
    while READING.swap(true, Ordering::Acquire) {
        arch::pause();
    }
    let buf = READ_BUF.0.get();
    loop {
        let s1 = c.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            arch::pause();
            continue;
        }
        // SAFETY: plain integers copied into the buffer READING gives us;
        // a copy torn by the owner's concurrent write is detected by the
        // sequence count below and retried (the seqlock protocol).
        unsafe { core::ptr::copy_nonoverlapping(data(c), buf, 1) };
        fence(Ordering::Acquire);
        if c.seq.load(Ordering::Relaxed) == s1 {
            break;
        }
    }
    // SAFETY: the buffer is ours until READING is released.
    let snap = unsafe { &*buf };
    if snap.epoch == EPOCH.load(Ordering::Acquire) {
        f(snap);
    }
    READING.store(false, Ordering::Release);
}

/// Owner-only write of `c`'s data under the sequence count.
fn write_data(c: &Cpu, f: impl FnOnce(&mut Snapshot)) {
    let s = c.seq.load(Ordering::Relaxed);
    c.seq.store(s.wrapping_add(1), Ordering::Relaxed);
    fence(Ordering::Release);
    // SAFETY: only this CPU writes its data, and it runs pinned (see Cpu);
    // readers retry while the count is odd.
    f(unsafe { &mut *data(c) });
    c.seq.store(s.wrapping_add(2), Ordering::Release);
}

/// Tags the rest of the open section with cause `c` (an
/// [`abi::preempt_off::cause`] index); returns the previous tag. Call only
/// pinned (the tag is this CPU's); a no-op outside a section.
pub fn cause(c: usize) -> usize {
    if !enabled() {
        return causes::OTHER;
    }
    let cpu = this_cpu();
    let prev = cpu.cause.get();
    if cpu.start.get() == 0 || c == prev || c >= causes::COUNT {
        return prev;
    }
    let now = arch::rdtsc();
    let mut spent = cpu.spent.get();
    spent[prev] += now.saturating_sub(cpu.since.get());
    cpu.spent.set(spent);
    cpu.cause.set(c);
    cpu.since.set(now);
    prev
}

/// The CPU leaves a preemptible state now.
fn open() {
    let cpu = this_cpu();
    let now = arch::rdtsc();
    if cpu.start.get() != 0 {
        write_data(cpu, |d| d.unmatched += 1);
    }
    cpu.start.set(now.max(1));
    cpu.steal_start.set(steal_now());
    cpu.cause.set(causes::OTHER);
    cpu.since.set(now);
    cpu.spent.set([0; causes::COUNT]);
}

/// The CPU returns to a preemptible state now.
fn close() {
    let cpu = this_cpu();
    let start = cpu.start.get();
    if start == 0 {
        return;
    }
    let now = arch::rdtsc();
    cpu.start.set(0);
    let mut spent = cpu.spent.get();
    spent[cpu.cause.get()] += now.saturating_sub(cpu.since.get());
    let mut top = causes::OTHER;
    for (i, &s) in spent.iter().enumerate() {
        if s > spent[top] {
            top = i;
        }
    }
    let len = now.saturating_sub(start);
    let stolen = steal_now().saturating_sub(cpu.steal_start.get());
    account(cpu, now, len, len.saturating_sub(ns_to_cycles(stolen)), top);
}

/// This vCPU's steal time in ns (0 where it is not registered).
#[inline]
fn steal_now() -> u64 {
    if pv::steal_registered() {
        pv::steal_ns(percpu::cpu_id())
    } else {
        0
    }
}

/// Steal time (ns) as TSC cycles, at the calibrated rate.
fn ns_to_cycles(ns: u64) -> u64 {
    if ns == 0 {
        return 0;
    }
    let per_us = sched::PARAMS.cycles_per_us.load(Ordering::Relaxed);
    (u128::from(ns) * u128::from(per_us) / 1000).min(u128::from(u64::MAX)) as u64
}

/// Empties `h` in place, whatever it held (the reserved area is not
/// .bss: a phase's first section finds the last phase's figures there).
fn empty(h: &mut Histogram) {
    h.count = 0;
    h.sum = 0;
    h.min = u64::MAX;
    h.max = 0;
    h.buckets.fill(0);
}

/// Adds `n` windows with no section (value 0).
fn record_zeros(h: &mut Histogram, n: u64) {
    if n == 0 {
        return;
    }
    h.buckets[0] = h.buckets[0].saturating_add(n.min(u64::from(u32::MAX)) as u32);
    h.count += n.min(u64::from(u32::MAX));
    h.min = 0;
}

/// Books a section of `len` cycles (`excl` of them not stolen by the host)
/// ending at `now`: closes the windows that ended before it, then makes it
/// the window's maximum if it is (each of the two maxima on its own).
fn account(cpu: &Cpu, now: u64, len: u64, excl: u64, top: usize) {
    let epoch = EPOCH.load(Ordering::Acquire);
    let window = WINDOW.load(Ordering::Relaxed);
    let phase_end = PHASE_END.load(Ordering::Acquire);
    // SAFETY: owner-only read of its own data (see Cpu).
    if unsafe { (*data(cpu)).epoch } != epoch {
        // In place: a Snapshot is too big for an interrupt stack.
        write_data(cpu, |d| {
            d.epoch = epoch;
            d.sections = 0;
            d.unmatched = 0;
            empty(&mut d.windows);
            empty(&mut d.windows_excl_steal);
            d.causes = [ZERO_CAUSE; causes::COUNT];
        });
        cpu.win_end.set(now.saturating_add(window));
        cpu.win_max.set(0);
        cpu.win_max_excl.set(0);
    } else if now >= cpu.win_end.get() {
        let end = cpu.win_end.get();
        let (max, c) = (cpu.win_max.get(), cpu.win_cause.get());
        let max_excl = cpu.win_max_excl.get();
        // Whole windows after `end` in which nothing ended, up to `now`
        // and within the phase.
        let elapsed = (now - end) / window;
        let counted = if phase_end == u64::MAX {
            elapsed
        } else {
            phase_end.saturating_sub(end) / window
        }
        .min(elapsed);
        if end <= phase_end {
            write_data(cpu, |d| {
                d.windows.record(max);
                if max > 0 {
                    d.causes[c].windows += 1;
                    d.causes[c].max = d.causes[c].max.max(max);
                }
                record_zeros(&mut d.windows, counted);
                d.windows_excl_steal.record(max_excl);
                record_zeros(&mut d.windows_excl_steal, counted);
            });
        }
        cpu.win_end
            .set(end.saturating_add((elapsed + 1).saturating_mul(window)));
        cpu.win_max.set(0);
        cpu.win_max_excl.set(0);
    }
    if now <= phase_end {
        write_data(cpu, |d| d.sections += 1);
    }
    if len > cpu.win_max.get() {
        cpu.win_max.set(len);
        cpu.win_cause.set(top);
    }
    if excl > cpu.win_max_excl.get() {
        cpu.win_max_excl.set(excl);
    }
}

/// TSC cycles of one `preempt_disable()`/`preempt_enable()` pair with the
/// tracer on or off (best of 8 runs of 256 pairs; of 2 runs of 16 where
/// kernel code is `emulated`, about 0.5 ms a pair there): the tracer's own
/// cost, for the report. Call with interrupts on and preemption enabled.
pub fn pair_cycles(on: bool, emulated: bool) -> u64 {
    let (runs, pairs) = if emulated { (2, 16) } else { (8, 256) };
    let was = ON.swap(on, Ordering::AcqRel);
    let mut best = u64::MAX;
    for _ in 0..runs {
        let t0 = arch::rdtsc();
        for _ in 0..pairs {
            sched::preempt_disable();
            sched::preempt_enable();
        }
        best = best.min((arch::rdtsc() - t0) / pairs);
    }
    ON.store(was, Ordering::Release);
    best
}

// The hooks, at every transition between preemptible and not.

/// After `preempt_disable`'s increment.
#[inline]
pub(crate) fn preempt_disabled() {
    if enabled() && preempt_count() == 1 && arch::irqs_enabled() {
        open();
    }
}

/// Before `preempt_enable`'s decrement.
#[inline]
pub(crate) fn preempt_enabling() {
    if enabled() && preempt_count() == 1 && arch::irqs_enabled() {
        close();
    }
}

/// After interrupts were disabled; `was` whether they had been on.
#[inline]
pub(crate) fn irqs_off(was: bool) {
    if was && enabled() && preempt_count() == 0 {
        open();
    }
}

/// Before interrupts are enabled (or a halt enables them).
#[inline]
pub(crate) fn irqs_on() {
    if enabled() && preempt_count() == 0 {
        close();
    }
}

/// At a trap's entry; `preemptible` whether the interrupted context was
/// (user mode, or kernel code with interrupts on).
#[inline]
pub(crate) fn trap_entry(preemptible: bool) {
    if preemptible && enabled() && preempt_count() == 0 {
        open();
    }
}

/// At a trap's return to a context that was preemptible, or before a new
/// task first enters user mode.
#[inline]
pub(crate) fn to_preemptible() {
    if enabled() && preempt_count() == 0 {
        close();
    }
}
