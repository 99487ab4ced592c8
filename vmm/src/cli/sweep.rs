//! `ipivirt sweep`: the run for each overcommit ratio or vCPU count, one
//! table (rows stream to stderr as cells finish) and one JSON report.

use std::io::Write;

use super::args::SweepCmd;
use super::print::{write_output, Outputs, Printer};
use super::run::{run_repeats, Pace};
use crate::machine::MachineConfig;
use crate::provenance::Provenance;
use crate::scenario::{Scenario, Status};
use crate::sweep::{SweepCell, SweepReport};
use crate::Error;

/// The configuration of cell `index` of a sweep: its vCPUs and host
/// CPUs, and a trace file of its own.
pub(super) fn cell_config(
    base: &MachineConfig,
    cell: &crate::sweep::Cell,
    index: usize,
) -> MachineConfig {
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

pub(super) fn sweep(args: &SweepCmd) -> Result<u8, Error> {
    crate::signals::install()?;
    // Options of one run that a sweep has no use for (--svg, --scenario,
    // --placement) are refused here: they are the sweep command's, and the
    // library has no sweep of its own to refuse them.
    if args.run.output.svg.is_some() {
        return Err(Error::Scenario(
            "--svg plots one run: use `ipivirt run --svg` for a cell".into(),
        ));
    }
    let provenance = Provenance::start();
    let outputs = Outputs::check(&args.run.output, args.run.scenario.trace.as_deref())?;
    if args.run.scenario.shape.scenario.is_some() || args.run.scenario.shape.placement.is_some() {
        return Err(Error::Scenario(
            "--scenario and --placement lay out one run's vCPUs: use them with `ipivirt run` \
             (a sweep changes the vCPU and host CPU counts per cell)"
                .into(),
        ));
    }
    let base = args.run.machine_config()?;
    Scenario::from_config(base.clone()).validate_options()?;
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
