//! The commands: boot, run and sweep, and what they print.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use super::text::{host_block, online_line, partial_text};
use super::{Cli, Command, OutputArgs, PreemptArg, RunArgs, RunCmd, SweepCmd};
use crate::machine::{self, MachineConfig};
use crate::output::{self, OutputError, Target};
use crate::provenance::Provenance;
use crate::report::Measured;
use crate::scenario::{FailedRun, Report, Scenario, Status};
use crate::sweep::{SweepCell, SweepReport};
use crate::Error;

/// Where the text report goes (stdout, or stderr when stdout carries
/// `--json -`), and the first error writing it: a report lost to a full
/// disk must not pass for success. A closed pipe (`ipivirt ... | head`)
/// is not an error.
struct Printer {
    to_stderr: bool,
    failed: Option<std::io::Error>,
}

impl Printer {
    fn new(to_stderr: bool) -> Self {
        Printer {
            to_stderr,
            failed: None,
        }
    }

    fn say(&mut self, text: &str) {
        if self.failed.is_some() {
            return;
        }
        let result = if self.to_stderr {
            writeln!(std::io::stderr().lock(), "{text}")
        } else {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").and_then(|()| out.flush())
        };
        match result {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => self.failed = Some(e),
            _ => {}
        }
    }

    /// The write error, if one happened.
    fn finish(self) -> Result<(), std::io::Error> {
        self.failed.map_or(Ok(()), Err)
    }
}

/// Prints to stderr (diagnostics, never the report).
fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "ipivirt: {text}");
}

/// The report files of run and sweep, checked before anything boots.
struct Outputs {
    json: Option<Target>,
    svg: Option<Target>,
}

impl Outputs {
    fn check(o: &OutputArgs, trace: Option<&Path>) -> Result<Self, Error> {
        let json = o
            .json
            .as_deref()
            .map(|p| output::check("--json", p))
            .transpose()?;
        let svg = o
            .svg
            .as_deref()
            .map(|p| output::check("--svg", p))
            .transpose()?;
        if let Some(t) = trace {
            if output::check("--trace", t)? == Target::Stdout {
                return Err(OutputError::Stdout("--trace needs a file name, not -".into()).into());
            }
        }
        if json == Some(Target::Stdout) && svg == Some(Target::Stdout) {
            return Err(OutputError::Stdout(
                "--json - and --svg -: only one of them can go to standard output".into(),
            )
            .into());
        }
        Ok(Outputs { json, svg })
    }

    /// Whether stdout carries a file (the text report then goes to stderr).
    fn stdout_taken(&self) -> bool {
        self.json == Some(Target::Stdout) || self.svg == Some(Target::Stdout)
    }

    /// A run that did not finish must not leave an earlier run's report
    /// behind: the failure's JSON replaces it, a stale SVG is removed.
    fn record_failure(&self, config: &MachineConfig, e: &Error, provenance: &Provenance) {
        if let Some(t) = &self.json {
            let failed = FailedRun::new(config, e, provenance.clone());
            let status = serde_json::to_value(failed.status).unwrap_or_default();
            match output::write(t, failed.to_json().as_bytes()) {
                Ok(()) if *t != Target::Stdout => note(&format!(
                    "wrote the JSON of the unfinished run to {} (status {status})",
                    t.display()
                )),
                Ok(()) => {}
                Err(io) => {
                    note(&format!("cannot write {}: {io}", t.display()));
                    if output::remove_stale(t).unwrap_or(false) {
                        note(&format!("removed the earlier {}", t.display()));
                    }
                }
            }
        }
        if let Some(t) = &self.svg {
            if output::remove_stale(t).unwrap_or(false) {
                note(&format!(
                    "removed the earlier {}: this run has no plot",
                    t.display()
                ));
            }
        }
    }
}

fn write_output(target: &Target, text: &str) -> Result<(), Error> {
    output::write(target, text.as_bytes()).map_err(|source| Error::Output {
        path: target.display().into(),
        source,
    })
}

/// Where a sweep is: cell `cell` of `cells`, and how much slower than
/// their workload's length the earlier cells ran (boot, calibration and
/// emulation included), so that the bar's estimate is in this host's time.
struct Pace {
    what: &'static str,
    cell: usize,
    cells: usize,
    slowdown: f64,
}

/// Runs a scenario with the progress bar (stderr, not with --quiet); an
/// interrupted run prints its partial report.
fn run_scenario(
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
            out.say(&partial_text(p, Measured::of(scenario.config(), &p.host)));
        }
    })
}

/// An explicit `--preempt antagonist` that SCHED_FIFO refuses is refused
/// (exit 2): only the default falls back to `pause`, since a run that
/// silently measures something else than asked is not the one asked for.
fn check_explicit_antagonist(args: &RunCmd) -> Result<(), Error> {
    if args.scenario.preempt != Some(PreemptArg::Antagonist) {
        return Ok(());
    }
    crate::inject::placement::fifo_permitted().map_err(|why| {
        Error::Scenario(format!(
            "--preempt antagonist needs SCHED_FIFO, which this process may not use ({why}): \
             give --preempt pause, or leave --preempt out to fall back to pause"
        ))
    })
}

/// Says that a signal which came after the run had finished was ignored.
fn late_signal() {
    if let Some(signal) = crate::signals::pending() {
        note(&format!(
            "{} arrived after the run had finished: ignored (the report is complete)",
            crate::signals::name(signal)
        ));
    }
}

/// The PV probe (when PV features are asked for) and the run(s).
fn measure(args: &RunCmd, config: &MachineConfig, out: &mut Printer) -> Result<Repeated, Error> {
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
struct Repeated {
    report: Report,
    texts: Vec<String>,
    code: u8,
}

/// Runs the comparison `--repeat` times, each repeat with its own design
/// order and seed ([`crate::stats::repeat_config`]) and, with more than one,
/// a `--trace` file of its own.
fn run_repeats(
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

/// The text report of one run (after the answer block): boot, scheduler,
/// floor, the design table, the host block.
fn run_text(report: &Report, config: &MachineConfig) -> String {
    let Some(raw) = report.raw.as_deref() else {
        unreachable!("a fresh report carries the guest's")
    };
    let mut lines = vec![online_line(raw)];
    if raw.tsc_khz > 0 {
        lines.push(format!(
            "guest TSC {} kHz; guest-measured boot (BSP entry to all online) {:.3} ms",
            raw.tsc_khz,
            raw.guest_boot_cycles as f64 / raw.tsc_khz as f64
        ));
    }
    if !matches!(config.workload, abi::Workload::None | abi::Workload::Spin) {
        lines.push(crate::report::scheduler_text(config, raw));
    }
    let floor = report.floor_text();
    if !floor.is_empty() {
        lines.push(floor);
    }
    if !raw.guest.designs.is_empty() {
        lines.push(crate::report::designs_text(report));
    }
    let block = host_block(
        &raw.host,
        raw.tsc_khz,
        config.vcpus,
        Measured::of(config, &raw.host),
    );
    if !block.is_empty() {
        lines.push(block);
    }
    lines.join("\n")
}

fn run(args: &RunCmd) -> Result<u8, Error> {
    crate::signals::install()?;
    let provenance = Provenance::start();
    let outputs = Outputs::check(&args.output, args.scenario.trace.as_deref())?;
    let config = args.machine_config()?;
    let scenario = Scenario::from_config(config.clone());
    let mut out = Printer::new(outputs.stdout_taken());
    let checked = scenario
        .validate()
        .and_then(|()| match outputs.svg {
            Some(_) => scenario.check_plot(),
            None => Ok(()),
        })
        .and_then(|()| check_explicit_antagonist(args));
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
    let Some(raw) = report.raw.as_deref() else {
        unreachable!("a fresh report carries the guest's")
    };
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
    if let Some(why) = &raw.host.trace_error {
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
    if raw.vmm_stalls.stalled() {
        note(&format!("error: {}", raw.vmm_stalls.describe()));
    }
    for d in raw.guest.designs.iter().filter(|d| d.phase_end.stalled()) {
        note(&format!(
            "warning: {}'s phase did not quiesce ({} task(s) left; see the STALLED line): the designs after it did not run",
            d.label(),
            d.phase_end.stalled_tasks
        ));
    }
    for w in &raw.host.warnings {
        note(&format!("warning: {w}"));
    }
    late_signal();
    Ok(code)
}

/// The configuration of cell `index` of a sweep: its vCPUs and host
/// CPUs, and a trace file of its own.
fn cell_config(base: &MachineConfig, cell: &crate::sweep::Cell, index: usize) -> MachineConfig {
    let mut config = base.clone();
    config.vcpus = cell.vcpus;
    config.inject.host_cpus = Some(cell.host_cpus.clone());
    config.inject.trace = base
        .inject
        .trace
        .as_deref()
        .map(|t| crate::sweep::cell_trace(t, index));
    config
}

fn sweep(args: &SweepCmd) -> Result<u8, Error> {
    crate::signals::install()?;
    if args.run.output.svg.is_some() {
        return Err(Error::Scenario(
            "--svg plots one run: use `ipivirt run --svg` for a cell".into(),
        ));
    }
    let provenance = Provenance::start();
    let outputs = Outputs::check(&args.run.output, args.run.scenario.trace.as_deref())?;
    check_explicit_antagonist(&args.run)?;
    if args.run.scenario.shape.scenario.is_some() || args.run.scenario.shape.placement.is_some() {
        return Err(Error::Scenario(
            "--scenario and --placement lay out one run's vCPUs: use them with `ipivirt run` \
             (a sweep changes the vCPU and host CPU counts per cell)"
                .into(),
        ));
    }
    let base = args.run.machine_config()?;
    let available = base.inject.host_cpus.clone().unwrap_or_default();
    let mut cells = crate::sweep::plan(
        &available,
        args.ratios.as_ref().map(|r| r.0.as_slice()),
        args.vcpus_list.as_deref(),
        base.vcpus,
    );
    // Every cell is checked before the first boots; one that cannot be
    // measured is skipped, saying why, and a sweep of nothing is refused.
    for (i, cell) in cells.iter_mut().enumerate() {
        if cell.skipped.is_some() {
            continue;
        }
        if let Err(e) = Scenario::from_config(cell_config(&base, cell, i)).validate() {
            cell.skipped = Some(e.to_string());
        }
    }
    if cells.iter().all(|c| c.skipped.is_some()) {
        let why: Vec<String> = cells.iter().filter_map(|c| c.skipped.clone()).collect();
        return Err(Error::Scenario(format!(
            "every cell of the sweep is skipped: {}",
            why.join("; ")
        )));
    }
    let mut out = Printer::new(outputs.stdout_taken());
    let mut code = crate::exit_code::OK;
    let mut table = crate::sweep::table_header() + "\n";
    let mut json_cells = Vec::new();
    let mut failed = None;
    let mut stopped = None;
    let mut done = 0;
    let mut pace = Pace {
        what: "cell",
        cell: 0,
        cells: cells.len(),
        slowdown: 1.0,
    };
    // Rows stream to stderr as cells finish, each with its cell k/N.
    let _ = writeln!(
        std::io::stderr().lock(),
        "{:>7} {}",
        "cell",
        crate::sweep::table_header()
    );
    for (i, cell) in cells.iter().enumerate() {
        pace.cell = i + 1;
        let config = cell_config(&base, cell, i);
        let mut entry = SweepCell {
            trace: None,
            vcpus: cell.vcpus,
            host_cpus: cell.host_cpus.clone(),
            ratio: cell.ratio(),
            outcome: "ok".into(),
            reason: cell.skipped.clone(),
            report: None,
        };
        // The first SIGINT/SIGTERM stops the sweep as a whole: no cell
        // after it boots.
        stopped = stopped.or(crate::signals::pending());
        if let Some(signal) = stopped {
            entry.outcome = "not-run".into();
            entry.reason = Some(format!(
                "the sweep was interrupted by {}",
                crate::signals::name(signal)
            ));
            if cell.skipped.is_none() {
                table += &crate::sweep::table_rows(cell, Err("not run (interrupted)"))
                    .replace("failed: ", "");
            }
            json_cells.push(entry);
            continue;
        }
        let outcome = if cell.skipped.is_some() {
            entry.outcome = "skipped".into();
            Err(String::new())
        } else {
            entry.trace = config.inject.trace.clone();
            match run_repeats(&args.run, &config, &mut out, Some(&mut pace)) {
                Ok(r) => {
                    code = code.max(r.code);
                    done += 1;
                    Ok(r.report)
                }
                Err(Error::Interrupted(p)) => {
                    stopped = Some(p.signal);
                    entry.outcome = "partial".into();
                    entry.reason = Some(p.to_string());
                    Err(format!("interrupted by {}", crate::signals::name(p.signal)))
                }
                Err(e) => {
                    if code == crate::exit_code::OK {
                        code = e.exit_code();
                    }
                    entry.outcome = "failed".into();
                    entry.reason = Some(e.to_string());
                    failed.get_or_insert(format!("the {} vCPU cell failed: {e}", cell.vcpus));
                    Err(e.to_string())
                }
            }
        };
        let rows = crate::sweep::table_rows(cell, outcome.as_ref().map_err(String::as_str));
        let mut err = std::io::stderr().lock();
        for row in rows.lines() {
            let _ = writeln!(err, "{:>7} {row}", format!("[{}/{}]", i + 1, cells.len()));
        }
        table += &rows;
        entry.report = outcome.ok();
        json_cells.push(entry);
    }
    out.say(table.trim_end());
    for (k, c) in json_cells.iter().enumerate() {
        if let Some(t) = &c.trace {
            out.say(&format!(
                "trace of cell {} ({} vCPUs, {}): {}",
                k + 1,
                c.vcpus,
                c.ratio,
                t.display()
            ));
        }
    }
    let runnable = cells.iter().filter(|c| c.skipped.is_none()).count();
    let (status, reason) = match (stopped, failed) {
        (Some(signal), _) => {
            let why = format!(
                "interrupted by {}: {done} of {runnable} cells ran to the end",
                crate::signals::name(signal)
            );
            out.say(&format!("PARTIAL sweep: {why}"));
            code = crate::signals::exit_code(signal);
            (Status::Partial, Some(why))
        }
        (None, Some(why)) => (Status::Failed, Some(why)),
        (None, None) => (Status::Ok, None),
    };
    if let Some(t) = &outputs.json {
        let report = SweepReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            status,
            reason,
            provenance: provenance.finish(),
            cells: json_cells,
        };
        let json = serde_json::to_string_pretty(&report).expect("reports serialise");
        write_output(t, &json)?;
    }
    out.finish().map_err(Error::Stdout)?;
    Ok(code)
}

fn boot(args: &RunArgs) -> Result<u8, Error> {
    crate::signals::install()?;
    let mut out = Printer::new(false);
    let config = args.machine_config();
    let report = machine::boot(&config).inspect_err(|e| {
        if let Error::Interrupted(p) = e {
            out.say(&partial_text(p, Measured::of(&config, &p.host)));
        }
    })?;
    out.say(&online_line(&report));
    late_signal();
    out.finish().map_err(Error::Stdout)?;
    Ok(crate::exit_code::OK)
}

/// Stack of the thread the CLI runs on (the usual main-thread size).
const MAIN_STACK: usize = 8 << 20;

/// Runs the CLI; returns the process exit code.
///
/// The CLI runs on a thread of its own: the main thread's stack grows on
/// demand, and under a low `ulimit -v` growing it fails with SIGSEGV,
/// while a thread's stack is mapped whole when it starts, so a limit too
/// low for it fails there, with a message.
pub fn main() -> ExitCode {
    // One malloc arena for every thread: glibc otherwise reserves 64 MiB of
    // address space per thread arena (up to 8 per CPU), and a thread whose
    // arena cannot be mapped under a low `ulimit -v` dies in glibc's own
    // fatal error (its TLS destructor registration), which nothing here can
    // catch. The threads allocate little; one arena costs nothing.
    // SAFETY: mallopt only tunes the allocator; called before any other
    // thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let started = std::thread::Builder::new()
        .name("ipivirt".into())
        .stack_size(MAIN_STACK)
        .spawn(cli_main);
    match started {
        // A panic has printed its message; 101 as for a panicking main.
        Ok(cli) => cli.join().unwrap_or(ExitCode::from(101)),
        Err(e) => {
            note(&format!(
                "error: cannot start: {e} (the address-space limit, ulimit -v, is too low)"
            ));
            ExitCode::from(crate::exit_code::HOST_FAILURE)
        }
    }
}

fn cli_main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = match &cli.command {
        None => cli.run.common.quiet,
        Some(Command::Run(a)) => a.common.quiet,
        Some(Command::Boot(a)) => a.quiet,
        Some(Command::Sweep(a)) => a.run.common.quiet,
    };
    let result = match &cli.command {
        None => run(&cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Boot(args)) => boot(args),
        Some(Command::Sweep(args)) => sweep(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "ipivirt: error: {e}");
            // With --quiet the console was captured, not shown: what the
            // guest said last is often the explanation.
            let tail = e.console_tail();
            if quiet && !tail.is_empty() {
                let _ = writeln!(err, "last guest console lines:");
                for line in tail {
                    let _ = writeln!(err, "  {line}");
                }
            }
            let dumps = e.register_dumps();
            if !dumps.is_empty() {
                let _ = writeln!(err, "vCPU registers at stop:");
                let _ = crate::vcpu::write_dumps(&mut err, dumps, &e.focus_vcpus());
            }
            ExitCode::from(e.exit_code())
        }
    }
}
