//! Tasks and the preemptive scheduler: per-CPU run queues (high class
//! first, round robin within a class), `preempt_count`, `need_resched`,
//! context switch, sleep until a TSC deadline, exit, migration (explicit,
//! forced and a simple balancer) and a tickless idle loop.
//!
//! Ownership rules: a runnable task sits in exactly one run queue, under
//! that queue's lock; the running task is in none. A task switched away
//! from is re-queued only in `switch::finish_switch`, after the switch, on
//! the next task's stack: so no other CPU can pick it while its stack is
//! still in use. Sleepers sit in their CPU's sleeper list and only that
//! CPU's timer wakes them.
//!
//! This file holds the task and its hooks, the scheduler's settings and the
//! preemption count; the submodules, one concern each: [`task`] (creation,
//! boot and idle tasks, exit), [`runqueue`] (the queues and enqueueing),
//! [`switch`] (picking the next task and the context switch), [`timer`]
//! (sleeping, the tick, the timer), [`balance`] (forced migration, the
//! balancer, the hotplug moves).

mod balance;
mod runqueue;
mod switch;
mod task;
mod timer;

pub use balance::{evacuate, pull_work, reopen};
pub use runqueue::RunQueue;
pub use switch::{schedule, yield_now};
pub use task::{exit, idle_loop, spawn, start_cpu};
pub use timer::{on_tick, sleep_until, sleep_until_woken, sleep_us};

use core::cell::{Cell, UnsafeCell};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::kernel::arch;
use crate::kernel::percpu;
use crate::kernel::sync::BootCell;
use crate::kernel::trace;
use crate::kernel::usermode;

/// Kernel stack of every task.
pub const KSTACK_SIZE: usize = 16 << 10;
/// No CPU (in `migrate_to`).
pub const NO_CPU: u32 = u32::MAX;

/// Scheduling class.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Round robin with the other normal tasks.
    Normal,
    /// Runs before any normal task (the latency probe).
    High,
}

const RUNNABLE: u8 = 0;
const RUNNING: u8 = 1;
const SLEEPING: u8 = 2;
const DEAD: u8 = 3;

/// What a task runs.
#[derive(Clone, Copy)]
pub enum Body {
    /// A kernel thread (CPL0): `f(arg)`, then exit.
    Kernel(fn(usize), usize),
    /// A user task (CPL3): jumps to `f(arg)` in user mode on its own user
    /// stack; it ends with the EXIT system call.
    User(extern "C" fn(usize) -> !, usize),
    /// The context a CPU booted in (its boot stack).
    Boot,
}

/// A task.
pub struct Task {
    /// Unique id (1, 2, ...).
    pub id: u64,
    /// Name (UTF-8, NUL-padded).
    pub name: [u8; 16],
    /// Class.
    pub class: Class,
    state: AtomicU8,
    /// CPU it runs or is queued on.
    pub cpu: AtomicU32,
    /// CPU it must move to at its next switch ([`NO_CPU`]: none).
    pub migrate_to: AtomicU32,
    /// Whether it may be moved by forced migration and the balancer.
    pub pinned: bool,
    rsp: UnsafeCell<u64>,
    kstack: *mut u8,
    kstack_top: u64,
    wake_tsc: Cell<u64>,
    /// TSC at which the timer interrupt that woke it from its last sleep
    /// began (0: not woken by the timer yet).
    woken_tsc: Cell<u64>,
    body: Body,
    user_stack: Option<usermode::UserStack>,
    /// One pointer-sized word owned by the [`TaskHooks`]: the field the
    /// series under study adds to every task (its IPI wait mask, or a
    /// pointer to one). The kernel never reads it.
    pub hook_slot: Cell<usize>,
    /// Times this task was switched out.
    pub switches: AtomicU64,
    /// Times this task resumed on another CPU than it last ran on.
    pub migrations: AtomicU64,
}

impl Task {
    /// Its state as [`abi::task_state`] reports it (for the stall report:
    /// a snapshot, it may change right after).
    pub fn state_code(&self) -> u32 {
        match self.state.load(Ordering::Relaxed) {
            RUNNING => abi::task_state::RUNNING,
            SLEEPING => abi::task_state::SLEEPING,
            DEAD => abi::task_state::DEAD,
            _ => abi::task_state::RUNNABLE,
        }
    }
}

/// A task pointer that may cross CPUs (see the ownership rules above).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TaskRef(NonNull<Task>);

// SAFETY: tasks are handed between CPUs only under run-queue locks or
// through finish_switch, per the ownership rules in the module docs.
unsafe impl Send for TaskRef {}

impl TaskRef {
    fn get(&self) -> &'static Task {
        // SAFETY: a TaskRef exists only for a live task (freed only in
        // finish_switch once DEAD, after which no queue holds it).
        unsafe { self.0.as_ref() }
    }
    fn ptr(&self) -> *mut Task {
        self.0.as_ptr()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Tasks created so far.
pub static CREATED: AtomicU64 = AtomicU64::new(0);
/// Tasks exited and freed so far.
pub static FREED: AtomicU64 = AtomicU64::new(0);

/// Tasks alive now (created and not yet freed), boot and idle tasks
/// included.
pub fn live_tasks() -> u64 {
    CREATED.load(Ordering::Relaxed) - FREED.load(Ordering::Relaxed)
}

/// Scheduler parameters, set by the BSP before StartAps.
pub struct Params {
    /// TSC cycles per scheduler tick.
    pub tick_cycles: AtomicU64,
    /// TSC cycles per microsecond.
    pub cycles_per_us: AtomicU64,
    /// Forced migration chance per tick, in 1/65536.
    pub forced_migration: AtomicU32,
    /// Number of CPUs.
    pub nr_cpus: AtomicU32,
}

/// The scheduler parameters.
pub static PARAMS: Params = Params {
    tick_cycles: AtomicU64::new(0),
    cycles_per_us: AtomicU64::new(2600),
    forced_migration: AtomicU32::new(0),
    nr_cpus: AtomicU32::new(1),
};

/// What the layers above attach to every task and to the scheduler's
/// observable actions (set once at boot with [`set_hooks`]).
#[derive(Clone, Copy)]
pub struct TaskHooks {
    /// A task was created (not yet runnable): set up its
    /// [`Task::hook_slot`]. An error refuses the task
    /// ([`task::SpawnError::Refused`]; its memory is freed).
    pub on_create: fn(&Task) -> Result<(), ()>,
    /// A task is being freed (after its last run, or refused).
    pub on_free: fn(&Task),
    /// Runs before the CPU does anything observable: a tick's work or a
    /// task switch (interrupts off). flush-defer's deferred work uses it.
    pub drain: fn(),
}

fn no_slot(_: &Task) -> Result<(), ()> {
    Ok(())
}
fn no_free(_: &Task) {}
fn no_drain() {}

static HOOKS: BootCell<TaskHooks> = BootCell::new(TaskHooks {
    on_create: no_slot,
    on_free: no_free,
    drain: no_drain,
});

/// Sets the task hooks (once).
///
/// # Safety
/// As [`BootCell::set`]: the BSP, at boot, before any task is created.
pub unsafe fn set_hooks(h: TaskHooks) {
    // SAFETY: delegated to the caller.
    unsafe { HOOKS.set(h) };
}

fn hooks() -> TaskHooks {
    HOOKS.get()
}

/// Takes the scheduler's settings from the control block (BSP, at boot).
pub fn configure(control: &abi::Control) {
    let cycles_per_us = (control.tsc_khz / 1000).max(1);
    PARAMS.cycles_per_us.store(cycles_per_us, Ordering::Relaxed);
    PARAMS.nr_cpus.store(control.nr_vcpus, Ordering::Relaxed);
    PARAMS
        .forced_migration
        .store(control.forced_migration, Ordering::Relaxed);
    // A provisional tick until the calibration picks the real one.
    PARAMS
        .tick_cycles
        .store(cycles_per_us * 10_000, Ordering::Relaxed);
}

/// The running task. One gs-relative load, so that a task preempted and
/// moved to another vCPU cannot read its old CPU's `current` (two loads
/// through `percpu::this()` could).
pub fn current() -> &'static Task {
    let p: *const Task;
    // SAFETY: GS base is this CPU's PerCpu and OFFSET_CURRENT the offset of
    // its `current` pointer, set by start_cpu before anything calls this.
    unsafe {
        core::arch::asm!("mov {}, qword ptr gs:[{off}]", out(reg) p, off = const percpu::OFFSET_CURRENT,
            options(nostack, readonly, preserves_flags))
    };
    // SAFETY: `current` always points at a live task (the running one).
    unsafe { &*p }
}

/// Id and name of the running task (0 and empty before start_cpu).
pub fn current_identity() -> (u64, [u8; 16]) {
    let p = percpu::this().current.get();
    if p.is_null() {
        (0, [0; 16])
    } else {
        // SAFETY: see current().
        let t = unsafe { &*p };
        (t.id, t.name)
    }
}

/// Disables preemption on this CPU.
///
/// One gs-relative `add`: atomic with respect to interrupts, and always on
/// the count of the CPU the task runs on. A read-modify-write through a
/// pointer taken first (`this().count.set(get() + 1)`) could be preempted
/// between the load and the store, the task moved to another vCPU, and the
/// old CPU's count incremented: the "pinned" section then ran unpinned (the
/// soak caught the upstream design under-waiting because of that).
pub fn preempt_disable() {
    // SAFETY: GS base is this CPU's PerCpu (set before any task runs) and
    // OFFSET_PREEMPT_COUNT is the offset of its u32 preempt_count.
    unsafe {
        core::arch::asm!("add dword ptr gs:[{off}], 1", off = const percpu::OFFSET_PREEMPT_COUNT, options(nostack))
    };
    trace::preempt_disabled();
}

/// Re-enables preemption; reschedules if a reschedule became due.
pub fn preempt_enable() {
    trace::preempt_enabling();
    let left: u32;
    // SAFETY: as in preempt_disable; `sub` then reading the same slot: if
    // the task moves between the two, it reads its new CPU's count, which
    // is 0 (it runs preemptible code there), and a reschedule check there
    // is right.
    unsafe {
        core::arch::asm!(
            "sub dword ptr gs:[{off}], 1",
            "mov {left:e}, dword ptr gs:[{off}]",
            off = const percpu::OFFSET_PREEMPT_COUNT,
            left = out(reg) left,
            options(nostack)
        )
    };
    if left == 0 && percpu::this().need_resched.load(Ordering::Acquire) && arch::irqs_enabled() {
        schedule();
    }
}

/// Called on return from an interrupt or syscall that interrupted a
/// preemptible context.
pub fn preempt_on_return() {
    let pc = percpu::this();
    if pc.preempt_count.get() == 0 && pc.need_resched.load(Ordering::Acquire) {
        if pc.current.get() != pc.idle.get() {
            pc.preemptions.inc();
        }
        schedule();
    }
}

/// Asks task `t`'s CPU to move it to `dst` at its next switch.
pub fn request_migration(t: &Task, dst: u32) {
    t.migrate_to.store(dst, Ordering::Relaxed);
}

/// The reschedule IPI: something was queued here.
pub fn on_resched_ipi() {
    percpu::this().need_resched.store(true, Ordering::Relaxed);
}
