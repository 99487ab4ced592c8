//! Tasks and the preemptive scheduler: per-CPU run queues (high class
//! first, round robin within a class), `preempt_count`, `need_resched`,
//! context switch, sleep until a TSC deadline, exit, migration (explicit,
//! forced and a simple balancer) and a tickless idle loop.
//!
//! Ownership rules: a runnable task sits in exactly one run queue, under
//! that queue's lock; the running task is in none. A task switched away
//! from is re-queued only in [`finish_switch`], after the switch, on the
//! next task's stack: so no other CPU can pick it while its stack is still
//! in use. Sleepers sit in their CPU's sleeper list and only that CPU's
//! timer wakes them.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::arch::global_asm;
use core::cell::{Cell, UnsafeCell};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use abi::vector;

use crate::kernel::apic;
use crate::kernel::arch;
use crate::kernel::hotplug;
use crate::kernel::percpu;
use guest_lib::rng::Prob16;

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

/// A CPU's queues.
pub struct RunQueue {
    high: VecDeque<TaskRef>,
    normal: VecDeque<TaskRef>,
    sleepers: Vec<TaskRef>,
}

impl RunQueue {
    /// Empty queues.
    pub const fn new() -> Self {
        RunQueue {
            high: VecDeque::new(),
            normal: VecDeque::new(),
            sleepers: Vec::new(),
        }
    }
    fn push(&mut self, t: TaskRef) {
        match t.get().class {
            Class::High => self.high.push_back(t),
            Class::Normal => self.normal.push_back(t),
        }
    }
    fn earliest_wake(&self) -> Option<u64> {
        self.sleepers.iter().map(|t| t.get().wake_tsc.get()).min()
    }
    /// Runnable tasks queued.
    pub fn len(&self) -> usize {
        self.high.len() + self.normal.len()
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
    /// ([`SpawnError::Refused`]; its memory is freed).
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

fn kstack_layout() -> Layout {
    Layout::from_size_align(KSTACK_SIZE, 16).expect("valid layout")
}

// switch_to(prev_rsp: *mut u64, next_rsp: u64): saves the callee-saved
// registers on the current stack, stores RSP into *prev_rsp, loads
// next_rsp and pops the next task's callee-saved registers. A new task's
// stack is prepared so that the final `ret` lands in task_trampoline.
global_asm!(
    ".global switch_to",
    "switch_to:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rdi], rsp",
    "mov rsp, rsi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".global task_trampoline",
    "task_trampoline:",
    "call {start}",
    "ud2",
    start = sym task_start,
);

extern "C" {
    fn switch_to(prev_rsp: *mut u64, next_rsp: u64);
    fn task_trampoline();
}

fn new_task(name: &str, class: Class, body: Body, kstack: *mut u8, pinned: bool) -> TaskRef {
    let place = alloc::boxed::Box::into_raw(
        alloc::boxed::Box::<core::mem::MaybeUninit<Task>>::new_uninit(),
    );
    new_task_at(place.cast(), name, class, body, kstack, pinned)
}

/// Builds a task in place at `place` (a heap box, or a CPU's fixed area
/// for boot tasks, which never exit).
fn new_task_at(
    place: *mut Task,
    name: &str,
    class: Class,
    body: Body,
    kstack: *mut u8,
    pinned: bool,
) -> TaskRef {
    let mut n = [0u8; 16];
    let len = name.len().min(16);
    n[..len].copy_from_slice(&name.as_bytes()[..len]);
    let kstack_top = if kstack.is_null() {
        0
    } else {
        kstack as u64 + KSTACK_SIZE as u64
    };
    let task = Task {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        name: n,
        class,
        state: AtomicU8::new(RUNNABLE),
        cpu: AtomicU32::new(percpu::cpu_id()),
        migrate_to: AtomicU32::new(NO_CPU),
        pinned,
        rsp: UnsafeCell::new(0),
        kstack,
        kstack_top,
        wake_tsc: Cell::new(0),
        woken_tsc: Cell::new(0),
        body,
        user_stack: None,
        hook_slot: Cell::new(0),
        switches: AtomicU64::new(0),
        migrations: AtomicU64::new(0),
    };
    // SAFETY: `place` is valid for writing a Task (caller) and unaliased.
    unsafe { place.write(task) };
    CREATED.fetch_add(1, Ordering::Relaxed);
    TaskRef(NonNull::new(place).expect("a non-null place"))
}

/// Why a task could not be created.
#[derive(Debug)]
#[allow(clippy::enum_variant_names)] // "no X" is what each one means
pub enum SpawnError {
    /// No memory for its kernel stack.
    NoKernelStack,
    /// No user stack slot left.
    NoUserStack,
    /// The task hooks refused it (e.g. no memory for its IPI wait mask).
    Refused,
}

/// Creates a task and queues it on `cpu`.
pub fn spawn(
    name: &str,
    class: Class,
    body: Body,
    cpu: u32,
    pinned: bool,
) -> Result<TaskRef, SpawnError> {
    // SAFETY: a valid, non-zero-sized layout.
    let kstack = unsafe { alloc::alloc::alloc(kstack_layout()) };
    if kstack.is_null() {
        return Err(SpawnError::NoKernelStack);
    }
    let t = new_task(name, class, body, kstack, pinned);
    if (hooks().on_create)(t.get()).is_err() {
        free_task(t);
        return Err(SpawnError::Refused);
    }
    if let Body::User(..) = body {
        match usermode::UserStack::alloc() {
            Some(s) => {
                // SAFETY: the task is not visible to any other code yet.
                unsafe { (*t.ptr()).user_stack = Some(s) };
            }
            None => {
                free_task(t);
                return Err(SpawnError::NoUserStack);
            }
        }
    }
    prepare_first_switch(t);
    enqueue(t, cpu);
    Ok(t)
}

/// Lays out a new task's kernel stack so that the first switch_to into it
/// pops six zeroed callee-saved registers and "returns" to task_trampoline.
fn prepare_first_switch(t: TaskRef) {
    let top = t.get().kstack_top;
    let frame = (top - 8 * 8) as *mut u64;
    // SAFETY: the frame lies inside the task's fresh kernel stack, which
    // nothing else uses before the task first runs.
    unsafe {
        for i in 0..6 {
            frame.add(i).write(0);
        }
        frame.add(6).write(task_trampoline as *const () as u64);
        frame.add(7).write(0);
        *t.get().rsp.get() = frame as u64;
    }
}

fn free_task(t: TaskRef) {
    let task = t.ptr();
    (hooks().on_free)(t.get());
    // SAFETY: the task is DEAD (or never ran) and in no queue; this is
    // the last reference (see finish_switch).
    unsafe {
        if !(*task).kstack.is_null() {
            alloc::alloc::dealloc((*task).kstack, kstack_layout());
        }
        if let Some(s) = (*task).user_stack.take() {
            s.free();
        }
        drop(alloc::boxed::Box::from_raw(task));
    }
    FREED.fetch_add(1, Ordering::Relaxed);
}

/// Queues a runnable task on `cpu` and makes that CPU look at it. A CPU
/// whose run queue hotplug closed (it is going offline) takes nothing: the
/// task goes to an online CPU instead.
fn enqueue(t: TaskRef, cpu: u32) {
    let mut cpu = cpu;
    let target = loop {
        let target = percpu::of(cpu);
        let mut rq = target.rq.lock();
        if hotplug::rq_closed(cpu) {
            drop(rq);
            cpu = hotplug::fallback_cpu(cpu);
            continue;
        }
        t.get().cpu.store(cpu, Ordering::Relaxed);
        t.get().state.store(RUNNABLE, Ordering::Release);
        rq.push(t);
        break target;
    };
    // Release: the queue push before the flag the target reads.
    target.need_resched.store(true, Ordering::Release);
    if cpu != percpu::cpu_id() {
        apic::send_ipi(cpu, vector::RESCHEDULE);
    }
}

const _: () = assert!(
    3 * percpu::IST_SIZE + core::mem::size_of::<Task>() <= abi::layout::PERCPU_AREA_SIZE as usize
);

/// Makes the CPU's boot context a task: the idle task on APs, the init
/// task on the BSP (which then gets a separate idle task).
pub fn start_cpu(is_bsp: bool) {
    let pc = percpu::this();
    // The boot task lives in this CPU's fixed area, after the IST stacks:
    // no heap lock while hundreds of vCPUs come up at once.
    let place = (abi::layout::percpu_area(pc.id.get()) + 3 * percpu::IST_SIZE as u64) as *mut Task;
    let name = if is_bsp { "init" } else { "idle" };
    let boot = new_task_at(
        place,
        name,
        Class::Normal,
        Body::Boot,
        core::ptr::null_mut(),
        true,
    );
    boot.get().state.store(RUNNING, Ordering::Relaxed);
    pc.current.set(boot.ptr());
    if is_bsp {
        // SAFETY: valid, non-zero-sized layout.
        let kstack = unsafe { alloc::alloc::alloc(kstack_layout()) };
        assert!(!kstack.is_null(), "no memory for the BSP idle task");
        let idle = new_task(
            "idle",
            Class::Normal,
            Body::Kernel(idle_body, 0),
            kstack,
            true,
        );
        prepare_first_switch(idle);
        pc.idle.set(idle.ptr());
    } else {
        pc.idle.set(boot.ptr());
    }
}

fn idle_body(_: usize) {
    idle_loop()
}

/// The idle loop: run queued work, else halt with only the timers
/// sleepers need (tickless idle). A CPU going offline does it here
/// ([`hotplug::cpu_die`]).
pub fn idle_loop() -> ! {
    loop {
        arch::irq_disable();
        let pc = percpu::this();
        if hotplug::going_down(pc.id.get()) {
            hotplug::cpu_die();
            continue;
        }
        if pc.need_resched.load(Ordering::Acquire) || pc.rq.lock().len() > 0 {
            schedule();
            continue;
        }
        rearm_timer();
        // SAFETY: the IDT and interrupt stacks are set up (start_cpu runs
        // after trap init).
        unsafe { arch::safe_halt() };
    }
}

extern "C" fn task_start() -> ! {
    finish_switch();
    let t = current();
    match t.body {
        Body::Kernel(f, arg) => {
            // SAFETY: interrupts are set up; kernel threads run with them on.
            unsafe { arch::irq_enable() };
            f(arg);
            exit()
        }
        Body::User(f, arg) => {
            let stack = t
                .user_stack
                .as_ref()
                .expect("user tasks own a user stack")
                .top();
            trace::to_preemptible();
            arch::enter_user(f, arg, stack)
        }
        Body::Boot => unreachable!("boot contexts are never started"),
    }
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

/// Picks the next task and switches to it (or keeps the current one).
pub fn schedule() {
    let irq = arch::irq_save();
    trace::cause(abi::preempt_off::cause::SCHED);
    let pc = percpu::this();
    pc.need_resched.store(false, Ordering::Relaxed);
    let prev = TaskRef(NonNull::new(pc.current.get()).expect("a current task"));
    let p = prev.get();
    let is_idle = prev.ptr() == pc.idle.get();
    // Going offline: only idle runs here; a running task moves away.
    let dying = hotplug::going_down(pc.id.get());
    if dying
        && !is_idle
        && p.state.load(Ordering::Relaxed) == RUNNING
        && p.migrate_to.load(Ordering::Relaxed) == NO_CPU
    {
        p.migrate_to
            .store(hotplug::fallback_cpu(pc.id.get()), Ordering::Relaxed);
    }
    let prev_continues = !is_idle
        && p.state.load(Ordering::Relaxed) == RUNNING
        && p.migrate_to.load(Ordering::Relaxed) == NO_CPU;
    let next = {
        let mut rq = pc.rq.lock();
        if dying {
            TaskRef(NonNull::new(pc.idle.get()).expect("an idle task"))
        } else if let Some(t) = rq.high.pop_front() {
            t
        } else if prev_continues && p.class == Class::High {
            prev
        } else if let Some(t) = rq.normal.pop_front() {
            t
        } else if prev_continues {
            prev
        } else {
            TaskRef(NonNull::new(pc.idle.get()).expect("an idle task"))
        }
    };
    if next != prev {
        // Deferred work of the layers above before another task runs.
        (hooks().drain)();
        switch(prev, next); // rearms the timer in finish_switch
    } else {
        rearm_timer();
    }
    trace::cause(abi::preempt_off::cause::OTHER);
    arch::irq_restore(irq);
}

fn switch(prev: TaskRef, next: TaskRef) {
    let pc = percpu::this();
    let n = next.get();
    let here = pc.id.get();
    if n.cpu.swap(here, Ordering::Relaxed) != here && next.ptr() != pc.idle.get() {
        n.migrations.fetch_add(1, Ordering::Relaxed);
    }
    n.state.store(RUNNING, Ordering::Relaxed);
    prev.get().switches.fetch_add(1, Ordering::Relaxed);
    pc.prev.set(prev.ptr());
    pc.current.set(next.ptr());
    if n.kstack_top != 0 {
        percpu::set_kernel_stack(n.kstack_top);
    }
    pc.context_switches.inc();
    // SAFETY: prev's rsp slot is valid (prev is live until finish_switch),
    // next's saved rsp was written by its own switch_to or by spawn.
    unsafe { switch_to(prev.get().rsp.get(), *n.rsp.get()) };
    // Back in `prev`, possibly on another CPU.
    finish_switch();
}

/// Bookkeeping for the task switched away from, on the new task's stack
/// (new tasks run it first thing, resumed ones on return from switch_to),
/// then the timer for the task now running.
fn finish_switch() {
    settle_prev();
    rearm_timer();
}

fn settle_prev() {
    let pc = percpu::this();
    let Some(prev) = NonNull::new(pc.prev.replace(core::ptr::null_mut())).map(TaskRef) else {
        return;
    };
    if prev.ptr() == pc.idle.get() {
        return;
    }
    let p = prev.get();
    match p.state.load(Ordering::Relaxed) {
        RUNNING => {
            let dst = p.migrate_to.swap(NO_CPU, Ordering::Relaxed);
            if dst != NO_CPU && dst != pc.id.get() {
                percpu::of(dst)
                    .migrations_in
                    .fetch_add(1, Ordering::Relaxed);
                enqueue(prev, dst);
            } else {
                enqueue(prev, pc.id.get());
                // Our own push set need_resched; it is not a reason to run
                // schedule again right away.
                pc.need_resched.store(false, Ordering::Relaxed);
            }
        }
        DEAD => free_task(prev),
        _ => {} // SLEEPING: already in this CPU's sleeper list.
    }
}

/// Gives up the CPU.
pub fn yield_now() {
    percpu::this().need_resched.store(true, Ordering::Relaxed);
    schedule();
}

/// Ends the running task; its memory is freed by the next task.
pub fn exit() -> ! {
    arch::irq_disable();
    current().state.store(DEAD, Ordering::Relaxed);
    schedule();
    unreachable!("a dead task was scheduled");
}

/// Sleeps until TSC `deadline`.
pub fn sleep_until(deadline: u64) {
    let _ = sleep_until_woken(deadline);
}

/// [`sleep_until`], returning the TSC at which the timer interrupt that
/// woke the task began (the latency probe splits its lateness there:
/// arrival before it, dispatch after).
pub fn sleep_until_woken(deadline: u64) -> u64 {
    let irq = arch::irq_save();
    let pc = percpu::this();
    let t = TaskRef(NonNull::new(pc.current.get()).expect("a current task"));
    t.get().wake_tsc.set(deadline);
    t.get().woken_tsc.set(0);
    t.get().state.store(SLEEPING, Ordering::Relaxed);
    pc.rq.lock().sleepers.push(t);
    schedule();
    arch::irq_restore(irq);
    t.get().woken_tsc.get()
}

/// Sleeps `us` microseconds.
pub fn sleep_us(us: u64) {
    sleep_until(arch::rdtsc() + us * PARAMS.cycles_per_us.load(Ordering::Relaxed));
}

/// Asks task `t`'s CPU to move it to `dst` at its next switch.
pub fn request_migration(t: &Task, dst: u32) {
    t.migrate_to.store(dst, Ordering::Relaxed);
}

/// Programs the timer for the earliest of: the next tick (while a task
/// other than idle runs or waits) and the earliest sleeper.
pub fn rearm_timer() {
    let pc = percpu::this();
    let (earliest, busy) = {
        let rq = pc.rq.lock();
        (rq.earliest_wake(), rq.len() > 0)
    };
    // A hotplug request that must wait for another CPU keeps the tick on.
    let running_task = pc.current.get() != pc.idle.get() || hotplug::wants_tick(pc.id.get());
    let tick = if running_task || busy {
        if pc.next_tick.get() == 0 {
            pc.next_tick
                .set(arch::rdtsc() + PARAMS.tick_cycles.load(Ordering::Relaxed));
        }
        Some(pc.next_tick.get())
    } else {
        pc.next_tick.set(0); // tickless idle
        None
    };
    let deadline = match (tick, earliest) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(0),
    };
    apic::arm(deadline);
}

/// The timer interrupt: deferred work first, then wake sleepers, run the
/// tick, rearm.
pub fn on_tick() {
    let entered = arch::rdtsc();
    (hooks().drain)();
    hotplug::poll();
    let pc = percpu::this();
    let now = arch::rdtsc();
    {
        let mut rq = pc.rq.lock();
        let mut i = 0;
        while i < rq.sleepers.len() {
            if rq.sleepers[i].get().wake_tsc.get() <= now {
                let t = rq.sleepers.swap_remove(i);
                t.get().woken_tsc.set(entered);
                t.get().state.store(RUNNABLE, Ordering::Relaxed);
                rq.push(t);
                pc.need_resched.store(true, Ordering::Relaxed);
            } else {
                i += 1;
            }
        }
    }
    let next_tick = pc.next_tick.get();
    if next_tick != 0 && now >= next_tick {
        pc.ticks.inc();
        pc.next_tick
            .set(now + PARAMS.tick_cycles.load(Ordering::Relaxed));
        tick_work(pc);
    }
    rearm_timer();
}

fn tick_work(pc: &percpu::PerCpu) {
    if pc.rq.lock().len() > 0 {
        pc.need_resched.store(true, Ordering::Relaxed); // time slice over
    }
    let nr = PARAMS.nr_cpus.load(Ordering::Relaxed);
    if nr < 2 {
        return;
    }
    let cur = pc.current.get();
    let chance = PARAMS.forced_migration.load(Ordering::Relaxed);
    if chance > 0 && cur != pc.idle.get() {
        // SAFETY: current task is live.
        let t = unsafe { &*cur };
        if !t.pinned && Prob16(chance).hits(percpu::random()) {
            let dst = (pc.id.get() + 1 + (percpu::random() % u64::from(nr - 1)) as u32) % nr;
            request_migration(t, dst);
            pc.need_resched.store(true, Ordering::Relaxed);
        }
    }
    if pc.ticks.get().is_multiple_of(16) {
        balance(pc, nr);
    }
}

/// Pulls one normal task from a random busier CPU.
fn balance(pc: &percpu::PerCpu, nr: u32) {
    let here = pc.id.get();
    let other = (here + 1 + (percpu::random() % u64::from(nr - 1)) as u32) % nr;
    let mine = pc.rq.lock().normal.len();
    if let Some(t) = steal_from(other, mine) {
        pc.migrations_in.fetch_add(1, Ordering::Relaxed);
        enqueue(t, here);
    }
}

/// Takes the newest unpinned normal task from CPU `other`'s queue if it
/// holds more than one beyond `mine` (the balancer's and a returning CPU's
/// rule).
fn steal_from(other: u32, mine: usize) -> Option<TaskRef> {
    let mut theirs = percpu::of(other).rq.lock();
    if theirs.normal.len() > mine + 1 {
        let idx = theirs.normal.iter().rposition(|t| !t.get().pinned);
        idx.and_then(|i| theirs.normal.remove(i))
    } else {
        None
    }
}

/// CPU hotplug, on the dying CPU: closes its run queue (enqueues go
/// elsewhere from now on) and moves every queued and sleeping task to the
/// online CPUs, round robin. Returns how many moved.
pub fn evacuate(cpu: u32) -> u32 {
    let (runnable, sleepers) = {
        let mut rq = percpu::of(cpu).rq.lock();
        hotplug::set_rq_closed(cpu, true);
        let mut runnable: Vec<TaskRef> = rq.high.drain(..).collect();
        runnable.extend(rq.normal.drain(..));
        (runnable, core::mem::take(&mut rq.sleepers))
    };
    let mut dst = cpu;
    let mut moved = 0;
    for t in runnable {
        dst = hotplug::fallback_cpu(dst);
        percpu::of(dst)
            .migrations_in
            .fetch_add(1, Ordering::Relaxed);
        enqueue(t, dst);
        moved += 1;
    }
    for t in sleepers {
        dst = hotplug::fallback_cpu(dst);
        loop {
            let target = percpu::of(dst);
            let mut rq = target.rq.lock();
            if hotplug::rq_closed(dst) {
                drop(rq);
                dst = hotplug::fallback_cpu(dst);
                continue;
            }
            t.get().cpu.store(dst, Ordering::Relaxed);
            rq.sleepers.push(t);
            break;
        }
        // Its timer must now cover the sleeper's wake-up.
        percpu::of(dst).need_resched.store(true, Ordering::Release);
        apic::send_ipi(dst, vector::RESCHEDULE);
        moved += 1;
    }
    moved
}

/// CPU hotplug, on a CPU coming back: reopens its run queue.
pub fn reopen(cpu: u32) {
    let _rq = percpu::of(cpu).rq.lock();
    hotplug::set_rq_closed(cpu, false);
}

/// CPU hotplug, on a CPU back online: pulls one movable normal task from
/// every busier online CPU (an idle CPU has no tick, so the periodic
/// balancer would never run here).
pub fn pull_work(cpu: u32) {
    let nr = PARAMS.nr_cpus.load(Ordering::Relaxed);
    for other in (0..nr).filter(|&c| c != cpu && hotplug::cpu_online(c)) {
        let mine = percpu::of(cpu).rq.lock().normal.len();
        if let Some(t) = steal_from(other, mine) {
            percpu::this().migrations_in.fetch_add(1, Ordering::Relaxed);
            enqueue(t, cpu);
        }
    }
}

/// The reschedule IPI: something was queued here.
pub fn on_resched_ipi() {
    percpu::this().need_resched.store(true, Ordering::Relaxed);
}
