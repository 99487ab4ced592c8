//! What the guest runs after boot, and the torture primitives.

use crate::Pod;
#[cfg(doc)]
use crate::{Control, DesignResults, Results};

crate::wire_enum! {
    /// What the guest runs after every vCPU is online ([`Control::workload`]).
    pub enum Workload: u32, "workload" {
        /// Nothing: report the boot and finish.
        None = 0 => "none",
        /// Only the scheduler and its latency probe, for `duration_us`.
        Idle = 1 => "idle",
        /// Every vCPU busy-loops for `duration_us`, recording the largest TSC
        /// gap it saw and its steal time: makes host-side preemption visible.
        Spin = 2 => "spin",
        /// `shape.hogs_per_cpu` CPU-bound user tasks per vCPU, preempted by
        /// the tick, with the probe; [`Results::hogs`] reports their progress.
        Hogs = 3 => "hogs",
        /// Kernel tasks created and exiting in a loop (memory accounting).
        Churn = 4 => "churn",
        /// One user task per vCPU: synchronous single-target calls to the next
        /// vCPU, once per design.
        Ping = 5 => "ping",
        /// `issuers_per_cpu` user tasks per initiator vCPU, each broadcasting
        /// to a random subset of vCPUs and waiting, with think time, beside
        /// `shape.hogs_per_cpu` hogs per vCPU; once per design.
        Shootdown = 6 => "shootdown",
        /// The raw x2APIC IPI ping-pong round trip between vCPUs 0 and 1, no
        /// cross-call layer ([`Results::floor`]). `ping` runs measure it first.
        Floor = 7 => "floor",
        /// scftorture-style: every task draws primitives from a weighted mix
        /// ([`torture`], [`Control::torture_weights`]); callbacks check their
        /// CPU and memory ordering; once per design. (7 is the floor workload.)
        Torture = 8 => "torture",
    }
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

crate::wire_enum! {
    /// The primitives of the torture workload ([`Workload::Torture`]); their
    /// codes are the indexes of [`Control::torture_weights`] and
    /// [`Results::torture`].
    pub enum TorturePrimitive: u8, "torture primitive" {
        /// Reschedule IPI to a random vCPU.
        Resched = 0 => "resched",
        /// Single call, no wait.
        Single = 1 => "single",
        /// Single call, waiting.
        SingleWait = 2 => "single-wait",
        /// Single call used as an RPC: the callback writes a reply the caller
        /// checks after the wait.
        SingleRpc = 3 => "single-rpc",
        /// Many (random subset), no wait.
        Many = 4 => "many",
        /// Many, waiting.
        ManyWait = 5 => "many-wait",
        /// All vCPUs, no wait.
        All = 6 => "all",
        /// All vCPUs, waiting.
        AllWait = 7 => "all-wait",
    }
}

/// The primitives of the torture workload ([`Workload::Torture`]), indexes
/// ([`TorturePrimitive`] codes) of [`Control::torture_weights`] and [`Results::torture`].
pub mod torture {
    use super::TorturePrimitive;

    /// [`TorturePrimitive::Resched`].
    pub const RESCHED: usize = TorturePrimitive::Resched as usize;
    /// [`TorturePrimitive::Single`].
    pub const SINGLE: usize = TorturePrimitive::Single as usize;
    /// [`TorturePrimitive::SingleWait`].
    pub const SINGLE_WAIT: usize = TorturePrimitive::SingleWait as usize;
    /// [`TorturePrimitive::SingleRpc`].
    pub const SINGLE_RPC: usize = TorturePrimitive::SingleRpc as usize;
    /// [`TorturePrimitive::Many`].
    pub const MANY: usize = TorturePrimitive::Many as usize;
    /// [`TorturePrimitive::ManyWait`].
    pub const MANY_WAIT: usize = TorturePrimitive::ManyWait as usize;
    /// [`TorturePrimitive::All`].
    pub const ALL: usize = TorturePrimitive::All as usize;
    /// [`TorturePrimitive::AllWait`].
    pub const ALL_WAIT: usize = TorturePrimitive::AllWait as usize;
    /// Number of primitives.
    pub const COUNT: usize = TorturePrimitive::COUNT;
    /// Names, for reports and the CLI ([`TorturePrimitive::NAMES`]).
    pub const NAMES: [&str; COUNT] = TorturePrimitive::NAMES;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::check_set;

    #[test]
    fn test_workload_roundtrip() {
        check_set::<Workload>(99, "Torture");
        assert_eq!(Workload::try_from(7), Ok(Workload::Floor));
        assert_eq!("floor".parse(), Ok(Workload::Floor));
        let per_design: [_; 3] = [Workload::Ping, Workload::Shootdown, Workload::Torture];
        for w in Workload::ALL {
            assert_eq!(w.per_design(), per_design.contains(&w), "{w}");
        }
    }

    #[test]
    fn test_torture_primitive_roundtrip() {
        check_set::<TorturePrimitive>(8, "Resched");
        for (i, p) in TorturePrimitive::ALL.into_iter().enumerate() {
            assert_eq!(p as usize, i, "codes are array indexes");
        }
    }

    #[test]
    fn test_torture_names_match_indexes() {
        assert_eq!(torture::NAMES.len(), torture::COUNT);
        assert_eq!(torture::NAMES[torture::SINGLE_RPC], "single-rpc");
        assert_eq!(torture::NAMES[torture::ALL_WAIT], "all-wait");
    }
}
