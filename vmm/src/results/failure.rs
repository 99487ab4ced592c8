//! What went wrong in a run: the guest's panic and exception records, a
//! vCPU's fault, the watchdog and the interrupted run.

use std::fmt;
use std::time::Duration;

use abi::{panic_state, FieldError, GuestStatus, SharedPage};

use crate::inject::HostReport;
use crate::vcpu::{RegisterDump, VcpuFault};

/// Where and why the guest panicked, as it recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanicDetails {
    /// vCPU that panicked.
    pub vcpu: u32,
    /// Source file (lossy UTF-8).
    pub file: String,
    /// Line.
    pub line: u32,
    /// Column.
    pub column: u32,
    /// Message (lossy UTF-8).
    pub message: String,
}

/// A CPU exception, as the guest recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionDetails {
    /// vCPU.
    pub vcpu: u32,
    /// Vector (0..32).
    pub vector: u64,
    /// Error code.
    pub error_code: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// CR2.
    pub cr2: u64,
    /// Privilege level at the fault.
    pub cpl: u64,
    /// Task id and name.
    pub task: (u64, String),
}

/// The mnemonic of exception `vector`.
pub fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "(15)", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "(22)", "(23)", "(24)",
        "(25)", "(26)", "(27)", "#HV", "#VC", "#SX", "(31)",
    ];
    NAMES
        .get(vector as usize)
        .copied()
        .unwrap_or("(bad vector)")
}

/// What went wrong in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// A Rust panic in the guest (details when the record was readable).
    Panic(Option<PanicDetails>),
    /// A CPU exception the guest reported (details when the record was
    /// readable), and the vCPU that reported it.
    Exception(Option<ExceptionDetails>, u32),
    /// A vCPU stopped on a fault (triple fault, unknown port, ...).
    Fault {
        /// Which vCPU.
        vcpu: u32,
        /// What it did.
        fault: VcpuFault,
    },
    /// The results page breaks the contract.
    InvalidResults(FieldError),
    /// Not every vCPU came online.
    NotAllOnline {
        /// How many did.
        online: u32,
        /// How many exist.
        vcpus: u32,
        /// The first few that did not.
        missing: Vec<u32>,
    },
    /// An AP reported a status only the BSP may report (`StartAps`,
    /// `AllOnline`, `Done`).
    StatusFromAp {
        /// The AP that wrote it.
        vcpu: u32,
        /// What it reported.
        status: GuestStatus,
    },
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Panic(Some(p)) => {
                write!(
                    f,
                    "guest panicked on vCPU {} at {}:{}:{}: {}",
                    p.vcpu, p.file, p.line, p.column, p.message
                )
            }
            FailureKind::Panic(None) => write!(f, "guest panicked (no readable panic record)"),
            FailureKind::Exception(Some(e), _) => write!(
                f,
                "guest exception {} (vector {}) on vCPU {} at rip={:#x} (CPL{}), error code {:#x}, cr2={:#x}, task {} '{}'",
                exception_name(e.vector),
                e.vector,
                e.vcpu,
                e.rip,
                e.cpl,
                e.error_code,
                e.cr2,
                e.task.0,
                e.task.1
            ),
            FailureKind::Exception(None, vcpu) => {
                write!(f, "guest exception on vCPU {vcpu} (no readable exception record)")
            }
            FailureKind::Fault { vcpu, fault } => write!(f, "vCPU {vcpu} stopped: {fault}"),
            FailureKind::InvalidResults(e) => write!(f, "guest wrote invalid results: {e}"),
            FailureKind::NotAllOnline {
                online,
                vcpus,
                missing,
            } => {
                write!(
                    f,
                    "only {online}/{vcpus} vCPUs came online (missing: {missing:?})"
                )
            }
            FailureKind::StatusFromAp { vcpu, status } => write!(
                f,
                "vCPU {vcpu} reported {status:?}, which only the BSP (vCPU 0) may report: \
                 the guest broke the status contract"
            ),
        }
    }
}

/// A guest failure with the state of every vCPU when it was stopped.
#[derive(Debug)]
pub struct GuestFailure {
    /// What happened.
    pub kind: FailureKind,
    /// Registers of every vCPU after the stop.
    pub dumps: Vec<RegisterDump>,
    /// The last console lines.
    pub console_tail: Vec<String>,
}

impl fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

/// The watchdog fired.
#[derive(Debug)]
pub struct WatchdogReport {
    /// The deadline that passed.
    pub timeout: Duration,
    /// vCPUs online when it fired (as the guest reported, bounded).
    pub online: u32,
    /// vCPUs in the guest.
    pub vcpus: u32,
    /// The first few vCPUs whose status entry never said online.
    pub missing: Vec<u32>,
    /// Registers of every vCPU after the stop.
    pub dumps: Vec<RegisterDump>,
    /// The last console lines.
    pub console_tail: Vec<String>,
    /// How long the VMM itself was stalled before it fired (not counted
    /// in the deadline, which the stalls pushed back); None: never.
    pub vmm_stalled: Option<Duration>,
}

impl fmt::Display for WatchdogReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "watchdog: the guest did not finish within {:?} ({}/{} vCPUs online)",
            self.timeout, self.online, self.vcpus
        )?;
        if !self.missing.is_empty() {
            write!(f, "; never came online: vCPUs {:?}", self.missing)?;
        }
        write!(f, "; every vCPU was stopped")?;
        if let Some(stalled) = self.vmm_stalled {
            write!(
                f,
                " (the VMM itself was also stopped or starved for {:.0} ms, not counted in the {:?}: \
                 the guest had its full time)",
                stalled.as_secs_f64() * 1e3,
                self.timeout
            )?;
        }
        Ok(())
    }
}

/// The first `limit` of the first `vcpus` vCPUs whose status entry does not
/// say online (any other value counts as not online).
pub fn offline_vcpus(page: &SharedPage, vcpus: u32, limit: usize) -> Vec<u32> {
    (0..vcpus)
        .zip(page.vcpus.iter())
        .filter(|(_, s)| s.state != abi::vcpu_state::ONLINE)
        .map(|(i, _)| i)
        .take(limit)
        .collect()
}

/// What a run stopped by SIGINT or SIGTERM had collected: the boot figures
/// so far and the host block (injectors stopped, affinities restored).
#[derive(Debug)]
pub struct PartialReport {
    /// The signal that stopped the run.
    pub signal: i32,
    /// From VM creation to the stop.
    pub elapsed: Duration,
    /// vCPUs created.
    pub vcpus: u32,
    /// vCPUs whose status entry said online at the stop.
    pub online: u32,
    /// VM creation to `AllOnline`, if the guest got that far.
    pub boot_time: Option<Duration>,
    /// Guest TSC frequency (kHz).
    pub tsc_khz: u64,
    /// Host-side figures up to the stop.
    pub host: HostReport,
}

impl fmt::Display for PartialReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interrupted by {} after {:.2} s: the run was stopped (vCPUs kicked, injectors \
             stopped, affinities restored: {}); the report is partial",
            crate::signals::name(self.signal),
            self.elapsed.as_secs_f64(),
            if !self.host.active || self.host.affinity_restored {
                "yes"
            } else {
                "NO"
            }
        )
    }
}

/// Fills in what the page says about a failure: the panic record for a
/// panic, and for a vCPU that stopped while its panic handler was still
/// formatting the message, the panic it was reporting.
pub fn explain(kind: FailureKind, page: &SharedPage) -> FailureKind {
    let state = page.results.panic.state;
    match kind {
        FailureKind::Panic(None) if state == panic_state::COMPLETE => {
            FailureKind::Panic(Some(panic_details(page)))
        }
        FailureKind::Exception(None, vcpu) if page.results.exception.valid != 0 => {
            FailureKind::Exception(Some(exception_details(page)), vcpu)
        }
        FailureKind::Fault {
            vcpu,
            fault: fault @ VcpuFault::InternalError { .. },
        } if state == panic_state::LOCATION && page.results.panic.vcpu == vcpu => {
            let mut details = panic_details(page);
            details.message = format!("<the vCPU stopped while formatting the message: {fault}>");
            FailureKind::Panic(Some(details))
        }
        other => other,
    }
}

fn exception_details(page: &SharedPage) -> ExceptionDetails {
    let e = &page.results.exception;
    let name_len = e
        .task_name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(e.task_name.len());
    ExceptionDetails {
        vcpu: e.vcpu,
        vector: e.vector,
        error_code: e.error_code,
        rip: e.rip,
        cr2: e.cr2,
        cpl: e.cs & 3,
        task: (
            e.task_id,
            String::from_utf8_lossy(&e.task_name[..name_len]).into_owned(),
        ),
    }
}

fn panic_details(page: &SharedPage) -> PanicDetails {
    let p = &page.results.panic;
    let message = if p.state == panic_state::COMPLETE {
        p.message_bytes()
    } else {
        &[]
    };
    PanicDetails {
        vcpu: p.vcpu,
        file: String::from_utf8_lossy(p.file_bytes()).into_owned(),
        line: p.line,
        column: p.column,
        message: String::from_utf8_lossy(message).into_owned(),
    }
}
