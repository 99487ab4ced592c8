//! `ipivirt run`: the PV probe, the `--repeat` runs of one scenario
//! under the progress bar, and the report they print.

use super::args::RunCmd;
use super::print::{late_signal, note, write_output, Outputs, Printer};
use crate::machine::MachineConfig;
use crate::provenance::Provenance;
use crate::report::partial_text;
use crate::scenario::{Report, Scenario};
use crate::Error;

/// Where a sweep is: cell `cell` of `cells`, and how much slower than
/// their workload's length the earlier cells ran (boot, calibration and
/// emulation included), so that the bar's estimate is in this host's time.
pub(super) struct Pace {
    pub(super) what: &'static str,
    pub(super) cell: usize,
    pub(super) cells: usize,
    pub(super) slowdown: f64,
}

/// Runs a scenario with the progress bar (stderr, not with --quiet); an
/// interrupted run prints its partial report.
pub(super) fn run_scenario(
    args: &RunCmd,
    config: MachineConfig,
    out: &mut Printer,
    pace: Option<&mut Pace>,
) -> Result<Report, Error> {
    let scenario = Scenario::from_config(config);
    let mut label = format!(
        "{} on {} vCPUs",
        crate::scenario::workload_name(scenario.config().workload),
        scenario.config().vcpus
    );
    let expected = scenario.expected_duration();
    let mut shown = expected;
    if let Some(p) = &pace {
        label = format!("{} {}/{}: {label}", p.what, p.cell, p.cells);
        shown = expected.mul_f64(p.slowdown);
    }
    let started = std::time::Instant::now();
    let phases = match scenario.config().workload {
        abi::Workload::None => 0,
        _ => scenario.config().ran_designs().len() as u32,
    };
    let result = crate::progress::with_progress(!args.common.quiet, shown, phases, &label, || {
        scenario.run()
    });
    if let (Some(p), false) = (pace, expected.is_zero()) {
        p.slowdown = (started.elapsed().as_secs_f64() / expected.as_secs_f64()).clamp(1.0, 1e4);
    }
    result.inspect_err(|e| {
        if let Error::Interrupted(p) = e {
            out.say(&partial_text(p, scenario.config()));
        }
    })
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
    run_repeats(args, config, out, None)
}

/// The `--repeat N` runs of one scenario, combined: the report (the first
/// repeat's, with the summary over all), each repeat's text, and the
/// worst exit code among them.
pub(super) struct Repeated {
    pub(super) report: Report,
    pub(super) texts: Vec<String>,
    pub(super) code: u8,
}

/// Runs the comparison `--repeat` times, each repeat with its own design
/// order and seed ([`crate::stats::repeat_config`]) and, with more than one,
/// a `--trace` file of its own.
pub(super) fn run_repeats(
    args: &RunCmd,
    config: &MachineConfig,
    out: &mut Printer,
    mut pace: Option<&mut Pace>,
) -> Result<Repeated, Error> {
    let n = args.stats.repeat.max(1) as usize;
    let orders = crate::stats::repeat_orders(config.seed, config.designs.len(), n);
    let mut runs = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    let mut code = crate::exit_code::OK;
    let mut own = Pace {
        what: "repeat",
        cell: 0,
        cells: n,
        slowdown: 1.0,
    };
    for (k, order) in orders.iter().enumerate() {
        let mut c = crate::stats::repeat_config(config, k, order);
        if n > 1 {
            c.inject.trace = c
                .inject
                .trace
                .as_deref()
                .map(|t| crate::sweep::cell_trace(t, k));
        }
        let report = match pace.as_deref_mut() {
            Some(p) => run_scenario(args, c.clone(), out, Some(p))?,
            None if n > 1 => {
                own.cell = k + 1;
                run_scenario(args, c.clone(), out, Some(&mut own))?
            }
            None => run_scenario(args, c.clone(), out, None)?,
        };
        code = code.max(report.exit_code());
        let mut text = String::new();
        if n > 1 {
            text += &format!(
                "repeat {}/{n}: seed {}, designs in the order {}\n",
                k + 1,
                c.seed,
                report
                    .designs
                    .iter()
                    .map(|d| d.design.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        text += &run_text(&report, &c);
        texts.push(text);
        runs.push(report);
    }
    Ok(Repeated {
        report: crate::stats::combine(runs, &orders),
        texts,
        code,
    })
}

/// The text report of one run (after the answer block), rendered from
/// the report model alone ([`crate::report::run_text`]); `_config`, the
/// run's, is there for the callers: the model already says what it does.
pub(super) fn run_text(report: &Report, _config: &MachineConfig) -> String {
    crate::report::run_text(report)
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
