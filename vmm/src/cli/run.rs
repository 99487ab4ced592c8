//! `ipivirt run`: the PV probe, the `--repeat` runs of one scenario
//! under the progress bar, and the report they print.

use super::args::RunCmd;
use super::print::{late_signal, note, write_output, Outputs, Printer};
use crate::machine::MachineConfig;
use crate::provenance::Provenance;
use crate::repeat::{Observer, Step};
use crate::report::partial_text;
use crate::scenario::{Report, Scenario};
use crate::Error;

/// What the CLI shows of the runs of `run` and `sweep`: the progress bar
/// (stderr, not with --quiet) labelled with the sweep cell or the repeat,
/// an interrupted run's partial report, and (for `run`) each repeat's
/// text.
pub(super) struct Shown<'a> {
    quiet: bool,
    out: &'a mut Printer,
    /// How much slower than their workload's length the earlier runs ran
    /// (boot, calibration and emulation included), so that the bar's
    /// estimate is in this host's time.
    slowdown: f64,
    /// Whether each repeat's text is kept (a sweep prints none).
    keep_texts: bool,
    /// Each repeat's text, in run order.
    texts: Vec<String>,
}

impl<'a> Shown<'a> {
    pub(super) fn new(args: &RunCmd, out: &'a mut Printer, keep_texts: bool) -> Self {
        Shown {
            quiet: args.common.quiet,
            out,
            slowdown: 1.0,
            keep_texts,
            texts: Vec::new(),
        }
    }
}

impl Observer for Shown<'_> {
    fn run(
        &mut self,
        step: Step,
        scenario: &Scenario,
        run: &dyn Fn() -> Result<Report, Error>,
    ) -> Result<Report, Error> {
        let mut label = format!(
            "{} on {} vCPUs",
            crate::scenario::workload_name(scenario.config().workload),
            scenario.config().vcpus
        );
        // A sweep's bar counts its cells, the repeats of one run theirs.
        let pace = match step.cell {
            Some((cell, cells)) => Some(("cell", cell, cells)),
            None if step.repeats > 1 => Some(("repeat", step.repeat, step.repeats)),
            None => None,
        };
        let expected = scenario.expected_duration();
        let mut shown = expected;
        if let Some((what, k, n)) = pace {
            label = format!("{what} {k}/{n}: {label}");
            shown = expected.mul_f64(self.slowdown);
        }
        let started = std::time::Instant::now();
        let phases = match scenario.config().workload {
            abi::Workload::None => 0,
            _ => scenario.config().ran_designs().len() as u32,
        };
        let result = crate::progress::with_progress(!self.quiet, shown, phases, &label, run);
        if pace.is_some() && !expected.is_zero() {
            self.slowdown =
                (started.elapsed().as_secs_f64() / expected.as_secs_f64()).clamp(1.0, 1e4);
        }
        result.inspect_err(|e| {
            if let Error::Interrupted(p) = e {
                self.out.say(&partial_text(p, scenario.config()));
            }
        })
    }

    fn repeat_done(&mut self, step: Step, scenario: &Scenario, report: &Report) {
        if !self.keep_texts {
            return;
        }
        let (c, n) = (scenario.config(), step.repeats);
        let mut text = String::new();
        if n > 1 {
            text += &format!(
                "repeat {}/{n}: seed {}, designs in the order {}\n",
                step.repeat,
                c.seed,
                report
                    .designs
                    .iter()
                    .map(|d| d.design.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        text += &crate::report::run_text(report);
        self.texts.push(text);
    }
}

/// The PV probe (when PV features are asked for) and the run(s).
pub(super) fn measure(
    args: &RunCmd,
    config: &MachineConfig,
    out: &mut Printer,
) -> Result<Repeated, Error> {
    if config.requested_pv() != 0 {
        // The host capability probe (cached: the run reuses it).
        let probe = crate::pv::probe::host_pv_at(&config.kvm_path)?;
        out.say(&format!("pv: {}", probe.summary()));
    }
    let mut shown = Shown::new(args, out, true);
    let done = Scenario::from_config(config.clone())
        .run_repeated(args.stats.repeat as usize, &mut shown)?;
    Ok(Repeated {
        report: done.report,
        texts: shown.texts,
        code: done.code,
    })
}

/// The `--repeat N` runs of one scenario, combined
/// ([`Scenario::run_repeated`]): the report (the first repeat's, with the
/// summary over all), each repeat's text, and the worst exit code among
/// them.
pub(super) struct Repeated {
    pub(super) report: Report,
    pub(super) texts: Vec<String>,
    pub(super) code: u8,
}

pub(super) fn run(args: &RunCmd) -> Result<u8, Error> {
    crate::signals::install()?;
    let provenance = Provenance::start();
    let outputs = Outputs::check(&args.output, args.scenario.trace.as_deref())?;
    let config = args.machine_config()?;
    let scenario = Scenario::from_config(config.clone());
    let mut out = Printer::new(outputs.stdout_taken());
    let checked = scenario.validate().and_then(|()| match outputs.svg {
        Some(_) => scenario.check_plot(),
        None => Ok(()),
    });
    let repeated = match checked.and_then(|()| measure(args, &config, &mut out)) {
        Ok(r) => r,
        Err(e) => {
            outputs.record_failure(&config, &e, &provenance);
            if let Err(stdout) = out.finish() {
                note(&format!("error: {}", Error::Stdout(stdout)));
            }
            return Err(e);
        }
    };
    let report = repeated.report;
    if let Some(header) = crate::scenario::scenario_header(&config) {
        out.say(&header);
    }
    // The answer block first, then each repeat's report.
    let answer = crate::stats::summary_text(&report);
    if !answer.is_empty() {
        out.say(answer.trim_end());
    }
    for text in &repeated.texts {
        out.say(text.trim_end());
    }
    let mut code = repeated.code;
    // Every output is attempted; the first failure is the error.
    let mut failure = None;
    if let Some(t) = &outputs.json {
        failure = write_output(t, &report.to_json()).err();
    }
    if let Some(t) = &outputs.svg {
        let written = write_output(t, &report.svg().unwrap_or_default());
        failure = failure.or(written.err());
    }
    if let Some(why) = &report.host.trace_error {
        note(&format!("error: {why}"));
        if code == crate::exit_code::OK {
            code = crate::exit_code::HOST_FAILURE;
        }
    }
    out.finish().map_err(Error::Stdout)?;
    if let Some(e) = failure {
        return Err(e);
    }
    if code == crate::exit_code::VIOLATION {
        note("invariant violation in a design expected to be safe (see the violations row)");
    }
    // A VMM stall is what the report's reason then says.
    if let (true, Some(why)) = (report.host.vmm_stalls.count > 0, &report.reason) {
        note(&format!("error: {why}"));
    }
    for (d, e) in report
        .designs
        .iter()
        .filter_map(|d| d.phase_end.as_ref().map(|e| (d, e)))
        .filter(|(_, e)| e.stalled())
    {
        note(&format!(
            "warning: {}'s phase did not quiesce ({} task(s) left; see the STALLED line): the designs after it did not run",
            d.design, e.stalled_tasks
        ));
    }
    for w in &report.host.warnings {
        note(&format!("warning: {w}"));
    }
    late_signal();
    Ok(code)
}
