//! Plain-text reports of a run, every part rendered from the report model
//! ([`crate::scenario::Report`], the JSON contract) and none from the
//! guest's raw read-out: the boot lines and the scheduler block in
//! `run.rs`, the design table in [`designs_text`] (`designs.rs`), the host
//! block and the partial report of an interrupted run in `host.rs`, the
//! answer block in `summary.rs`.

mod designs;
mod host;
mod run;
pub(crate) mod summary;

use crate::machine::MachineConfig;

pub use designs::designs_text;
pub use host::{host_block, host_text, partial_text};
pub use run::{boot_line, latency_summary, online_line, run_text, scheduler_text};

/// Which per-vCPU guest figures a run measured; the others print `-` in
/// the text and null in the JSON, never a zero that looks measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// The guest registered steal time (every workload run where KVM
    /// offers it).
    pub steal_time: bool,
    /// The guest recorded its largest TSC gap (`spin`).
    pub max_gap: bool,
}

impl Measured {
    /// Everything measured.
    pub const ALL: Measured = Measured {
        steal_time: true,
        max_gap: true,
    };

    /// What a run of `config` measured, with its host figures `host`.
    pub fn of(config: &MachineConfig, host: &crate::inject::HostReport) -> Self {
        Measured {
            steal_time: host.steal_time,
            max_gap: config.workload == abi::Workload::Spin,
        }
    }
}
