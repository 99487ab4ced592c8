//! The IPI wait-mask designs and what each design's phase reports.

use core::mem::size_of;

#[cfg(doc)]
use crate::{pv, Control};
use crate::{Histogram, Pod, PreemptOffResults, ProbeSplit};

crate::wire_enum! {
    /// The IPI wait-mask designs ([`Control::designs`]).
    pub enum Design: u32, "design" {
        /// Linux before the series: the per-CPU `cfd->cpumask`, preemption
        /// disabled from queueing through the last wait.
        Upstream = 0 => "upstream",
        /// The series: a task-local mask (inside the pointer-sized field when it
        /// fits, else allocated at task creation); the final wait is preemptible.
        TaskLocal = 1 => "task-local",
        /// The mask is a local of the caller; preemptible wait.
        Stack = 2 => "stack",
        /// The mask is allocated per call; on failure the upstream pinned wait.
        AllocInPath = 3 => "alloc-in-path",
        /// Wrong on purpose: the per-CPU mask with a preemptible wait.
        UnsafePercpu = 4 => "unsafe-percpu",
        /// Wrong on purpose (CPU hotplug): task-local, but a CPU going
        /// offline frees (poisons) its per-CPU csds while a migrated waiter
        /// may still poll them.
        FreeCsdOffline = 5 => "free-csd-offline",
        /// Wrong on purpose (CPU hotplug): task-local, but a CPU going
        /// offline drops its call queue instead of running it.
        NoDyingFlush = 6 => "no-dying-flush",
    }
}

impl Design {
    /// Whether the design must never violate the invariants.
    pub const fn expected_safe(self) -> bool {
        !matches!(
            self,
            Design::UnsafePercpu | Design::FreeCsdOffline | Design::NoDyingFlush
        )
    }
}

crate::wire_enum! {
    /// The kinds of invariant violation ([`ViolationRecord::kind`]).
    pub enum ViolationKind: u32, "violation kind" {
        /// The caller returned before a target ran the callback (under-wait).
        NotRun = 1 => "not-run",
        /// A target ran the callback twice.
        RanTwice = 2 => "ran-twice",
        /// A callback ran after its (waiting) caller returned.
        RanAfterReturn = 3 => "ran-after-return",
        /// A callback ran on a CPU that was not a target.
        WrongCpu = 4 => "wrong-cpu",
        /// A csd was re-initialised while locked.
        CsdReinit = 5 => "csd-reinit",
        /// An asynchronous call never ran on a target by the end of the phase.
        Lost = 6 => "lost",
        /// flush-defer: a deferred target was about to run another cross-call
        /// callback with its deferred work still pending.
        DeferredLate = 7 => "deferred-late",
        /// CPU hotplug: a waiter polled a csd its CPU had freed when it went
        /// offline (`free-csd-offline`).
        CsdFreed = 8 => "csd-freed",
        /// CPU hotplug: a csd queued to a CPU was still locked after that
        /// CPU's dying flush (`no-dying-flush`): its callback never ran.
        DroppedOffline = 9 => "dropped-offline",
    }
}

/// [`ViolationRecord::kind`] values: the [`ViolationKind`] codes as
/// constants, for the guest's `u32` stores.
pub mod violation {
    use super::ViolationKind;

    /// [`ViolationKind::NotRun`].
    pub const NOT_RUN: u32 = ViolationKind::NotRun.wire();
    /// [`ViolationKind::RanTwice`].
    pub const RAN_TWICE: u32 = ViolationKind::RanTwice.wire();
    /// [`ViolationKind::RanAfterReturn`].
    pub const RAN_AFTER_RETURN: u32 = ViolationKind::RanAfterReturn.wire();
    /// [`ViolationKind::WrongCpu`].
    pub const WRONG_CPU: u32 = ViolationKind::WrongCpu.wire();
    /// [`ViolationKind::CsdReinit`].
    pub const CSD_REINIT: u32 = ViolationKind::CsdReinit.wire();
    /// [`ViolationKind::Lost`].
    pub const LOST: u32 = ViolationKind::Lost.wire();
    /// [`ViolationKind::DeferredLate`].
    pub const DEFERRED_LATE: u32 = ViolationKind::DeferredLate.wire();
    /// [`ViolationKind::CsdFreed`].
    pub const CSD_FREED: u32 = ViolationKind::CsdFreed.wire();
    /// [`ViolationKind::DroppedOffline`].
    pub const DROPPED_OFFLINE: u32 = ViolationKind::DroppedOffline.wire();
    /// The highest kind.
    pub const LAST: u32 = DROPPED_OFFLINE;
}

plain_group! {
    /// What CPU hotplug did during one design's phase
    /// ([`DesignResults::hotplug`]).
    pub struct HotplugCounts {
        /// vCPUs the guest took offline.
        pub offlines: u64,
        /// vCPUs it brought back online.
        pub onlines: u64,
        /// Requests refused (the boot vCPU, or fewer than two would stay online).
        pub refused: u64,
        /// Tasks moved off dying vCPUs.
        pub tasks_moved: u64,
        /// Targets left out of a call's mask because they were offline.
        pub skipped_targets: u64,
        /// `smp_call_function_single()` calls that failed because the target
        /// was offline (the error the caller counted).
        pub single_offline_errors: u64,
        /// Callbacks a dying vCPU ran in its flush (queued before it left).
        pub flushed_callbacks: u64,
        /// csds a dying vCPU dropped unrun (`no-dying-flush` only).
        pub dropped_csds: u64,
    }
}

/// One recorded invariant violation.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ViolationRecord {
    /// A [`ViolationKind`] code ([`violation`]).
    pub kind: u32,
    /// The target CPU concerned.
    pub cpu: u32,
    /// Request id.
    pub request: u64,
    /// TSC cycles since the design's phase started.
    pub cycles: u64,
}

plain_group! {
    /// The counters of one design's phase that the report prints as they are
    /// (JSON: flat in `designs[]`, one key per field). A new per-design counter
    /// is a field here (the guest sets it in `workload/phase.rs`) and a row in
    /// the VMM's design table: the VMM copies, validates and serialises the
    /// group as a whole.
    pub struct DesignCounts {
        /// Cross calls completed.
        pub calls: u64,
        /// Callbacks run.
        pub callbacks: u64,
        /// Invariant violations.
        pub violations: u64,
        /// Waits during which the waiting task was switched out.
        pub waits_preempted: u64,
        /// Waits that resumed on another vCPU.
        pub waits_migrated: u64,
        /// Extra bytes each task carries for this design.
        pub mask_bytes_per_task: u64,
        /// Stack bytes one call costs for the mask (stack design), at this
        /// guest's CPU count.
        pub stack_bytes_per_call: u64,
        /// Mask allocations.
        pub mask_allocs: u64,
        /// Mask frees.
        pub mask_frees: u64,
        /// alloc-in-path allocation failures that fell back to the pinned wait.
        pub fallbacks: u64,
        /// csd-lock waits that exceeded the watchdog threshold.
        pub csd_watchdog_fires: u64,
        /// Requests the checker could not track (table full), plus tasks the
        /// phase could not create.
        pub unchecked: u64,
        /// Tasks created in the phase.
        pub tasks_created: u64,
    }
}

plain_group! {
    /// The paravirtual counters of one design's phase (JSON
    /// `designs[].pv_counts`).
    pub struct PvCounts {
        /// Send-IPI hypercalls made.
        pub send_ipi_calls: u64,
        /// Directed yields (sched-yield hypercalls) made.
        pub yields: u64,
        /// Of those, yields that ended an injected pause early.
        pub yields_effective: u64,
        /// Shootdown targets deferred (flush-defer).
        pub deferrals: u64,
        /// Deferred callbacks run by their targets.
        pub deferred_runs: u64,
        /// Of those committed, run at the target's next observable action (a
        /// callback, tick or task switch drains first) rather than in the
        /// FLUSH_DEFER interrupt: the host let the vCPU run before taking it.
        pub deferred_not_first: u64,
        /// csd waits that saw their target preempted.
        pub waits_on_preempted: u64,
        /// Their total time from the first sighting to the wait's end (cycles).
        pub preempted_wait_cycles: u64,
        /// Of those, seen through KVM's steal-time flag.
        pub preempted_seen_kvm: u64,
        /// Of those, seen through ipivirt's PV state.
        pub preempted_seen_ipivirt: u64,
    }
}

/// Results of one design's phase: plain-data groups, each copied and
/// reported as a whole.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DesignResults {
    /// Non-zero once written.
    pub valid: u32,
    /// The [`Design`] code.
    pub design: u32,
    /// The counters reported as they are.
    pub counts: DesignCounts,
    /// Cycles from phase start to the first violation (u64::MAX: none).
    pub first_violation_cycles: u64,
    /// The total creation time of [`DesignCounts::tasks_created`] in cycles.
    pub task_create_cycles: u64,
    /// Length of the phase in cycles.
    pub phase_cycles: u64,
    /// [`pv`] features of the phase.
    pub pv: u32,
    /// Those served by KVM's mechanism (the rest: ipivirt's).
    pub pv_kvm: u32,
    /// The PV counters.
    pub pv_counts: PvCounts,
    /// Cross-call latency (cycles, entry to return; wait=true).
    pub call_latency: Histogram,
    /// Latency probe during the phase.
    pub sched_latency: Histogram,
    /// The first violations.
    pub violation_log: [ViolationRecord; 8],
    /// CPU hotplug during the phase.
    pub hotplug: HotplugCounts,
    /// The tasks the phase's workload spawned, by kind.
    pub shape: ShapeCounts,
    /// How the phase ended: quiesced, or stalled (and with what).
    pub phase_end: PhaseEnd,
    /// Memory measured from the guest allocator during the phase.
    pub memory: MemoryResults,
    /// The preempt-off tracer's figures of the phase.
    pub preempt_off: PreemptOffResults,
    /// The probe's lateness split into arrival and dispatch.
    pub probe_split: ProbeSplit,
}

/// [`PhaseEnd::status`] values.
pub mod phase_status {
    /// Every task the phase started finished and every vCPU drained its
    /// call queue: the end-of-phase checks ran.
    pub const QUIESCED: u32 = 1;
    /// The phase could not quiesce within its bound: its figures stand, the
    /// end-of-phase checks did not run, and no later phase ran.
    pub const STALLED: u32 = 2;
    /// Not run: an earlier phase stalled (the slot holds nothing else).
    pub const NOT_RUN: u32 = 3;
}

/// Stalled tasks recorded per phase ([`PhaseEnd::stalled`]).
pub const STALL_RECORDS: usize = 8;

/// [`StalledTask::waits_on`] when the task is not in a csd wait.
pub const NO_WAIT: u32 = u32::MAX;

/// [`StalledTask::state`] values.
pub mod task_state {
    /// Queued, waiting for its CPU.
    pub const RUNNABLE: u32 = 0;
    /// On its CPU.
    pub const RUNNING: u32 = 1;
    /// Asleep until a deadline.
    pub const SLEEPING: u32 = 2;
    /// Exited, not yet freed.
    pub const DEAD: u32 = 3;
}

/// A task of a phase still alive when its quiescence bound ran out.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StalledTask {
    /// Task id.
    pub id: u64,
    /// Task name (UTF-8, NUL-padded).
    pub name: [u8; 16],
    /// The vCPU it runs or is queued on.
    pub cpu: u32,
    /// A [`task_state`] value.
    pub state: u32,
    /// The vCPU whose csd it is waiting for ([`NO_WAIT`]: none).
    pub waits_on: u32,
    /// Zero.
    pub reserved: u32,
}

impl StalledTask {
    /// An unused record (no task, waiting on nothing).
    pub const EMPTY: StalledTask = StalledTask {
        id: 0,
        name: [0; 16],
        cpu: 0,
        state: 0,
        waits_on: NO_WAIT,
        reserved: 0,
    };
}

/// The end of one design's phase (its isolation from the next one): the
/// next phase starts only once every task of this one finished, so a
/// phase that cannot quiesce is reported here instead of as violations.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PhaseEnd {
    /// A [`phase_status`] value.
    pub status: u32,
    /// Tasks of the phase still alive at the bound; the first
    /// [`STALL_RECORDS`] are in `stalled`.
    pub stalled_tasks: u32,
    /// vCPUs whose call queue the drain barrier found not drained at the
    /// bound.
    pub undrained_vcpus: u32,
    /// The first of them (u32::MAX: none).
    pub first_undrained: u32,
    /// Cycles from the phase's end to quiescence (or to the give-up).
    pub quiesce_cycles: u64,
    /// The bound in cycles.
    pub bound_cycles: u64,
    /// The stalled tasks recorded.
    pub stalled: [StalledTask; STALL_RECORDS],
}

plain_group! {
    /// Memory one design's phase used, measured from the guest allocator's own
    /// counter (the bytes it reserves, size-class rounding included), not
    /// computed from the mask size.
    pub struct MemoryResults {
        /// Bytes the allocator reserved for the per-task allocations the
        /// design's task-creation hook made in the phase.
        pub hook_bytes: u64,
        /// Bytes the allocator got back from the design's task-exit hook.
        pub hook_freed_bytes: u64,
        /// Task creations that ran the hook in the phase.
        pub hook_tasks: u64,
        /// Of those, creations the hook refused (its allocation failed,
        /// injected or real): the task was not created.
        pub hook_failures: u64,
        /// Size of the pointer-sized field every task carries in every design
        /// (`Task::hook_slot`, the series' addition to `task_struct`).
        pub task_field_bytes: u64,
        /// Deepest stack the wait used below the design dispatch, in bytes
        /// (measured from addresses of locals; 0: no waiting call).
        pub wait_stack_bytes: u64,
        /// The allocator's bytes in use when the phase started.
        pub heap_before: u64,
        /// The same after the phase quiesced (equal to `heap_before` unless
        /// something leaked or a cfd was allocated on a first call).
        pub heap_after: u64,
    }
}

plain_group! {
    /// The tasks one phase spawned, by kind: what the guest really started
    /// for `--issuers-per-cpu`, `--hogs-per-cpu` and `--initiators`.
    pub struct ShapeCounts {
        /// IPI-issuing tasks created.
        pub issuers: u32,
        /// CPU-bound tasks that send no IPI created.
        pub hogs: u32,
    }
}

// SAFETY: repr(C) of two u32: no padding.
unsafe impl Pod for ShapeCounts {}

// SAFETY: repr(C) of u32 pairs, u64s, Pod histograms and Pod records; the
// size assert pins the layout without padding.
unsafe impl Pod for DesignResults {}
// SAFETY: two u32 then two u64: no padding.
unsafe impl Pod for ViolationRecord {}
// SAFETY: u64, u8 array and u32s, sizes asserted below: no padding.
unsafe impl Pod for StalledTask {}
// SAFETY: u32s, u64s and Pod records, size asserted below: no padding.
unsafe impl Pod for PhaseEnd {}
// SAFETY: u64s only.
unsafe impl Pod for MemoryResults {}
// SAFETY: repr(C) of u64s: no padding.
unsafe impl Pod for HotplugCounts {}
// SAFETY: repr(C) of u64s: no padding.
unsafe impl Pod for DesignCounts {}
// SAFETY: repr(C) of u64s: no padding.
unsafe impl Pod for PvCounts {}
const _: () = assert!(
    size_of::<DesignResults>()
        == 8 + size_of::<DesignCounts>()
            + 3 * 8
            + 8
            + size_of::<PvCounts>()
            + 2 * size_of::<Histogram>()
            + 8 * size_of::<ViolationRecord>()
            + size_of::<HotplugCounts>()
            + size_of::<ShapeCounts>()
            + size_of::<PhaseEnd>()
            + size_of::<MemoryResults>()
            + size_of::<PreemptOffResults>()
            + size_of::<ProbeSplit>()
);
const _: () = assert!(size_of::<StalledTask>() == 40);
const _: () = assert!(size_of::<PhaseEnd>() == 32 + STALL_RECORDS * 40);
const _: () = assert!(size_of::<MemoryResults>() == 64);
const _: () = assert!(size_of::<DesignCounts>() == 13 * 8);
const _: () = assert!(size_of::<PvCounts>() == 10 * 8);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{check_set, UnknownValue};

    #[test]
    fn test_violation_kind_roundtrip() {
        check_set::<ViolationKind>(0, "NotRun");
        assert_eq!(violation::NOT_RUN, 1);
        assert_eq!(violation::DEFERRED_LATE, 7);
        assert_eq!(
            ViolationKind::try_from(violation::LOST),
            Ok(ViolationKind::Lost)
        );
        assert_eq!(ViolationKind::Lost.name(), "lost");
    }

    #[test]
    fn test_design_roundtrip_and_names() {
        check_set::<Design>(7, "Upstream");
        for (code, d) in Design::ALL.into_iter().enumerate() {
            assert_eq!(d as usize, code, "codes are the ALL indexes");
        }
        assert_eq!(
            Design::try_from(7),
            Err(UnknownValue {
                set: "design",
                value: 7
            })
        );
        assert_eq!(Design::TaskLocal.name(), "task-local");
        assert_eq!("alloc-in-path".parse(), Ok(Design::AllocInPath));
        assert!(!Design::UnsafePercpu.expected_safe() && Design::Stack.expected_safe());
        assert!(!Design::FreeCsdOffline.expected_safe() && !Design::NoDyingFlush.expected_safe());
        assert_eq!("no-dying-flush".parse(), Ok(Design::NoDyingFlush));
        assert_eq!(violation::LAST, 9);
    }
}
