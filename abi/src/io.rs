//! What crosses the boundary outside the shared page: the I/O ports the
//! guest writes, the status codes, the interrupt vectors (some sent by the
//! VMM) and the guest's system call numbers.

#[cfg(doc)]
use crate::{pv, PvVcpuState, Results};

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
    /// CPU hotplug: look at this vCPU's hotplug request
    /// ([`PvVcpuState::hotplug_request`](crate::PvVcpuState::hotplug_request)); the VMM sends it (KVM_SIGNAL_MSI)
    /// after writing a request, so that an idle or offline vCPU, which has
    /// no tick to poll in, wakes up and sees it.
    pub const HOTPLUG: u8 = 0xf4;
    /// flush-defer: the VMM sends it (KVM_SIGNAL_MSI) to a vCPU it resumes
    /// whose `preempted` state a caller marked with
    /// [`pv::STATE_FLUSH`](crate::pv::STATE_FLUSH): the highest vector in
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

crate::wire_enum! {
    /// I/O ports the guest writes to. The discriminants are the port numbers.
    pub enum Port: u16, "port" {
        /// Console: bytes of text (`out` or `rep outsb`), printed by the VMM
        /// line by line with a vCPU prefix.
        Console = 0x3f8 => "console",
        /// Status: a 32-bit [`GuestStatus`] code.
        Status = 0xf4 => "status",
        /// The ipivirt PV hypercall: a 32-bit `in` after filling the request
        /// in the caller's [`PvVcpuState`]; the value read is the result
        /// (see [`pv`]).
        Hypercall = 0xf8 => "hypercall",
        /// Console, from memory: a 32-bit `out` of a length (at most
        /// [`CONSOLE_BUFFER_SIZE`](crate::layout::CONSOLE_BUFFER_SIZE)); the
        /// bytes are in the writing vCPU's
        /// [`console_buffer`](crate::layout::console_buffer). One exit per
        /// line where the host cannot batch `rep outsb` (the PVM host's
        /// native mode takes one exit per byte).
        ConsoleBuffer = 0x3f9 => "console-buffer",
        /// Design-phase markers for the trace: the BSP writes a 32-bit
        /// design slot index when that design's phase starts, and the index
        /// with [`PHASE_END`] when it ends (one exit each per phase).
        Phase = 0xf5 => "phase",
    }
}

/// The end flag of a [`Port::Phase`] write.
pub const PHASE_END: u32 = 1 << 31;

crate::wire_enum! {
    /// What a 32-bit write to [`Port::Status`] means.
    pub enum GuestStatus: u32, "guest status" {
        /// Every vCPU is online; the guest goes on (boot-time mark).
        AllOnline = 1 => "all-online",
        /// Results are in the shared page; the guest has finished.
        Done = 2 => "done",
        /// A Rust panic; [`Results::panic`] says where and why.
        Panic = 3 => "panic",
        /// A CPU exception; [`Results::exception`] says which and where.
        Exception = 4 => "exception",
        /// The BSP has set up what every CPU shares (heap, IDT): start the APs.
        StartAps = 5 => "start-aps",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::check_set;

    #[test]
    fn test_port_roundtrip() {
        check_set::<Port>(0x80, "Console");
        assert_eq!(Port::try_from(0x3f8), Ok(Port::Console));
        assert_eq!(Port::Hypercall as u16, 0xf8);
    }

    #[test]
    fn test_status_roundtrip() {
        check_set::<GuestStatus>(0, "finished");
        assert_eq!(GuestStatus::try_from(2), Ok(GuestStatus::Done));
        assert_eq!(GuestStatus::StartAps.name(), "start-aps");
    }
}
