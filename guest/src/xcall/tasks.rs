//! Which tasks are alive and what each one waits for, so that a phase that
//! cannot quiesce can say why (the stall report names the tasks and the
//! vCPU whose csd each one waits on) instead of letting its leftover calls
//! look like lost callbacks.
//!
//! Every task created through `sched::spawn` is registered by the task
//! hooks (slot `id % SLOTS`; a collision leaves the newer task out of the
//! report, counted); a csd wait writes its target into the waiting task's
//! slot and clears it when it ends. The kernel keeps no list of tasks, and
//! the wait note must not cost the wait more than two stores, hence this
//! table rather than a field in `Task`.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use abi::{StalledTask, NO_WAIT, STALL_RECORDS};

use crate::kernel::sched::{self, Task};
use crate::kernel::sync::IrqSpinLock;

const SLOTS: usize = 8192;

struct Entry {
    task: AtomicPtr<Task>,
    id: AtomicU64,
    waits_on: AtomicU32,
    /// Stack address the running call's wait depth is measured from.
    wait_base: AtomicU64,
    /// The checker's token of the waiting call the task makes (0: none)
    /// and that call's callback argument (see [`arm_return`]).
    armed_token: AtomicU64,
    armed_info: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // array initialiser
const ENTRY_INIT: Entry = Entry {
    task: AtomicPtr::new(ptr::null_mut()),
    id: AtomicU64::new(0),
    waits_on: AtomicU32::new(NO_WAIT),
    wait_base: AtomicU64::new(0),
    armed_token: AtomicU64::new(0),
    armed_info: AtomicU64::new(0),
};

static TABLE: [Entry; SLOTS] = [ENTRY_INIT; SLOTS];
/// Serialises registration, removal and the report's walk, so the walk
/// never reads a task that is being freed.
static LOCK: IrqSpinLock<()> = IrqSpinLock::new(());
/// Tasks not registered because their slot was taken (they are counted
/// among a stall's tasks, not described).
static UNTRACKED: AtomicU64 = AtomicU64::new(0);
/// The highest task id registered so far.
static LAST_ID: AtomicU64 = AtomicU64::new(0);

fn slot(id: u64) -> &'static Entry {
    &TABLE[(id % SLOTS as u64) as usize]
}

/// Task creation: registers `t`.
pub fn register(t: &Task) {
    let _g = LOCK.lock();
    LAST_ID.fetch_max(t.id, Ordering::Relaxed);
    let e = slot(t.id);
    if e.task.load(Ordering::Relaxed).is_null() {
        e.id.store(t.id, Ordering::Relaxed);
        e.waits_on.store(NO_WAIT, Ordering::Relaxed);
        e.armed_token.store(0, Ordering::Relaxed);
        e.task
            .store(t as *const Task as *mut Task, Ordering::Relaxed);
    } else {
        UNTRACKED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Task exit (before its memory is freed): removes `t`.
pub fn unregister(t: &Task) {
    let _g = LOCK.lock();
    let e = slot(t.id);
    if ptr::eq(e.task.load(Ordering::Relaxed), t) {
        e.task.store(ptr::null_mut(), Ordering::Relaxed);
    }
}

/// The running task starts waiting for `target`'s csd; returns the note to
/// pass to [`wait_done`].
pub fn waiting(target: u32) -> Option<&'static AtomicU32> {
    mine().map(|e| {
        e.waits_on.store(target, Ordering::Relaxed);
        &e.waits_on
    })
}

/// The running task's entry, if it has one.
fn mine() -> Option<&'static Entry> {
    let t = sched::current();
    let e = slot(t.id);
    (e.id.load(Ordering::Relaxed) == t.id).then_some(e)
}

/// The running task is about to hand its wait to the design: `base` is a
/// stack address of the caller's frame.
pub fn set_wait_base(base: u64) {
    if let Some(e) = mine() {
        e.wait_base.store(base, Ordering::Relaxed);
    }
}

/// The base set by [`set_wait_base`] for this call, once.
pub fn take_wait_base() -> Option<u64> {
    mine()
        .map(|e| e.wait_base.swap(0, Ordering::Relaxed))
        .filter(|&b| b != 0)
}

/// The running task is about to make the waiting call the checker knows
/// as `token`, with callback argument `info` (see
/// [`checker::expect_return`](super::checker::expect_return)).
pub fn arm_return(token: usize, info: usize) {
    if let Some(e) = mine() {
        e.armed_info.store(info as u64, Ordering::Relaxed);
        e.armed_token.store(token as u64, Ordering::Relaxed);
    }
}

/// The token armed by [`arm_return`], once, if the running task armed one
/// for a call with argument `info` (`None` for any other: a call an
/// interrupt handler makes, or an unchecked one).
pub fn take_armed(info: usize) -> Option<usize> {
    let e = mine()?;
    let token = e.armed_token.load(Ordering::Relaxed);
    if token == 0 || e.armed_info.load(Ordering::Relaxed) != info as u64 {
        return None;
    }
    e.armed_token.store(0, Ordering::Relaxed);
    Some(token as usize)
}

/// Disarms what [`arm_return`] left (the call returned some other way).
pub fn disarm() {
    if let Some(e) = mine() {
        e.armed_token.store(0, Ordering::Relaxed);
    }
}

/// The wait noted by [`waiting`] ended.
pub fn wait_done(note: Option<&'static AtomicU32>) {
    if let Some(w) = note {
        w.store(NO_WAIT, Ordering::Relaxed);
    }
}

/// Tasks alive with an id of at least `first_id` (those created since a
/// phase began): their number, and the first [`STALL_RECORDS`] of them.
pub fn report(first_id: u64) -> (u32, [StalledTask; STALL_RECORDS]) {
    let mut out = [StalledTask::EMPTY; STALL_RECORDS];
    let mut n = 0u32;
    let _g = LOCK.lock();
    for e in TABLE.iter() {
        let p = e.task.load(Ordering::Relaxed);
        if p.is_null() {
            continue;
        }
        // SAFETY: registered tasks are unregistered under LOCK before they
        // are freed, and we hold LOCK.
        let t = unsafe { &*p };
        if t.id < first_id {
            continue;
        }
        if let Some(o) = out.get_mut(n as usize) {
            *o = StalledTask {
                id: t.id,
                name: t.name,
                cpu: t.cpu.load(Ordering::Relaxed),
                state: t.state_code(),
                waits_on: e.waits_on.load(Ordering::Relaxed),
                reserved: 0,
            };
        }
        n += 1;
    }
    (n, out)
}

/// The id the next task will have at least (ids only grow): a phase's
/// tasks are those with an id of at least this value taken at its start.
pub fn next_id() -> u64 {
    LAST_ID.load(Ordering::Relaxed) + 1
}
