//! Reading what the guest reported, as untrusted data: every count and
//! length is checked against the contract before use, and a bad value is an
//! error that names the field. This is the first step of the report's one
//! data flow: readout (here) -> model ([`crate::scenario::Report`], the JSON
//! contract) -> text, JSON and SVG rendered from the model.
//!
//! - [`failure`]: what went wrong (panic, exception, fault, watchdog).
//! - [`design`]: one design's slot, validated as plain-data groups.
//! - [`guest`]: the guest kernel's run-wide figures.

pub mod design;
pub mod failure;
pub mod guest;

use std::time::Duration;

use abi::{Design, FieldError, Pod, SharedPage, VcpuResults, VcpuStatus};

pub use design::{
    task_name, DesignReport, ExclSteal, HotplugReport, PhaseEndReport, PreemptOffReport, PvCounts,
    NR_CPUS_8192_MASK_BYTES,
};
pub use failure::{
    exception_name, explain, offline_vcpus, ExceptionDetails, FailureKind, GuestFailure,
    PanicDetails, PartialReport, WatchdogReport,
};
pub use guest::{guest_report, verdict_words, GuestReport, VcpuCounters, VcpuHotplugCounts};

/// What the run asked the guest for, against which its results are
/// validated: the vCPUs, the designs whose slots it writes (in order) and
/// each phase's PV features.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// vCPUs in the guest.
    pub vcpus: u32,
    /// The designs run, one slot each.
    pub designs: Vec<Design>,
    /// The PV features of each design's phase.
    pub phase_pv: Vec<u32>,
}

impl Expected {
    /// `vcpus` vCPUs running `designs`, phase `i` with the PV features
    /// `phase_pv(i)`.
    pub fn new(vcpus: u32, designs: Vec<Design>, phase_pv: impl Fn(usize) -> u32) -> Self {
        let phase_pv = (0..designs.len()).map(phase_pv).collect();
        Expected {
            vcpus,
            designs,
            phase_pv,
        }
    }
}

/// What a successful boot reports.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// vCPUs created.
    pub vcpus: u32,
    /// vCPUs the guest reported online.
    pub online: u32,
    /// From VM creation until the guest reported every vCPU online.
    pub boot_time: Duration,
    /// Guest TSC frequency (kHz) as KVM reports it.
    pub tsc_khz: u64,
    /// Guest-measured time from BSP entry to all online, in TSC cycles.
    pub guest_boot_cycles: u64,
    /// The last console lines.
    pub console_tail: Vec<String>,
    /// What the guest's kernel reported about the workload.
    pub guest: GuestReport,
    /// Host-side injection and what host and guest saw (per-vCPU steal
    /// time, gaps, KVM statistics).
    pub host: crate::inject::HostReport,
    /// The host capability probe (run when the run uses PV features).
    pub pv_probe: Option<crate::pv::HostPv>,
    /// What the VMM's PV interface served (when the run had it).
    pub pv_host: Option<crate::pv::PvHostTotals>,
    /// Stalls of the VMM itself during the run (none: it ran throughout).
    pub vmm_stalls: crate::stall::StallLog,
}

/// Validates a finished boot's results and summarises them.
pub fn boot_report(
    config: &Expected,
    page: &SharedPage,
    per_vcpu: &[VcpuResults],
    tsc_khz: u64,
    boot_time: Option<Duration>,
) -> Result<BootReport, FailureKind> {
    let r = &page.results;
    r.validate(config.vcpus)
        .map_err(FailureKind::InvalidResults)?;
    vcpu_statuses(page, config.vcpus).map_err(FailureKind::InvalidResults)?;
    let missing = offline_vcpus(page, config.vcpus, 16);
    if r.nr_online != config.vcpus || !missing.is_empty() {
        return Err(FailureKind::NotAllOnline {
            online: r.nr_online,
            vcpus: config.vcpus,
            missing,
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
        guest: guest_report(page, per_vcpu, config.vcpus, &config.designs, |i| {
            config.phase_pv.get(i).copied().unwrap_or(0)
        })
        .map_err(FailureKind::InvalidResults)?,
        host: Default::default(),
        vmm_stalls: Default::default(),
        pv_probe: None,
        pv_host: None,
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
    crate::memory::boxed_from_bytes(bytes)
}

/// Reads guest-written bytes as the VMM does at the end of a run: the
/// shared page (`page`, at least `size_of::<SharedPage>()` bytes) and the
/// per-vCPU results (`per_vcpu`, one [`VcpuResults`] per vCPU), validated
/// by [`boot_report`] for a guest of `vcpus` vCPUs. Never panics; every
/// allocation is bounded by `vcpus` (capped at [`abi::MAX_VCPUS`]) and the
/// fixed sizes of the records. The fuzz target and the property tests
/// drive this function.
pub fn parse_and_validate(
    page: &[u8],
    per_vcpu: &[u8],
    vcpus: u32,
) -> Result<BootReport, FailureKind> {
    let bad = |field, found: usize, expected| {
        FailureKind::InvalidResults(FieldError {
            field,
            found: found as u64,
            expected,
        })
    };
    let page = parse_page(page).ok_or(bad(
        "shared page",
        page.len(),
        "size_of::<SharedPage>() bytes",
    ))?;
    let n = (vcpus as usize).min(abi::MAX_VCPUS);
    let size = std::mem::size_of::<VcpuResults>();
    if per_vcpu.len() / size < n {
        return Err(bad(
            "vcpu_results",
            per_vcpu.len() / size,
            "one entry per vCPU",
        ));
    }
    let per: Vec<VcpuResults> = per_vcpu
        .chunks_exact(size)
        .take(n)
        .filter_map(VcpuResults::read_from)
        .collect();
    // Validate the design slots too, as a shootdown run of every design
    // would (the first slots name the designs in code order).
    let designs = Design::ALL
        .iter()
        .copied()
        .take_while(|d| page.designs[*d as usize].valid != 0)
        .collect();
    boot_report(&Expected::new(vcpus, designs, |_| 0), &page, &per, 0, None)
}

#[cfg(test)]
mod tests {
    use super::design::design_report;
    use super::guest::{mode_text, native_error_text};
    use super::*;
    use crate::vcpu::VcpuFault;
    use abi::{panic_state, vcpu_state, DesignResults, Histogram, ABI_VERSION, RESULTS_MAGIC};

    fn good_page(vcpus: u32) -> Box<SharedPage> {
        let mut page = crate::memory::boxed_zeroed::<SharedPage>();
        page.results.magic = RESULTS_MAGIC;
        page.results.abi_version = ABI_VERSION;
        page.results.nr_online = vcpus;
        page.results.boot_tsc = 100;
        page.results.all_online_tsc = 350;
        page.results.mode = abi::guest_mode::PLAIN;
        for v in &mut page.vcpus[..vcpus as usize] {
            v.state = vcpu_state::ONLINE;
            v.mode = abi::guest_mode::PLAIN;
        }
        page
    }

    #[test]
    fn test_boot_report_accepts_good_page() {
        let r = boot_report(
            &Expected::new(4, Vec::new(), |_| 0),
            &good_page(4),
            &[],
            1000,
            Some(Duration::from_millis(3)),
        )
        .unwrap();
        assert_eq!((r.online, r.guest_boot_cycles), (4, 250));
    }

    /// Two vCPUs' window maxima `values`: each vCPU's figures in `per_cpu`,
    /// all of them merged in `merged`.
    fn windows(merged: &mut Histogram, per_cpu: &mut [abi::PreemptOffCpu], values: [[u64; 2]; 2]) {
        *merged = Histogram::new();
        for (cpu, values) in values.iter().enumerate() {
            let mut h = Histogram::new();
            for &v in values {
                h.record(v);
                merged.record(v);
            }
            per_cpu[cpu] = abi::PreemptOffCpu::from_histogram(&h);
        }
    }

    /// A design slot with a consistent preempt-off record for 2 vCPUs.
    /// Boxed: a DesignResults is about 170 KiB, and a debug build keeps
    /// every local copy on the 2 MiB test thread's stack.
    fn traced_design() -> Box<DesignResults> {
        let mut d = Box::new(DesignResults::zeroed());
        d.valid = 1;
        d.design = Design::Upstream as u32;
        let p = &mut d.preempt_off;
        p.enabled = 1;
        p.window_cycles = 100;
        windows(&mut p.window_max, &mut p.per_cpu, [[10, 20], [30, 4000]]);
        p.causes[abi::preempt_off::cause::CSD_LOCK_WAIT] = abi::PreemptOffCause {
            windows: 2,
            max: 4000,
        };
        d.phase_end.status = abi::phase_status::QUIESCED;
        d
    }

    #[test]
    fn test_preempt_off_record_is_validated() {
        let report = |d: &DesignResults| design_report(d, Design::Upstream, 0, 0, 2);
        let good = report(&traced_design()).unwrap();
        assert_eq!(good.preempt_off.per_cpu.len(), 2);
        assert_eq!(good.preempt_off.p99_ns(1_000_000), Some(4000));
        let mut d = traced_design();
        d.preempt_off.per_cpu[1].p50 = 5000; // above its p99
        assert_eq!(
            report(&d).unwrap_err().field,
            "designs[].preempt_off.per_cpu"
        );
        let mut d = traced_design();
        d.preempt_off.per_cpu[0].windows = 7; // does not add up
        assert_eq!(
            report(&d).unwrap_err().field,
            "designs[].preempt_off.window_max"
        );
        let mut d = traced_design();
        d.preempt_off.causes[0].windows = 9; // more than the windows
        assert_eq!(
            report(&d).unwrap_err().field,
            "designs[].preempt_off.causes"
        );
        let mut d = traced_design();
        d.preempt_off.enabled = 0;
        assert_eq!(report(&d).unwrap().preempt_off.p99_ns(1000), None);
    }

    /// `traced_design` with the steal-excluded figures: each window less
    /// some steal (vCPU 1's 4000-cycle window down to 1000).
    fn steal_traced_design() -> Box<DesignResults> {
        let mut d = traced_design();
        let p = &mut d.preempt_off;
        p.steal_tracked = 1;
        windows(
            &mut p.window_max_excl_steal,
            &mut p.per_cpu_excl_steal,
            [[10, 20], [30, 1000]],
        );
        d
    }

    #[test]
    fn test_preempt_off_excl_steal_is_validated() {
        let report = |d: &DesignResults| design_report(d, Design::Upstream, 0, 0, 2);
        // Not tracked: None, and its fields must be zero.
        assert!(report(&traced_design())
            .unwrap()
            .preempt_off
            .excl_steal
            .is_none());
        let good = report(&steal_traced_design()).unwrap();
        let e = good.preempt_off.excl_steal.as_ref().unwrap();
        assert_eq!(e.per_cpu.len(), 2);
        assert_eq!(good.preempt_off.p99_excl_steal_ns(1_000_000), Some(1000));
        let field = |d: &DesignResults| report(d).unwrap_err().field;
        let mut d = steal_traced_design();
        d.preempt_off.steal_tracked = 2;
        assert_eq!(field(&d), "designs[].preempt_off.steal_tracked");
        let mut d = steal_traced_design();
        d.preempt_off.enabled = 0; // tracked without the tracer
        assert_eq!(field(&d), "designs[].preempt_off.steal_tracked");
        let mut d = steal_traced_design();
        d.preempt_off.steal_tracked = 0; // figures left behind
        assert_eq!(field(&d), "designs[].preempt_off.excl_steal");
        let mut d = steal_traced_design();
        d.preempt_off.per_cpu_excl_steal[1].max = 5000; // above the raw max
        assert_eq!(field(&d), "designs[].preempt_off.per_cpu_excl_steal");
        let mut d = steal_traced_design();
        d.preempt_off.per_cpu_excl_steal[0].windows = 3; // other windows
        assert_eq!(field(&d), "designs[].preempt_off.per_cpu_excl_steal");
        let mut d = steal_traced_design();
        d.preempt_off.per_cpu_excl_steal[0].p99 = 5; // below its p50
        assert_eq!(field(&d), "designs[].preempt_off.per_cpu_excl_steal");
        let mut d = steal_traced_design();
        d.preempt_off.window_max_excl_steal.count += 1; // buckets do not add up
        assert_eq!(field(&d), "designs[].preempt_off.window_max_excl_steal");
        let mut d = steal_traced_design();
        d.preempt_off.window_max_excl_steal.record(10); // an extra window
        assert_eq!(field(&d), "designs[].preempt_off.window_max_excl_steal");
    }

    #[test]
    fn test_boot_report_rejects_bad_magic() {
        let mut page = good_page(4);
        page.results.magic = 0xbad_c0de;
        let err =
            boot_report(&Expected::new(4, Vec::new(), |_| 0), &page, &[], 0, None).unwrap_err();
        assert!(
            err.to_string().contains("results.magic = 0xbadc0de"),
            "{err}"
        );
    }

    #[test]
    fn test_mode_and_native_error_are_validated() {
        let mut r = good_page(2).results;
        let mut statuses = good_page(2).vcpus[..2].to_vec();
        assert_eq!(mode_text(&r, &statuses).unwrap(), "plain");
        r.mode = abi::guest_mode::PVM_NATIVE;
        let e = mode_text(&r, &statuses).unwrap_err();
        assert_eq!(e.field, "vcpu.mode", "one vCPU in another mode: {e}");
        statuses
            .iter_mut()
            .for_each(|s| s.mode = abi::guest_mode::PVM_NATIVE);
        assert_eq!(mode_text(&r, &statuses).unwrap(), "pvm-native");
        r.mode = 7;
        assert_eq!(mode_text(&r, &statuses).unwrap_err().field, "results.mode");
        assert_eq!(native_error_text(0).unwrap(), None);
        assert!(native_error_text(abi::native_error::HYPERCALL_ABI)
            .unwrap()
            .is_some());
        assert_eq!(
            native_error_text(99).unwrap_err().field,
            "results.native_error"
        );
    }

    #[test]
    fn test_boot_report_rejects_out_of_range_count() {
        let mut page = good_page(4);
        page.results.nr_online = 1_000_000;
        let err =
            boot_report(&Expected::new(4, Vec::new(), |_| 0), &page, &[], 0, None).unwrap_err();
        assert!(err.to_string().contains("results.nr_online"), "{err}");
    }

    #[test]
    fn test_boot_report_names_missing_vcpus() {
        let mut page = good_page(4);
        page.vcpus[2].state = vcpu_state::OFFLINE;
        page.results.nr_online = 3;
        let err =
            boot_report(&Expected::new(4, Vec::new(), |_| 0), &page, &[], 0, None).unwrap_err();
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
        let err =
            boot_report(&Expected::new(4, Vec::new(), |_| 0), &page, &[], 0, None).unwrap_err();
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
        assert!(boot_report(&Expected::new(4, Vec::new(), |_| 0), &page, &[], 0, None).is_err());
    }
}
