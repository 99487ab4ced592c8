//! What the guest writes: the results block, its records, the per-vCPU
//! status and results, and the shared page that holds them all.

use core::mem::size_of;

use crate::{
    check, torture, Control, DesignResults, FieldError, Histogram, Pod, TortureCounts, ABI_VERSION,
    MAX_DESIGNS, MAX_HOGS, MAX_VCPUS, RESULTS_MAGIC,
};
#[cfg(doc)]
use crate::{layout, GuestStatus};

/// The host kind as the guest's calibration sees it.
pub mod verdict {
    /// Not measured.
    pub const UNKNOWN: u32 = 0;
    /// Kernel code runs at hardware speed.
    pub const HARDWARE: u32 = 1;
    /// Kernel (CPL0) code is emulated: absolute latencies are not
    /// representative.
    pub const CPL0_EMULATED: u32 = 2;
}

/// [`PanicRecord::state`] values. The guest writes the location first and
/// formats the message after, so a vCPU that dies while formatting still
/// leaves the location behind.
pub mod panic_state {
    /// No panic.
    pub const NONE: u32 = 0;
    /// vcpu, file, line and column are valid; the message may not be.
    pub const LOCATION: u32 = 1;
    /// Everything is valid.
    pub const COMPLETE: u32 = 2;
}

/// [`VcpuStatus::state`] values.
pub mod vcpu_state {
    /// Not started (or never reached its entry point).
    pub const OFFLINE: u32 = 0;
    /// Reached `rust_entry` and set itself up.
    pub const ONLINE: u32 = 1;
}

/// Written by the guest.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Results {
    /// [`RESULTS_MAGIC`] once the results are complete.
    pub magic: u64,
    /// The [`ABI_VERSION`] the guest was built with.
    pub abi_version: u32,
    /// vCPUs that came online.
    pub nr_online: u32,
    /// BSP's TSC when it entered Rust.
    pub boot_tsc: u64,
    /// BSP's TSC when it saw the last vCPU online.
    pub all_online_tsc: u64,
    /// Filled on [`GuestStatus::Panic`].
    pub panic: PanicRecord,
    /// Calibration: TSC cycles per 1024 iterations of `dec; jnz` at CPL0.
    pub cpl0_cycles_per_kiter: u64,
    /// The same loop at CPL3 (0 if user mode did not run).
    pub cpl3_cycles_per_kiter: u64,
    /// A [`verdict`] value.
    pub verdict: u32,
    /// Scheduler tick the guest used, in Hz.
    pub tick_hz: u32,
    /// Tasks created, over the whole run.
    pub tasks_created: u64,
    /// Tasks that exited and were freed.
    pub tasks_freed: u64,
    /// Heap bytes in use when the workload ended.
    pub heap_used: u64,
    /// Heap bytes in use before any task was created.
    pub heap_baseline: u64,
    /// TSC at the start of the workload.
    pub workload_start_tsc: u64,
    /// TSC at its end.
    pub workload_end_tsc: u64,
    /// Filled on [`GuestStatus::Exception`].
    pub exception: ExceptionRecord,
    /// Task create/exit pairs completed by the churn workload.
    pub churn_cycles: u64,
    /// Per-task progress of the hog workload (the first [`MAX_HOGS`]).
    pub hogs: [TaskProgress; MAX_HOGS],
    /// Torture workload: per primitive (index: [`torture`]), invocations
    /// and failed checks, over all design phases.
    pub torture: [TortureCounts; torture::COUNT],
    /// The raw IPI round trip (`floor` and `ping` workloads; zero count
    /// otherwise).
    pub floor: FloorResults,
    /// The [`guest_mode`](crate::guest_mode) the kernel ran in (PLAIN or PVM_NATIVE; 0 before
    /// the BSP chose).
    pub mode: u32,
    /// Why native mode did not run although asked for ([`native_error`](crate::native_error)).
    pub native_error: u32,
    /// Platform costs in the running mode, TSC cycles, the best of a few
    /// (0: not measured): one system call round trip from a user task
    /// (the trap into the kernel and the return).
    pub trap_cycles: u64,
    /// One x2APIC ICR write (a reschedule IPI to this vCPU).
    pub icr_cycles: u64,
    /// One x2APIC EOI write.
    pub eoi_cycles: u64,
    /// One `preempt_disable()`/`preempt_enable()` pair with the preempt-off
    /// tracer off, TSC cycles, the best of a few (0: not measured).
    pub preempt_pair_cycles: u64,
    /// The same pair with the tracer on (each pair is one traced section).
    pub preempt_pair_traced_cycles: u64,
    /// Room for later results; zero.
    pub reserved: [u64; 243],
}

/// Where and why the guest panicked.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PanicRecord {
    /// vCPU that panicked.
    pub vcpu: u32,
    /// Source line.
    pub line: u32,
    /// Source column.
    pub column: u32,
    /// Valid bytes in `file`.
    pub file_len: u32,
    /// Valid bytes in `message`.
    pub message_len: u32,
    /// A [`panic_state`] value: how far the record got.
    pub state: u32,
    /// Source file (UTF-8, truncated).
    pub file: [u8; 128],
    /// Formatted panic message (UTF-8, truncated).
    pub message: [u8; 512],
}

/// A CPU exception the guest could not handle.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ExceptionRecord {
    /// Non-zero once written.
    pub valid: u32,
    /// vCPU it happened on.
    pub vcpu: u32,
    /// Exception vector (0..32).
    pub vector: u64,
    /// Error code (0 if the vector has none).
    pub error_code: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// CR2 (page faults).
    pub cr2: u64,
    /// CS at the fault (its low bits are the privilege level).
    pub cs: u64,
    /// Id of the running task (0: none yet).
    pub task_id: u64,
    /// Name of the running task (UTF-8, NUL-padded).
    pub task_name: [u8; 16],
}

/// Progress of one workload task.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TaskProgress {
    /// Loop iterations done (0: no such task).
    pub iterations: u64,
    /// Bit `c` set: the task was seen running on vCPU `c` (c < 64).
    pub cpus_mask: u64,
}

/// The raw x2APIC IPI ping-pong round trip between vCPUs 0 and 1 (TSC
/// cycles), summarised by the guest: a full [`Histogram`] does not fit in
/// the room [`Results`] had left.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FloorResults {
    /// Round trips measured (0: not measured).
    pub count: u64,
    /// Sum of the round trips (wrapping).
    pub sum: u64,
    /// Shortest.
    pub min: u64,
    /// Longest.
    pub max: u64,
    /// Median ([`Histogram::quantile_ppm`]: a bucket's upper end).
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
}

// SAFETY: repr(C) of eight u64: no padding.
unsafe impl Pod for FloorResults {}
const _: () = assert!(size_of::<FloorResults>() == 64);

impl FloorResults {
    /// The summary of `h`.
    pub fn from_histogram(h: &Histogram) -> Self {
        if h.count == 0 {
            return FloorResults::default();
        }
        FloorResults {
            count: h.count,
            sum: h.sum,
            min: h.min,
            max: h.max,
            p50: h.quantile_ppm(500_000),
            p90: h.quantile_ppm(900_000),
            p99: h.quantile_ppm(990_000),
            p999: h.quantile_ppm(999_000),
        }
    }

    /// Checks the summary is consistent (ordered percentiles within
    /// min..=max); a zero count means not measured.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.count == 0 {
            return Ok(());
        }
        let ordered = self.min <= self.p50
            && self.p50 <= self.p90
            && self.p90 <= self.p99
            && self.p99 <= self.p999
            && self.p999 <= self.max;
        check(
            ordered,
            "results.floor",
            self.p50,
            "min <= p50 <= p90 <= p99 <= p999 <= max",
        )
    }
}

/// One vCPU's status, written by that vCPU.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VcpuStatus {
    /// A [`vcpu_state`] value.
    pub state: u32,
    /// x2APIC id read from CPUID leaf 0xB.
    pub apic_id: u32,
    /// TSC when the vCPU came online.
    pub online_tsc: u64,
    /// Its scheduler's counters.
    pub sched: SchedCounts,
    /// Steal time (ns) KVM reported for this vCPU during the workload.
    pub steal_ns: u64,
    /// How often the guest saw KVM's `preempted` flag set for this vCPU.
    pub preempted_seen: u64,
    /// Largest gap between consecutive TSC reads in a busy loop, in cycles.
    pub max_gap_cycles: u64,
    /// `spin` with PV `preempted`: polls in which this vCPU saw the next
    /// vCPU preempted in ipivirt's PV state.
    pub pv_neighbour_preempted: u64,
    /// ... and transitions of it from preempted back to running.
    pub pv_neighbour_resumed: u64,
    /// The [`guest_mode`](crate::guest_mode) this vCPU ran in.
    pub mode: u32,
    /// Native mode: interrupts that arrived between enabling interrupts and
    /// halting, after which the halt was skipped (the idle rollback).
    pub halt_rollbacks: u32,
    /// Room for later counters; zero.
    pub reserved: [u64; 2],
    /// CPU hotplug of this vCPU over the whole run.
    pub hotplug: VcpuHotplug,
}

plain_group! {
    /// One vCPU's scheduler counters ([`VcpuStatus::sched`]), written by the
    /// BSP at the end; the VMM reports them as they are.
    pub struct SchedCounts {
        /// Context switches on this vCPU.
        pub context_switches: u64,
        /// Involuntary switches (a task preempted on return from interrupt).
        pub preemptions: u64,
        /// Tasks that migrated to this vCPU.
        pub migrations_in: u64,
        /// Scheduler timer ticks handled.
        pub ticks: u64,
        /// IPIs this vCPU sent.
        pub ipis_sent: u64,
        /// IPIs this vCPU received.
        pub ipis_received: u64,
    }
}

plain_group! {
    /// One vCPU's CPU hotplug counters ([`VcpuStatus::hotplug`]), written by
    /// the BSP at the end like the other counters.
    pub struct VcpuHotplug {
        /// Times it went offline (dying flush done, halted).
        pub offlines: u32,
        /// Times it came back online.
        pub onlines: u32,
        /// Cross-call IPIs sent to it while it was offline (0 unless the model
        /// is broken; counted by the senders).
        pub ipis_offline: u32,
        /// Tasks moved off it when it went offline.
        pub tasks_moved: u32,
        /// Context switches since it first came back online (it runs tasks
        /// again; 0 if it never came back).
        pub switches_since_online: u64,
        /// Time spent offline, TSC cycles.
        pub offline_cycles: u64,
    }
}

/// Bulky per-vCPU results, at [`layout::vcpu_results_addr`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VcpuResults {
    /// Latency probe: how late (TSC cycles) the periodic high-priority
    /// task ran versus its deadline.
    pub probe: Histogram,
    /// Cross-call latency recorded on this vCPU during the current design
    /// phase (scratch: merged into [`DesignResults::call_latency`]).
    pub calls: Histogram,
    /// The probe's lateness split during the current phase (scratch:
    /// merged into [`DesignResults::probe_split`]).
    pub probe_split: crate::ProbeSplit,
}

// SAFETY: Pod members of equal alignment, no padding.
unsafe impl Pod for VcpuResults {}

/// The shared area at [`layout::SHARED_ADDR`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SharedPage {
    /// Scenario, VMM → guest.
    pub control: Control,
    /// Results, guest → VMM.
    pub results: Results,
    /// Per-vCPU status, indexed by vCPU number.
    pub vcpus: [VcpuStatus; MAX_VCPUS],
    /// Per-design results, in the order of [`Control::designs`].
    pub designs: [DesignResults; MAX_DESIGNS],
}

const _: () = assert!(size_of::<PanicRecord>() == 664);
const _: () = assert!(size_of::<Results>() == 4056);
const _: () = assert!(size_of::<VcpuStatus>() == 160);
const _: () = assert!(size_of::<VcpuHotplug>() == 32);

// SAFETY: each is #[repr(C)] of u32/u64 fields and u8/u64 arrays, laid out
// without padding (the size asserts above pin the layout).
unsafe impl Pod for PanicRecord {}
// SAFETY: as above.
unsafe impl Pod for Results {}
// SAFETY: as above.
unsafe impl Pod for ExceptionRecord {}
// SAFETY: as above.
unsafe impl Pod for TaskProgress {}
// SAFETY: as above.
unsafe impl Pod for VcpuStatus {}
// SAFETY: as above (four u32 then two u64).
unsafe impl Pod for VcpuHotplug {}
// SAFETY: as above; a struct of Pod members with no padding between them.
unsafe impl Pod for SharedPage {}

impl PanicRecord {
    /// The file name, bounded by `file_len` and the buffer (lossy UTF-8
    /// is the caller's business: this only bounds it).
    pub fn file_bytes(&self) -> &[u8] {
        bounded(&self.file, self.file_len)
    }

    /// The message bytes, bounded like [`PanicRecord::file_bytes`].
    pub fn message_bytes(&self) -> &[u8] {
        bounded(&self.message, self.message_len)
    }
}

fn bounded(buf: &[u8], len: u32) -> &[u8] {
    &buf[..(len as usize).min(buf.len())]
}

impl Results {
    /// Checks the header of results the guest says are complete, for a
    /// guest of `nr_vcpus` vCPUs.
    pub fn validate(&self, nr_vcpus: u32) -> Result<(), FieldError> {
        check(
            self.magic == RESULTS_MAGIC,
            "results.magic",
            self.magic,
            "RESULTS_MAGIC",
        )?;
        check(
            self.abi_version == ABI_VERSION,
            "results.abi_version",
            self.abi_version.into(),
            "ABI_VERSION",
        )?;
        check(
            self.nr_online <= nr_vcpus,
            "results.nr_online",
            self.nr_online.into(),
            "at most control.nr_vcpus",
        )?;
        check(
            self.all_online_tsc >= self.boot_tsc,
            "results.all_online_tsc",
            self.all_online_tsc,
            "not before results.boot_tsc",
        )
    }
}

impl VcpuStatus {
    /// Checks one vCPU's status entry (`index` is its vCPU number).
    pub fn validate(&self) -> Result<(), FieldError> {
        check(
            self.state == vcpu_state::OFFLINE || self.state == vcpu_state::ONLINE,
            "vcpus[].state",
            self.state.into(),
            "OFFLINE or ONLINE",
        )?;
        check(
            self.hotplug.onlines <= self.hotplug.offlines,
            "vcpus[].hotplug.onlines",
            self.hotplug.onlines.into(),
            "at most vcpus[].hotplug.offlines (a vCPU comes back only after it left)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_results_validate_rejects_garbage() {
        let mut r = Results::zeroed();
        assert_eq!(r.validate(4).unwrap_err().field, "results.magic");
        r.magic = RESULTS_MAGIC;
        r.abi_version = ABI_VERSION;
        r.nr_online = 4;
        assert!(r.validate(4).is_ok());
        r.nr_online = 5;
        let err = r.validate(4).unwrap_err();
        assert_eq!((err.field, err.found), ("results.nr_online", 5));
        r.nr_online = 4;
        r.boot_tsc = 10;
        assert_eq!(r.validate(4).unwrap_err().field, "results.all_online_tsc");
    }

    #[test]
    fn test_panic_record_lengths_are_bounded() {
        let mut p = PanicRecord::zeroed();
        p.file_len = u32::MAX;
        p.message_len = 3;
        assert_eq!(p.file_bytes().len(), 128);
        assert_eq!(p.message_bytes().len(), 3);
    }

    #[test]
    fn test_vcpu_status_validate() {
        let mut v = VcpuStatus::zeroed();
        assert!(v.validate().is_ok());
        v.state = 7;
        assert_eq!(v.validate().unwrap_err().found, 7);
        v.state = vcpu_state::ONLINE;
        v.hotplug.offlines = 2;
        v.hotplug.onlines = 2;
        assert!(v.validate().is_ok());
        v.hotplug.onlines = 3;
        assert_eq!(v.validate().unwrap_err().field, "vcpus[].hotplug.onlines");
    }
}
