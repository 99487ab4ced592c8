//! A task's life: creation (its kernel stack, its user stack, the hooks'
//! slot, the first switch frame), the boot and idle tasks of every CPU, the
//! idle loop, the first instructions of a new task, exit and freeing.

use core::alloc::Layout;
use core::cell::{Cell, UnsafeCell};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::runqueue::enqueue;
use super::switch::{finish_switch, schedule, task_trampoline};
use super::timer::rearm_timer;
use super::{
    current, hooks, Body, Class, Task, TaskRef, CREATED, DEAD, FREED, KSTACK_SIZE, NEXT_ID, NO_CPU,
    RUNNABLE, RUNNING,
};
use crate::kernel::arch;
use crate::kernel::hotplug;
use crate::kernel::percpu;
use crate::kernel::trace;
use crate::kernel::usermode;

fn kstack_layout() -> Layout {
    Layout::from_size_align(KSTACK_SIZE, 16).expect("valid layout")
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

pub(super) fn free_task(t: TaskRef) {
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

pub(super) extern "C" fn task_start() -> ! {
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

/// Ends the running task; its memory is freed by the next task.
pub fn exit() -> ! {
    arch::irq_disable();
    current().state.store(DEAD, Ordering::Relaxed);
    schedule();
    unreachable!("a dead task was scheduled");
}
