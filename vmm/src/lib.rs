//! ipivirt's VMM as a library: boot the ipivirt guest micro-kernel on KVM,
//! run it under a watchdog, and read back what it reported.
//!
//! ```no_run
//! use ipivirt_vmm::{boot, MachineConfig};
//!
//! let report = boot(&MachineConfig::new(4)).expect("a KVM host");
//! println!("online {}/{} vCPUs in {:?}", report.online, report.vcpus, report.boot_time);
//! ```
//!
//! Errors say what went wrong and map to the CLI's exit codes
//! ([`Error::exit_code`]).

pub mod cli;
pub mod console;
pub mod fuzzing;
pub mod guest_mode;
pub mod inject;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod oom;
pub mod output;
pub mod progress;
pub mod provenance;
pub mod pv;
pub mod repeat;
pub mod report;
pub mod results;
pub mod scenario;
pub mod signals;
pub mod stall;
pub mod stats;
pub mod svg;
pub mod sweep;
pub mod vcpu;
pub mod vm;

pub use abi;
pub use abi::{Design, Histogram, TestHook, Workload};
pub use console::ConsoleMode;
pub use guest_mode::GuestMode;
pub use inject::{HostReport, InjectConfig, PreemptMode};
pub use machine::{boot, BootReport, MachineConfig};
pub use repeat::{Observer, Repeated};
pub use scenario::{Report, Scenario};

/// Exit codes of the `ipivirt` binary (the interface contract).
pub mod exit_code {
    /// Ran; no invariant violation in a design expected to be safe.
    pub const OK: u8 = 0;
    /// An invariant violation in a design expected to be safe.
    pub const VIOLATION: u8 = 1;
    /// Bad command line or scenario.
    pub const USAGE: u8 = 2;
    /// The guest crashed (exception, triple fault, panic) or broke the
    /// results contract.
    pub const GUEST_CRASH: u8 = 3;
    /// The watchdog fired.
    pub const WATCHDOG: u8 = 4;
    /// KVM is unusable (`/dev/kvm` missing or not permitted, or a KVM call
    /// the VM needs failed).
    pub const KVM_UNUSABLE: u8 = 5;
    /// Another host-side failure (memory, threads).
    pub const HOST_FAILURE: u8 = 6;
    /// Stopped by SIGINT (Ctrl-C): 128 + 2, the shell's convention. The
    /// partial report is printed.
    pub const INTERRUPTED: u8 = 130;
    /// Stopped by SIGTERM: 128 + 15. The partial report is printed.
    pub const TERMINATED: u8 = 143;

    /// The codes above as the CLI shows them after every command's
    /// `--help`: written beside the constants so that a new code is one
    /// place (the CLI's tests check that every constant is listed).
    pub const HELP: &str = "\
Exit status:
  0    ran; no invariant violation in a design expected to be safe
  1    an invariant violation in a design expected to be safe
  2    bad command line or scenario (refused before anything boots)
  3    the guest crashed (exception, triple fault, panic) or broke the results contract
  4    the watchdog (--timeout) fired
  5    KVM unusable (/dev/kvm missing, not permitted, not KVM, or a KVM call failed)
  6    another host-side failure (memory, threads, writing an output or the report)
  130  stopped by SIGINT (Ctrl-C); 143 stopped by SIGTERM: the partial report is printed";
}

/// Everything that can end a run early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` cannot be used.
    #[error(transparent)]
    KvmUnavailable(#[from] vm::KvmUnavailable),
    /// The scenario is invalid on this host.
    #[error("invalid scenario: {0}")]
    Scenario(String),
    /// The scenario cannot be measured as asked ([`Scenario::validate`]).
    #[error("invalid scenario: {0}")]
    Invalid(#[from] scenario::ScenarioError),
    /// A KVM call failed while building the VM.
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    /// Guest memory could not be set up or read.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// The guest image could not be loaded.
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    /// A vCPU thread could not be started.
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    /// The guest crashed or reported garbage.
    #[error("{0}")]
    Guest(Box<results::GuestFailure>),
    /// The guest did not finish in time.
    #[error("{0}")]
    Watchdog(results::WatchdogReport),
    /// The host capability probe could not run.
    #[error(transparent)]
    Probe(#[from] pv::ProbeError),
    /// Host-side injection refused the scenario or failed.
    #[error(transparent)]
    Inject(#[from] inject::InjectError),
    /// SIGINT or SIGTERM stopped the run; what it had collected.
    #[error("{0}")]
    Interrupted(Box<results::PartialReport>),
    /// The signal handlers could not be installed.
    #[error(transparent)]
    Signals(#[from] signals::SignalError),
    /// An output path (--json, --svg, --trace) cannot be used; found
    /// before the run.
    #[error(transparent)]
    OutputPath(#[from] output::OutputError),
    /// The text report could not be written to standard output (a closed
    /// pipe is not an error).
    #[error("cannot write the report to standard output: {0}")]
    Stdout(std::io::Error),
    /// A report file (--json, --svg) could not be written.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The path given.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Error {
    /// The CLI exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::KvmUnavailable(_) => exit_code::KVM_UNUSABLE,
            Error::Vm(vm::VmError::TooManyVcpus { .. })
            | Error::Scenario(_)
            | Error::Invalid(_)
            | Error::OutputPath(_) => exit_code::USAGE,
            Error::Vm(vm::VmError::FdLimit { .. }) => exit_code::HOST_FAILURE,
            Error::Vm(_) | Error::Probe(_) => exit_code::KVM_UNUSABLE,
            Error::Memory(_) | Error::Thread(_) => exit_code::HOST_FAILURE,
            Error::Loader(_) | Error::Guest(_) => exit_code::GUEST_CRASH,
            Error::Watchdog(_) => exit_code::WATCHDOG,
            Error::Inject(e) if e.is_scenario() => exit_code::USAGE,
            Error::Inject(_) | Error::Stdout(_) | Error::Signals(_) | Error::Output { .. } => {
                exit_code::HOST_FAILURE
            }
            Error::Interrupted(p) => signals::exit_code(p.signal),
        }
    }

    /// The vCPUs the error is about (their registers are printed in full).
    pub fn focus_vcpus(&self) -> Vec<u32> {
        match self {
            Error::Guest(g) => match &g.kind {
                results::FailureKind::Panic(Some(p)) => vec![p.vcpu],
                results::FailureKind::Fault { vcpu, .. }
                | results::FailureKind::StatusFromAp { vcpu, .. }
                | results::FailureKind::Exception(_, vcpu) => vec![*vcpu],
                _ => vec![0],
            },
            _ => vec![0],
        }
    }

    /// The last guest console lines attached to the error, if any.
    pub fn console_tail(&self) -> &[String] {
        match self {
            Error::Guest(g) => &g.console_tail,
            Error::Watchdog(w) => &w.console_tail,
            _ => &[],
        }
    }

    /// vCPU register dumps attached to the error, if any.
    pub fn register_dumps(&self) -> &[vcpu::RegisterDump] {
        match self {
            Error::Guest(g) => &g.dumps,
            Error::Watchdog(w) => &w.dumps,
            _ => &[],
        }
    }
}
