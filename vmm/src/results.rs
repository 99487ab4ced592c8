//! Reading what the guest reported, as untrusted data: every count and
//! length is checked against the contract before use, and a bad value is an
//! error that names the field. Also the failure reports of a run.

use std::fmt;
use std::time::Duration;

use abi::{panic_state, FieldError, Pod, SharedPage, VcpuStatus};

use crate::machine::{BootReport, MachineConfig};
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

/// What went wrong in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// A Rust panic in the guest (details when the record was readable).
    Panic(Option<PanicDetails>),
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
    /// Registers of every vCPU after the stop.
    pub dumps: Vec<RegisterDump>,
    /// The last console lines.
    pub console_tail: Vec<String>,
}

impl fmt::Display for WatchdogReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "watchdog: the guest did not finish within {:?} ({}/{} vCPUs online); every vCPU was stopped",
            self.timeout, self.online, self.vcpus
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

/// Validates a finished boot's results and summarises them.
pub fn boot_report(
    config: &MachineConfig,
    page: &SharedPage,
    tsc_khz: u64,
    boot_time: Option<Duration>,
) -> Result<BootReport, FailureKind> {
    let r = &page.results;
    r.validate(config.vcpus)
        .map_err(FailureKind::InvalidResults)?;
    let statuses = vcpu_statuses(page, config.vcpus).map_err(FailureKind::InvalidResults)?;
    let missing: Vec<u32> = (0..config.vcpus)
        .zip(&statuses)
        .filter(|(_, s)| s.state != abi::vcpu_state::ONLINE)
        .map(|(i, _)| i)
        .collect();
    if r.nr_online != config.vcpus || !missing.is_empty() {
        return Err(FailureKind::NotAllOnline {
            online: r.nr_online,
            vcpus: config.vcpus,
            missing: missing.into_iter().take(16).collect(),
        });
    }
    Ok(BootReport {
        vcpus: config.vcpus,
        online: r.nr_online,
        // The AllOnline mark is required before Done; a guest that skipped
        // it is reported as not all online above only if counts disagree,
        // so fall back to zero rather than invent a time.
        boot_time: boot_time.unwrap_or_default(),
        tsc_khz,
        guest_boot_cycles: r.all_online_tsc - r.boot_tsc,
        console_tail: Vec::new(),
        host: Default::default(),
    })
}

/// The status entries of the first `vcpus` vCPUs, each checked.
pub fn vcpu_statuses(page: &SharedPage, vcpus: u32) -> Result<Vec<VcpuStatus>, FieldError> {
    let statuses = page.vcpus.get(..vcpus as usize).ok_or(FieldError {
        field: "control.nr_vcpus",
        found: vcpus.into(),
        expected: "at most MAX_VCPUS",
    })?;
    statuses.iter().try_for_each(VcpuStatus::validate)?;
    Ok(statuses.to_vec())
}

/// Parses a shared page from raw bytes (for fuzzing and tests).
pub fn parse_page(bytes: &[u8]) -> Option<Box<SharedPage>> {
    SharedPage::read_from(bytes).map(Box::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::{vcpu_state, ABI_VERSION, RESULTS_MAGIC};

    fn good_page(vcpus: u32) -> Box<SharedPage> {
        let mut page = Box::new(SharedPage::zeroed());
        page.results.magic = RESULTS_MAGIC;
        page.results.abi_version = ABI_VERSION;
        page.results.nr_online = vcpus;
        page.results.boot_tsc = 100;
        page.results.all_online_tsc = 350;
        for v in &mut page.vcpus[..vcpus as usize] {
            v.state = vcpu_state::ONLINE;
        }
        page
    }

    #[test]
    fn test_boot_report_accepts_good_page() {
        let r = boot_report(
            &MachineConfig::new(4),
            &good_page(4),
            1000,
            Some(Duration::from_millis(3)),
        )
        .unwrap();
        assert_eq!((r.online, r.guest_boot_cycles), (4, 250));
    }

    #[test]
    fn test_boot_report_rejects_bad_magic() {
        let mut page = good_page(4);
        page.results.magic = 0xbad_c0de;
        let err = boot_report(&MachineConfig::new(4), &page, 0, None).unwrap_err();
        assert!(
            err.to_string().contains("results.magic = 0xbadc0de"),
            "{err}"
        );
    }

    #[test]
    fn test_boot_report_rejects_out_of_range_count() {
        let mut page = good_page(4);
        page.results.nr_online = 1_000_000;
        let err = boot_report(&MachineConfig::new(4), &page, 0, None).unwrap_err();
        assert!(err.to_string().contains("results.nr_online"), "{err}");
    }

    #[test]
    fn test_boot_report_names_missing_vcpus() {
        let mut page = good_page(4);
        page.vcpus[2].state = vcpu_state::OFFLINE;
        page.results.nr_online = 3;
        let err = boot_report(&MachineConfig::new(4), &page, 0, None).unwrap_err();
        assert_eq!(
            err,
            FailureKind::NotAllOnline {
                online: 3,
                vcpus: 4,
                missing: vec![2]
            }
        );
    }

    #[test]
    fn test_boot_report_rejects_garbage_state() {
        let mut page = good_page(4);
        page.vcpus[1].state = 0xdead;
        let err = boot_report(&MachineConfig::new(4), &page, 0, None).unwrap_err();
        assert!(err.to_string().contains("vcpus[].state"), "{err}");
    }

    #[test]
    fn test_panic_details_bounded_and_lossy() {
        let mut page = good_page(1);
        page.results.panic.state = panic_state::COMPLETE;
        page.results.panic.file_len = 9999;
        page.results.panic.message_len = 2;
        page.results.panic.message[..2].copy_from_slice(&[0xff, b'x']);
        let FailureKind::Panic(Some(p)) = explain(FailureKind::Panic(None), &page) else {
            panic!()
        };
        assert_eq!(p.file.len(), 128);
        assert_eq!(p.message, "\u{fffd}x");
    }

    #[test]
    fn test_explain_panic_interrupted_by_emulation_failure() {
        let mut page = good_page(2);
        page.results.panic.state = panic_state::LOCATION;
        page.results.panic.vcpu = 1;
        page.results.panic.line = 42;
        let fault = VcpuFault::InternalError {
            suberror: 1,
            data: vec![],
        };
        let kind = explain(
            FailureKind::Fault {
                vcpu: 1,
                fault: fault.clone(),
            },
            &page,
        );
        let FailureKind::Panic(Some(p)) = kind else {
            panic!("{kind:?}")
        };
        assert_eq!((p.vcpu, p.line), (1, 42));
        assert!(p.message.contains("emulation failure"), "{}", p.message);
        // Another vCPU's internal error is not that panic.
        let kind = explain(FailureKind::Fault { vcpu: 0, fault }, &page);
        assert!(matches!(kind, FailureKind::Fault { vcpu: 0, .. }));
    }

    #[test]
    fn test_parse_page_any_bytes() {
        assert!(parse_page(&[0u8; 10]).is_none());
        let bytes = vec![0xa5u8; std::mem::size_of::<SharedPage>()];
        let page = parse_page(&bytes).unwrap();
        assert!(boot_report(&MachineConfig::new(4), &page, 0, None).is_err());
    }
}
