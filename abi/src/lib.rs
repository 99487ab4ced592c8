//! The contract between the ipivirt VMM and its guest micro-kernel.
//!
//! Both sides compile this crate: the guest (`no_std`, for the host target)
//! and the VMM. Nothing here is redefined anywhere else: guest-physical
//! layout, I/O ports, the status codes written to the status port, and the
//! shared control/results page.
//!
//! The shared page is plain `#[repr(C)]` data made only of integers and
//! arrays of integers, so every bit pattern is a valid value ([`Pod`]).
//! The VMM treats everything the guest wrote as untrusted: it copies the
//! page out and checks it with the validation helpers here before using any
//! count or length in it.
#![cfg_attr(not(test), no_std)]

use core::mem::size_of;

pub mod hist;
pub use hist::Histogram;

/// Version of this contract; bumped on every layout change. The VMM writes
/// it into [`Control::abi_version`], the guest refuses a mismatch and echoes
/// it in [`Results::abi_version`].
pub const ABI_VERSION: u32 = 6;

/// [`Control::magic`]: "IPIVCTRL".
pub const CONTROL_MAGIC: u64 = u64::from_le_bytes(*b"IPIVCTRL");

/// [`Results::magic`]: "IPIVRSLT", written by the guest with its results.
pub const RESULTS_MAGIC: u64 = u64::from_le_bytes(*b"IPIVRSLT");

/// The most vCPUs a guest can have (bounded by the per-vCPU status table
/// and the boot stacks).
pub const MAX_VCPUS: usize = 1024;

/// Guest-physical memory layout. Everything below 4 GiB is identity-mapped
/// with 2 MiB pages by the VMM before the first instruction runs.
pub mod layout {
    use super::{SharedPage, MAX_VCPUS};

    /// The boot GDT the VMM builds (null, 64-bit code, data).
    pub const GDT_ADDR: u64 = 0x1000;
    /// PML4 of the identity map.
    pub const PML4_ADDR: u64 = 0x2000;
    /// The single PDPT of the identity map.
    pub const PDPT_ADDR: u64 = 0x3000;
    /// Four page directories (one per GiB), 2 MiB pages.
    pub const PD_ADDR: u64 = 0x4000;
    /// How much the identity map covers.
    pub const IDENTITY_MAP_SIZE: u64 = 4 << 30;
    /// The shared control/results area ([`SharedPage`]).
    pub const SHARED_ADDR: u64 = 0x10_0000;
    /// Size of [`SharedPage`].
    pub const SHARED_SIZE: u64 = core::mem::size_of::<SharedPage>() as u64;
    /// Where the guest image is linked (2 MiB aligned, see guest/link.ld).
    pub const IMAGE_ADDR: u64 = 0x20_0000;
    /// The guest image must end below this address.
    pub const IMAGE_LIMIT: u64 = BOOT_STACKS_ADDR;
    /// Per-vCPU boot stacks: vCPU `i` starts with `rsp = boot_stack_top(i)`.
    pub const BOOT_STACKS_ADDR: u64 = 0x100_0000;
    /// Size of one boot stack.
    pub const BOOT_STACK_SIZE: u64 = 0x4000;
    /// Per-vCPU results ([`VcpuResults`](super::VcpuResults)), vCPU `i` at
    /// `VCPU_RESULTS_ADDR + i * size_of::<VcpuResults>()`.
    pub const VCPU_RESULTS_ADDR: u64 = BOOT_STACKS_ADDR + MAX_VCPUS as u64 * BOOT_STACK_SIZE;
    /// Room reserved for the per-vCPU results.
    pub const VCPU_RESULTS_SIZE: u64 = 8 << 20;
    /// The user window: 2 MiB pages the VMM maps user-accessible (with the
    /// guest image, whose code user tasks run), for user-mode task stacks.
    pub const USER_WINDOW_ADDR: u64 = VCPU_RESULTS_ADDR + VCPU_RESULTS_SIZE;
    /// Size of the user window.
    pub const USER_WINDOW_SIZE: u64 = 32 << 20;
    /// Per-CPU areas: each vCPU's interrupt stacks and boot task live at
    /// fixed addresses, so bringing up a vCPU takes no lock (1024 vCPUs
    /// contending for the heap lock on 2 host CPUs made boot crawl).
    pub const PERCPU_AREA_ADDR: u64 = USER_WINDOW_ADDR + USER_WINDOW_SIZE;
    /// Size of one vCPU's area.
    pub const PERCPU_AREA_SIZE: u64 = 32 << 10;
    /// The ipivirt PV state area: one [`PvVcpuState`](super::PvVcpuState)
    /// per vCPU, written by the VMM while the guest runs (see [`super::pv`]).
    pub const PV_STATE_ADDR: u64 = PERCPU_AREA_ADDR + MAX_VCPUS as u64 * PERCPU_AREA_SIZE;
    /// Room reserved for the PV state area.
    pub const PV_STATE_SIZE: u64 = 2 << 20;
    /// First byte after the fixed layout: the guest heap starts here.
    pub const FREE_MEM_ADDR: u64 = PV_STATE_ADDR + PV_STATE_SIZE;

    /// Guest-physical address of vCPU `index`'s PV state.
    pub const fn pv_state_addr(index: u32) -> u64 {
        PV_STATE_ADDR + index as u64 * core::mem::size_of::<super::PvVcpuState>() as u64
    }

    const _: () = assert!(
        MAX_VCPUS as u64 * core::mem::size_of::<super::PvVcpuState>() as u64 <= PV_STATE_SIZE
    );

    /// vCPU `index`'s per-CPU area.
    pub const fn percpu_area(index: u32) -> u64 {
        PERCPU_AREA_ADDR + index as u64 * PERCPU_AREA_SIZE
    }

    /// Offset of the VIF page in a per-CPU area: its last page.
    pub const VIF_PAGE_OFFSET: u64 = PERCPU_AREA_SIZE - 0x1000;

    /// vCPU `index`'s VIF page: the virtual interrupt flag (byte 0), its
    /// pending bit (byte 1) and the page-fault address (+8) of the PVM
    /// host's native mode (see [`super::guest_mode`]). Page-aligned,
    /// private to that vCPU; the VMM reads it for its register dumps.
    pub const fn vif_page(index: u32) -> u64 {
        percpu_area(index) + VIF_PAGE_OFFSET
    }

    const _: () = assert!(PERCPU_AREA_ADDR % 0x1000 == 0 && PERCPU_AREA_SIZE % 0x1000 == 0);

    /// Guest-physical address of vCPU `index`'s results.
    pub const fn vcpu_results_addr(index: u32) -> u64 {
        VCPU_RESULTS_ADDR + index as u64 * core::mem::size_of::<super::VcpuResults>() as u64
    }

    const _: () = assert!(
        MAX_VCPUS as u64 * core::mem::size_of::<super::VcpuResults>() as u64 <= VCPU_RESULTS_SIZE
    );

    /// Initial stack pointer of vCPU `index` (16-byte aligned).
    pub const fn boot_stack_top(index: u32) -> u64 {
        BOOT_STACKS_ADDR + (index as u64 + 1) * BOOT_STACK_SIZE
    }

    const _: () = assert!(SHARED_ADDR + SHARED_SIZE <= IMAGE_ADDR);
}

/// Interrupt vectors the guest uses (the VMM sends some with KVM_SIGNAL_MSI).
pub mod vector {
    /// Local APIC timer: the scheduler tick and sleeper wake-ups.
    pub const TIMER: u8 = 0xf0;
    /// Reschedule IPI: look at the run queue (a task was queued or
    /// migrated here).
    pub const RESCHEDULE: u8 = 0xf1;
    /// Cross-call IPI: run the queued call_single_data callbacks.
    pub const CALL_FUNCTION: u8 = 0xf2;
    /// Raw IPI ping-pong of the `floor` measurement (no cross-call layer).
    pub const FLOOR: u8 = 0xf3;
    /// flush-defer: the VMM sends it (KVM_SIGNAL_MSI) to a vCPU it resumes
    /// whose `preempted` state a caller marked with
    /// [`pv::STATE_FLUSH`](super::pv::STATE_FLUSH): the highest vector in
    /// use, so it is the first thing the vCPU runs.
    pub const FLUSH_DEFER: u8 = 0xfe;
    /// Spurious interrupt vector (SVR).
    pub const SPURIOUS: u8 = 0xff;
}

/// System call numbers (rax at `syscall`; arguments in rdi, rsi, rdx).
pub mod syscall {
    /// Give up the CPU.
    pub const YIELD: u64 = 0;
    /// End the calling task.
    pub const EXIT: u64 = 1;
    /// Sleep rdi microseconds.
    pub const SLEEP_US: u64 = 2;
    /// Returns the vCPU the task runs on.
    pub const GETCPU: u64 = 3;
    /// Reports a CPL3 calibration result (rdi = cycles per 1024 iterations).
    pub const CALIBRATION: u64 = 4;
    /// Returns the TSC deadline at which the workload ends.
    pub const WORKLOAD_END: u64 = 5;
    /// A TLB-shootdown-like cross call: `on_each_cpu_cond_mask()` to a random
    /// subset of vCPUs (rdi seeds the choice), waiting.
    pub const SHOOTDOWN: u64 = 6;
    /// A synchronous single-target call to the next vCPU.
    pub const PING: u64 = 7;
    /// An asynchronous single-target call to a random vCPU (rdi seeds it).
    pub const ASYNC_CALL: u64 = 8;
    /// One torture primitive, drawn by weight (rdi seeds the draws).
    pub const TORTURE: u64 = 9;
}

/// How the guest kernel runs ([`Control::guest_mode`] asks,
/// [`Results::mode`] and [`VcpuStatus::mode`] say what ran).
pub mod guest_mode {
    /// Ask: the PVM host's native mode where the VMM saw the host offer it,
    /// the plain kernel everywhere else.
    pub const AUTO: u32 = 0;
    /// An ordinary x86-64 kernel at CPL0 (emulated on PVM hosts).
    pub const PLAIN: u32 = 1;
    /// The PVM host's native mode: kernel code runs on the hardware at CPL3
    /// with a virtual interrupt flag (see `../shared/design/native-mode.md`).
    pub const PVM_NATIVE: u32 = 2;

    /// The name reports use.
    pub const fn name(mode: u32) -> &'static str {
        match mode {
            AUTO => "auto",
            PLAIN => "plain",
            PVM_NATIVE => "pvm-native",
            _ => "unknown",
        }
    }
}

/// Why the guest did not run in native mode although it was asked to
/// ([`Results::native_error`]).
pub mod native_error {
    /// None: native mode ran, or was not asked for.
    pub const NONE: u32 = 0;
    /// The host signature MSR did not read "PVM" (or raised #GP).
    pub const NOT_DETECTED: u32 = 1;
    /// The switch MSR write raised #GP.
    pub const SWITCH_FAULTED: u32 = 2;
    /// After the switch, CS did not read RPL 3 (still emulated at CPL0).
    pub const STILL_CPL0: u32 = 3;
    /// After the switch, the calibration loop was still slow (emulated).
    pub const STILL_EMULATED: u32 = 4;

    /// What each code means, for reports.
    pub const fn describe(code: u32) -> &'static str {
        match code {
            NONE => "none",
            NOT_DETECTED => "the host's PVM signature MSR (0x4b564d11) did not read \"PVM\"",
            SWITCH_FAULTED => "the switch to native mode (wrmsr 0x4b564d10) raised #GP",
            STILL_CPL0 => "after the switch the kernel still ran at CPL0 (CS RPL 0)",
            STILL_EMULATED => "after the switch kernel code was still emulated (slow loop)",
            _ => "unknown",
        }
    }
}

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

/// I/O ports the guest writes to. The discriminants are the port numbers.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Console: bytes of text (`out` or `rep outsb`), printed by the VMM
    /// line by line with a vCPU prefix.
    Console = 0x3f8,
    /// Status: a 32-bit [`GuestStatus`] code.
    Status = 0xf4,
    /// The ipivirt PV hypercall: a 32-bit `in` after filling the request
    /// in the caller's [`PvVcpuState`]; the value read is the result
    /// (see [`pv`]).
    Hypercall = 0xf8,
}

impl TryFrom<u16> for Port {
    type Error = u16;
    fn try_from(port: u16) -> Result<Self, u16> {
        match port {
            0x3f8 => Ok(Port::Console),
            0xf4 => Ok(Port::Status),
            0xf8 => Ok(Port::Hypercall),
            other => Err(other),
        }
    }
}

/// What a 32-bit write to [`Port::Status`] means.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStatus {
    /// Every vCPU is online; the guest goes on (boot-time mark).
    AllOnline = 1,
    /// Results are in the shared page; the guest has finished.
    Done = 2,
    /// A Rust panic; [`Results::panic`] says where and why.
    Panic = 3,
    /// A CPU exception; [`Results::exception`] says which and where.
    Exception = 4,
    /// The BSP has set up what every CPU shares (heap, IDT): start the APs.
    StartAps = 5,
}

impl TryFrom<u32> for GuestStatus {
    type Error = u32;
    fn try_from(code: u32) -> Result<Self, u32> {
        match code {
            1 => Ok(GuestStatus::AllOnline),
            2 => Ok(GuestStatus::Done),
            3 => Ok(GuestStatus::Panic),
            4 => Ok(GuestStatus::Exception),
            5 => Ok(GuestStatus::StartAps),
            other => Err(other),
        }
    }
}

/// Hidden fault injection into the guest, so tests can prove that the VMM
/// handles each failure mode ([`Control::test_hook`]).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestHook {
    /// Normal run.
    None = 0,
    /// The hooked vCPU panics after boot.
    Panic = 1,
    /// The hooked vCPU triple-faults (an exception with no usable IDT).
    TripleFault = 2,
    /// The hooked vCPU spins forever with interrupts off: the watchdog fires.
    Hang = 3,
    /// The guest writes a wrong [`Results::magic`].
    BadResultsMagic = 4,
    /// The guest reports more vCPUs online than exist.
    BadOnlineCount = 5,
    /// A user task reads kernel-only memory (a page fault from CPL3).
    UserFault = 6,
    /// The hooked vCPU (use the BSP) scribbles seeded random bytes over
    /// the results block (all but its magic and version), the status
    /// entries and the per-vCPU results, then reports Done as usual.
    Garbage = 7,
    /// The hooked vCPU writes [`FLOOD_BYTES`] of console output without a
    /// newline, then goes on normally.
    ConsoleFlood = 8,
    /// The hooked AP halts for good before it comes online (a vCPU that
    /// ends early): the BSP waits for it until the watchdog fires.
    HaltEarly = 9,
    /// The hooked AP reports [`GuestStatus::Done`] itself, which only the
    /// BSP may do, then halts for good.
    DoneFromAp = 10,
    /// The hooked AP comes online, waits until the workload has run for
    /// half its duration, then triple-faults while the others run.
    TripleFaultLate = 11,
    /// Test-only fault in the guest's invariant checker: it records no
    /// violation, so a run of `unsafe-percpu` must then go uncaught (proving
    /// that the test which requires the catch can fail).
    BrokenChecker = 12,
    /// The hooked vCPU makes an ipivirt PV hypercall with an unknown
    /// operation: the VMM must stop the run with a clear error.
    BadHypercall = 13,
}

/// Console bytes written by [`TestHook::ConsoleFlood`].
pub const FLOOD_BYTES: usize = 1 << 20;

impl TryFrom<u32> for TestHook {
    type Error = u32;
    fn try_from(code: u32) -> Result<Self, u32> {
        Ok(match code {
            0 => TestHook::None,
            1 => TestHook::Panic,
            2 => TestHook::TripleFault,
            3 => TestHook::Hang,
            4 => TestHook::BadResultsMagic,
            5 => TestHook::BadOnlineCount,
            6 => TestHook::UserFault,
            7 => TestHook::Garbage,
            8 => TestHook::ConsoleFlood,
            9 => TestHook::HaltEarly,
            10 => TestHook::DoneFromAp,
            11 => TestHook::TripleFaultLate,
            12 => TestHook::BrokenChecker,
            13 => TestHook::BadHypercall,
            other => return Err(other),
        })
    }
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

/// Written by the VMM before the first vCPU runs; read-only for the guest.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Control {
    /// [`CONTROL_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Number of vCPUs the VMM created (`nr_cpu_ids` of the guest).
    pub nr_vcpus: u32,
    /// Seeds every random choice of the guest.
    pub seed: u64,
    /// TSC frequency in kHz as KVM reports it (0 if unknown).
    pub tsc_khz: u64,
    /// Guest RAM size in bytes, starting at guest-physical 0.
    pub mem_size: u64,
    /// A [`TestHook`] code.
    pub test_hook: u32,
    /// The vCPU the test hook fires on.
    pub test_hook_vcpu: u32,
    /// A [`Workload`] code: what the guest runs after boot.
    pub workload: u32,
    /// [`pv`] feature bits the guest enables for the whole run
    /// (`STEAL_TIME`, `PREEMPTED`); the others are per phase (`phase_pv`).
    pub pv_flags: u32,
    /// Measured time of the workload, in microseconds.
    pub duration_us: u64,
    /// Scheduler tick in Hz (0: the guest picks one from its calibration).
    pub tick_hz: u32,
    /// Latency probe period in microseconds (0: no probe).
    pub probe_period_us: u32,
    /// Forced task migration: chance per tick, in 1/65536 (0: off).
    pub forced_migration: u32,
    /// Workload tasks per vCPU.
    pub tasks_per_cpu: u32,
    /// Number of entries used in `designs`.
    pub nr_designs: u32,
    /// [`Design`] codes, run one after the other.
    pub designs: [u32; MAX_DESIGNS],
    /// Guest-side forced preemption at each spin of a preemptible wait:
    /// chance in 1/65536.
    pub guest_preempt_prob: u32,
    /// Injected allocation failures of the alloc-in-path design, in 1/65536.
    pub alloc_fail_prob: u32,
    /// csd-lock-wait watchdog threshold in microseconds (0:
    /// [`DEFAULT_CSD_WATCHDOG_US`]).
    pub csd_watchdog_us: u32,
    /// Relative weights of the torture primitives (index: [`torture`]);
    /// all zero means equal weights.
    pub torture_weights: [u8; torture::COUNT],
    /// [`pv`] features served by KVM's own mechanism (the VMM sets them from
    /// its host probe); the others use ipivirt's.
    pub pv_kvm: u32,
    /// Non-zero: the KVM hypercall instruction is `vmmcall` (AMD).
    pub pv_amd: u32,
    /// [`pv`] features of each design phase (index as `designs`), on top
    /// of the global `pv_flags`.
    pub phase_pv: [u32; MAX_DESIGNS],
    /// The [`guest_mode`] asked for (AUTO, PLAIN or PVM_NATIVE).
    pub guest_mode: u32,
    /// Non-zero: the VMM saw the host offer the PVM native mode (its
    /// `/dev/kvm` comes from the `kvm_pvm` module).
    pub host_pvm: u32,
    /// Room for later scenario fields; zero.
    pub reserved: [u64; 41],
}

/// How many designs one run can compare.
pub const MAX_DESIGNS: usize = 8;

/// The IPI wait-mask designs ([`Control::designs`]).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Design {
    /// Linux before the series: the per-CPU `cfd->cpumask`, preemption
    /// disabled from queueing through the last wait.
    Upstream = 0,
    /// The series: a task-local mask (inside the pointer-sized field when it
    /// fits, else allocated at task creation); the final wait is preemptible.
    TaskLocal = 1,
    /// The mask is a local of the caller; preemptible wait.
    Stack = 2,
    /// The mask is allocated per call; on failure the upstream pinned wait.
    AllocInPath = 3,
    /// Wrong on purpose: the per-CPU mask with a preemptible wait.
    UnsafePercpu = 4,
}

impl Design {
    /// Every design, in code order.
    pub const ALL: [Design; 5] = [
        Design::Upstream,
        Design::TaskLocal,
        Design::Stack,
        Design::AllocInPath,
        Design::UnsafePercpu,
    ];

    /// The name used on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Design::Upstream => "upstream",
            Design::TaskLocal => "task-local",
            Design::Stack => "stack",
            Design::AllocInPath => "alloc-in-path",
            Design::UnsafePercpu => "unsafe-percpu",
        }
    }

    /// Whether the design must never violate the invariants.
    pub const fn expected_safe(self) -> bool {
        !matches!(self, Design::UnsafePercpu)
    }
}

impl TryFrom<u32> for Design {
    type Error = u32;
    fn try_from(code: u32) -> Result<Self, u32> {
        Design::ALL.get(code as usize).copied().ok_or(code)
    }
}

/// [`ViolationRecord::kind`] values.
pub mod violation {
    /// The caller returned before a target ran the callback (under-wait).
    pub const NOT_RUN: u32 = 1;
    /// A target ran the callback twice.
    pub const RAN_TWICE: u32 = 2;
    /// A callback ran after its (waiting) caller returned.
    pub const RAN_AFTER_RETURN: u32 = 3;
    /// A callback ran on a CPU that was not a target.
    pub const WRONG_CPU: u32 = 4;
    /// A csd was re-initialised while locked.
    pub const CSD_REINIT: u32 = 5;
    /// An asynchronous call never ran on a target by the end of the phase.
    pub const LOST: u32 = 6;
    /// flush-defer: a deferred target was about to run another cross-call
    /// callback with its deferred work still pending.
    pub const DEFERRED_LATE: u32 = 7;
}

/// One recorded invariant violation.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ViolationRecord {
    /// A [`violation`] kind.
    pub kind: u32,
    /// The target CPU concerned.
    pub cpu: u32,
    /// Request id.
    pub request: u64,
    /// TSC cycles since the design's phase started.
    pub cycles: u64,
}

/// Results of one design's phase.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DesignResults {
    /// Non-zero once written.
    pub valid: u32,
    /// The [`Design`] code.
    pub design: u32,
    /// Cross calls completed.
    pub calls: u64,
    /// Callbacks run.
    pub callbacks: u64,
    /// Invariant violations.
    pub violations: u64,
    /// Cycles from phase start to the first violation (u64::MAX: none).
    pub first_violation_cycles: u64,
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
    /// Requests the checker could not track (table full).
    pub unchecked: u64,
    /// Tasks created in the phase.
    pub tasks_created: u64,
    /// Their total creation time in cycles.
    pub task_create_cycles: u64,
    /// Length of the phase in cycles.
    pub phase_cycles: u64,
    /// [`pv`] features of the phase.
    pub pv: u32,
    /// Those served by KVM's mechanism (the rest: ipivirt's).
    pub pv_kvm: u32,
    /// Send-IPI hypercalls made.
    pub pv_send_ipi_calls: u64,
    /// Directed yields (sched-yield hypercalls) made.
    pub pv_yields: u64,
    /// Of those, yields that ended an injected pause early.
    pub pv_yields_effective: u64,
    /// Shootdown targets deferred (flush-defer).
    pub pv_deferrals: u64,
    /// Deferred callbacks run by their targets.
    pub pv_deferred_runs: u64,
    /// Of those committed, run at the target's next observable action (a
    /// callback, tick or task switch drains first) rather than in the
    /// FLUSH_DEFER interrupt: the host let the vCPU run before taking it.
    pub pv_deferred_not_first: u64,
    /// csd waits that saw their target preempted.
    pub waits_on_preempted: u64,
    /// Their total time from the first sighting to the wait's end (cycles).
    pub preempted_wait_cycles: u64,
    /// Of those, seen through KVM's steal-time flag.
    pub preempted_seen_kvm: u64,
    /// Of those, seen through ipivirt's PV state.
    pub preempted_seen_ipivirt: u64,
    /// Cross-call latency (cycles, entry to return; wait=true).
    pub call_latency: Histogram,
    /// Latency probe during the phase.
    pub sched_latency: Histogram,
    /// The first violations.
    pub violation_log: [ViolationRecord; 8],
}

// SAFETY: repr(C) of u32 pairs, u64s, Pod histograms and Pod records; the
// size assert pins the layout without padding.
unsafe impl Pod for DesignResults {}
// SAFETY: two u32 then two u64: no padding.
unsafe impl Pod for ViolationRecord {}
const _: () = assert!(
    size_of::<DesignResults>()
        == 8 + 16 * 8 + 8 + 10 * 8 + 2 * size_of::<Histogram>() + 8 * size_of::<ViolationRecord>()
);

/// What the guest runs after every vCPU is online ([`Control::workload`]).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Nothing: report the boot and finish.
    None = 0,
    /// Only the scheduler and its latency probe, for `duration_us`.
    Idle = 1,
    /// Every vCPU busy-loops for `duration_us`, recording the largest TSC
    /// gap it saw and its steal time: makes host-side preemption visible.
    Spin = 2,
    /// `tasks_per_cpu` CPU-bound user tasks per vCPU, preempted by the
    /// tick, with the probe; [`Results::hogs`] reports their progress.
    Hogs = 3,
    /// Kernel tasks created and exiting in a loop (memory accounting).
    Churn = 4,
    /// One user task per vCPU: synchronous single-target calls to the next
    /// vCPU, once per design.
    Ping = 5,
    /// `tasks_per_cpu` user tasks per vCPU, each broadcasting to a random
    /// subset of vCPUs and waiting, with think time; once per design.
    Shootdown = 6,
    /// The raw x2APIC IPI ping-pong round trip between vCPUs 0 and 1, no
    /// cross-call layer ([`Results::floor`]). `ping` runs measure it first.
    Floor = 7,
    /// scftorture-style: every task draws primitives from a weighted mix
    /// ([`torture`], [`Control::torture_weights`]); callbacks check their
    /// CPU and memory ordering; once per design. (7 is the floor workload.)
    Torture = 8,
}

impl Workload {
    /// Whether the workload runs once per design of [`Control::designs`]
    /// (and the guest writes a [`DesignResults`] for each).
    pub const fn per_design(self) -> bool {
        matches!(
            self,
            Workload::Ping | Workload::Shootdown | Workload::Torture
        )
    }
}

/// The primitives of the torture workload ([`Workload::Torture`]), indexes
/// of [`Control::torture_weights`] and [`Results::torture`].
pub mod torture {
    /// Reschedule IPI to a random vCPU.
    pub const RESCHED: usize = 0;
    /// Single call, no wait.
    pub const SINGLE: usize = 1;
    /// Single call, waiting.
    pub const SINGLE_WAIT: usize = 2;
    /// Single call used as an RPC: the callback writes a reply the caller
    /// checks after the wait.
    pub const SINGLE_RPC: usize = 3;
    /// Many (random subset), no wait.
    pub const MANY: usize = 4;
    /// Many, waiting.
    pub const MANY_WAIT: usize = 5;
    /// All vCPUs, no wait.
    pub const ALL: usize = 6;
    /// All vCPUs, waiting.
    pub const ALL_WAIT: usize = 7;
    /// Number of primitives.
    pub const COUNT: usize = 8;
    /// Names, for reports and the CLI.
    pub const NAMES: [&str; COUNT] = [
        "resched",
        "single",
        "single-wait",
        "single-rpc",
        "many",
        "many-wait",
        "all",
        "all-wait",
    ];
}

impl TryFrom<u32> for Workload {
    type Error = u32;
    fn try_from(code: u32) -> Result<Self, u32> {
        Ok(match code {
            0 => Workload::None,
            1 => Workload::Idle,
            2 => Workload::Spin,
            3 => Workload::Hogs,
            4 => Workload::Churn,
            5 => Workload::Ping,
            6 => Workload::Shootdown,
            7 => Workload::Floor,
            8 => Workload::Torture,
            other => return Err(other),
        })
    }
}

/// Paravirtual features and the ipivirt PV interface.
///
/// Features (bits of [`Control::pv_flags`], [`Control::phase_pv`],
/// [`Control::pv_kvm`] and [`DesignResults::pv`]) each use KVM's mechanism
/// when the host offers it and ipivirt's otherwise:
///
/// | feature | KVM | ipivirt |
/// |---|---|---|
/// | `steal-time` | MSR_KVM_STEAL_TIME | (none: KVM's only) |
/// | `preempted` | steal-time `preempted` byte | [`PvVcpuState::state`] |
/// | `send-ipi` | KVM_HC_SEND_IPI (`vmcall`) | [`OP_SEND_IPI`](pv::OP_SEND_IPI) hypercall |
/// | `sched-yield` | KVM_HC_SCHED_YIELD (`vmcall`) | [`OP_YIELD_TO`](pv::OP_YIELD_TO) hypercall |
/// | `flush-defer` | (KVM flushes in the host: not usable here) | [`STATE_FLUSH`](pv::STATE_FLUSH) |
///
/// The ipivirt interface: vCPU `i` owns a [`PvVcpuState`] at
/// [`layout::pv_state_addr`]. The VMM writes `state`, `seq`, `since_ns` and
/// `preemptions` while it holds the vCPU (injection `pause`, exact) or while
/// an antagonist runs on the vCPU's host CPU (`antagonist`). A hypercall:
/// the vCPU writes `op` and its arguments into its own block, then reads
/// 32 bits from [`Port::Hypercall`]; the value read is the result. A
/// malformed request stops the run with an error.
pub mod pv {
    /// KVM steal time on every vCPU (global).
    pub const STEAL_TIME: u32 = 1 << 0;
    /// Track whether wait targets are preempted (global, and per phase).
    pub const PREEMPTED: u32 = 1 << 1;
    /// Multicast IPIs with one hypercall.
    pub const SEND_IPI: u32 = 1 << 2;
    /// A waiter yields to a preempted target (rate-limited).
    pub const SCHED_YIELD: u32 = 1 << 3;
    /// Shootdowns defer preempted targets instead of waiting for them.
    pub const FLUSH_DEFER: u32 = 1 << 4;
    /// Every feature.
    pub const ALL: u32 = 0x1f;
    /// Feature names, in bit order.
    pub const NAMES: [&str; 5] = [
        "steal-time",
        "preempted",
        "send-ipi",
        "sched-yield",
        "flush-defer",
    ];

    /// [`super::PvVcpuState::state`]: the VMM holds this vCPU.
    pub const STATE_PREEMPTED: u32 = 1 << 0;
    /// Held with interrupts enabled: a deferred flush requested meanwhile
    /// runs (vector FLUSH_DEFER) before anything else when it resumes.
    pub const STATE_DEFERRABLE: u32 = 1 << 1;
    /// A caller deferred work to this vCPU's resume (guest, compare-and-swap
    /// while PREEMPTED and DEFERRABLE are set; the VMM clears the word with
    /// an exchange when it resumes the vCPU and sends FLUSH_DEFER if set).
    pub const STATE_FLUSH: u32 = 1 << 2;

    /// Hypercall: send `vector` to every vCPU in `bitmap` (x2APIC id =
    /// vCPU index) with KVM_SIGNAL_MSI. Result: IPIs sent.
    pub const OP_SEND_IPI: u32 = 1;
    /// Hypercall: directed yield to vCPU `arg`: ends an injected pause of
    /// it early. Result: 1 if a pause was ended, 0 if it was not held.
    pub const OP_YIELD_TO: u32 = 2;

    /// Calls `out` with the name of every feature in `features`, in bit order.
    pub fn names(features: u32, mut out: impl FnMut(&'static str)) {
        for (i, n) in NAMES.iter().enumerate() {
            if features & (1 << i) != 0 {
                out(n);
            }
        }
    }
}

/// One vCPU's ipivirt PV state ([`pv`]), at [`layout::pv_state_addr`].
/// `state`, `seq`, `since_ns`, `preemptions` and `flushes` are the VMM's
/// (the guest only reads them, and sets [`pv::STATE_FLUSH`] in `state`);
/// the request fields are the vCPU's own.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
pub struct PvVcpuState {
    /// [`pv`] `STATE_*` bits.
    pub state: u32,
    /// Incremented when a preemption starts and when it ends (odd: held).
    pub seq: u32,
    /// When the current (or last) preemption started: host ns since the VM
    /// was created.
    pub since_ns: u64,
    /// Preemptions so far.
    pub preemptions: u64,
    /// Resumes at which the VMM sent FLUSH_DEFER.
    pub flushes: u64,
    /// Request: a [`pv`] `OP_*`.
    pub op: u32,
    /// Request: the vector of `OP_SEND_IPI`.
    pub vector: u32,
    /// Request: the target vCPU of `OP_YIELD_TO`.
    pub arg: u64,
    /// Request: the targets of `OP_SEND_IPI`, bit `i` = vCPU `i`.
    pub bitmap: [u64; MAX_VCPUS / 64],
    /// Zero.
    pub reserved: [u64; 2],
}

// SAFETY: repr(C) of u32 pairs and u64s, no padding (size assert).
unsafe impl Pod for PvVcpuState {}
const _: () = assert!(size_of::<PvVcpuState>() == 192);

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

/// Invocations and failed checks of one torture primitive.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TortureCounts {
    /// Times the primitive ran.
    pub invocations: u64,
    /// Failed checks: a callback on a CPU it was not sent to, stale memory
    /// in a callback, a wrong RPC reply.
    pub errors: u64,
}

// SAFETY: two u64, no padding.
unsafe impl Pod for TortureCounts {}

/// Progress of one workload task.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TaskProgress {
    /// Loop iterations done (0: no such task).
    pub iterations: u64,
    /// Bit `c` set: the task was seen running on vCPU `c` (c < 64).
    pub cpus_mask: u64,
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
    /// The [`guest_mode`] the kernel ran in (PLAIN or PVM_NATIVE; 0 before
    /// the BSP chose).
    pub mode: u32,
    /// Why native mode did not run although asked for ([`native_error`]).
    pub native_error: u32,
    /// Platform costs in the running mode, TSC cycles, the best of a few
    /// (0: not measured): one system call round trip from a user task
    /// (the trap into the kernel and the return).
    pub trap_cycles: u64,
    /// One x2APIC ICR write (a reschedule IPI to this vCPU).
    pub icr_cycles: u64,
    /// One x2APIC EOI write.
    pub eoi_cycles: u64,
    /// Room for later results; zero.
    pub reserved: [u64; 245],
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
    /// The [`guest_mode`] this vCPU ran in.
    pub mode: u32,
    /// Native mode: interrupts that arrived between enabling interrupts and
    /// halting, after which the halt was skipped (the idle rollback).
    pub halt_rollbacks: u32,
    /// Room for later counters; zero.
    pub reserved: [u64; 2],
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
}

// SAFETY: two Pod members of equal alignment, no padding.
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

const _: () = assert!(size_of::<Control>() == 512);
const _: () = assert!(size_of::<PanicRecord>() == 664);
const _: () = assert!(size_of::<Results>() == 4056);
const _: () = assert!(size_of::<VcpuStatus>() == 128);

/// Plain old data: `#[repr(C)]`, only integers and arrays of integers, no
/// padding. Any byte string of the right length is a valid value.
///
/// # Safety
/// Implement only for types that satisfy exactly that.
pub unsafe trait Pod: Copy + 'static {
    /// Copies a value out of the front of `bytes` (no alignment needed), or
    /// `None` if `bytes` is too short.
    fn read_from(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked above, `read_unaligned` has no
        // alignment requirement, and the trait's contract says every bit
        // pattern is a valid `Self`.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The bytes of `self`.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Self` has no padding (trait contract), so all
        // `size_of::<Self>()` bytes behind `self` are initialised.
        unsafe {
            core::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>())
        }
    }

    /// The all-zero value.
    fn zeroed() -> Self {
        // SAFETY: the trait contract says every bit pattern is valid.
        unsafe { core::mem::zeroed() }
    }
}

// SAFETY: each is #[repr(C)] of u32/u64 fields and u8/u64 arrays, laid out
// without padding (the size asserts above pin the layout).
unsafe impl Pod for Control {}
// SAFETY: as above.
unsafe impl Pod for PanicRecord {}
// SAFETY: as above.
unsafe impl Pod for Results {}
// SAFETY: as above.
unsafe impl Pod for ExceptionRecord {}
// SAFETY: as above.
unsafe impl Pod for TaskProgress {}
// SAFETY: as above.
unsafe impl Pod for VcpuStatus {}
// SAFETY: as above; a struct of Pod members with no padding between them.
unsafe impl Pod for SharedPage {}

/// A value the guest wrote that breaks the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `results.nr_online`.
    pub field: &'static str,
    /// The value found.
    pub found: u64,
    /// What was expected, in words.
    pub expected: &'static str,
}

impl core::fmt::Display for FieldError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} = {:#x}, expected {}",
            self.field, self.found, self.expected
        )
    }
}

fn check(
    ok: bool,
    field: &'static str,
    found: u64,
    expected: &'static str,
) -> Result<(), FieldError> {
    if ok {
        Ok(())
    } else {
        Err(FieldError {
            field,
            found,
            expected,
        })
    }
}

/// Hog tasks whose progress the results report ([`Results::hogs`]).
pub const MAX_HOGS: usize = 64;

/// The csd-lock-wait watchdog threshold when the control block leaves it 0:
/// 100 ms, far above any healthy wait and well below the VMM's watchdog.
pub const DEFAULT_CSD_WATCHDOG_US: u32 = 100_000;

impl Control {
    /// The csd-lock-wait watchdog threshold in microseconds.
    pub fn csd_watchdog_us(&self) -> u32 {
        match self.csd_watchdog_us {
            0 => DEFAULT_CSD_WATCHDOG_US,
            us => us,
        }
    }

    /// A control block for `nr_vcpus` vCPUs; the other fields zero.
    pub fn new(nr_vcpus: u32) -> Self {
        Control {
            magic: CONTROL_MAGIC,
            abi_version: ABI_VERSION,
            nr_vcpus,
            ..Pod::zeroed()
        }
    }

    /// What the guest checks before trusting the block.
    pub fn validate(&self) -> Result<(), FieldError> {
        check(
            self.magic == CONTROL_MAGIC,
            "control.magic",
            self.magic,
            "CONTROL_MAGIC",
        )?;
        check(
            self.abi_version == ABI_VERSION,
            "control.abi_version",
            self.abi_version.into(),
            "ABI_VERSION",
        )?;
        check(
            (1..=MAX_VCPUS as u32).contains(&self.nr_vcpus),
            "control.nr_vcpus",
            self.nr_vcpus.into(),
            "1..=MAX_VCPUS",
        )
    }
}

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
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_layout_shared_page_fits_below_image() {
        assert_eq!(layout::SHARED_ADDR % 4096, 0);
        assert_eq!(layout::boot_stack_top(0) % 16, 0);
        assert_eq!(
            layout::boot_stack_top(MAX_VCPUS as u32 - 1),
            layout::VCPU_RESULTS_ADDR
        );
        assert_eq!(layout::USER_WINDOW_ADDR % (2 << 20), 0);
        assert_eq!(layout::FREE_MEM_ADDR % (2 << 20), 0);
    }

    #[test]
    fn test_port_roundtrip() {
        for port in [Port::Console, Port::Status, Port::Hypercall] {
            assert_eq!(Port::try_from(port as u16), Ok(port));
        }
        assert_eq!(Port::try_from(0x80), Err(0x80));
    }

    #[test]
    fn test_status_and_hook_roundtrip() {
        for s in [
            GuestStatus::AllOnline,
            GuestStatus::Done,
            GuestStatus::Panic,
        ] {
            assert_eq!(GuestStatus::try_from(s as u32), Ok(s));
        }
        assert_eq!(GuestStatus::try_from(0), Err(0));
        for h in 0..=13 {
            assert_eq!(TestHook::try_from(h).map(|h| h as u32), Ok(h));
        }
        assert_eq!(TestHook::try_from(14), Err(14));
    }

    #[test]
    fn test_pod_read_from_short_buffer_is_none() {
        assert!(Results::read_from(&[0u8; 16]).is_none());
        let r = Results::read_from(&[0xffu8; size_of::<Results>()]).unwrap();
        assert_eq!(r.magic, u64::MAX);
    }

    #[test]
    fn test_workload_roundtrip() {
        for w in [
            Workload::None,
            Workload::Idle,
            Workload::Spin,
            Workload::Hogs,
            Workload::Churn,
            Workload::Ping,
            Workload::Shootdown,
            Workload::Torture,
        ] {
            assert_eq!(Workload::try_from(w as u32), Ok(w));
        }
        assert_eq!(Workload::try_from(99), Err(99));
    }

    #[test]
    fn test_control_validate() {
        assert!(Control::new(4).validate().is_ok());
        let mut c = Control::new(0);
        assert_eq!(c.validate().unwrap_err().field, "control.nr_vcpus");
        c = Control::new(4);
        c.magic = 0;
        assert_eq!(c.validate().unwrap_err().field, "control.magic");
    }

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
    }
}

#[cfg(test)]
mod design_tests {
    use super::*;

    #[test]
    fn test_design_roundtrip_and_names() {
        for d in Design::ALL {
            assert_eq!(Design::try_from(d as u32), Ok(d));
        }
        assert_eq!(Design::try_from(5), Err(5));
        assert_eq!(Design::TaskLocal.name(), "task-local");
        assert!(!Design::UnsafePercpu.expected_safe() && Design::Stack.expected_safe());
    }
}
