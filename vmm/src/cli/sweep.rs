//! `ipivirt sweep`: the options as a base scenario and the cells, the
//! sweep itself ([`crate::sweep::run`]), its rows streamed to stderr as
//! cells finish, the table and the JSON report.

use std::io::Write;

use super::args::SweepCmd;
use super::print::{write_output, Outputs, Printer};
use super::run::Shown;
use crate::repeat::{Observer, Step};
use crate::scenario::{Report, Scenario, Status};
use crate::sweep::Cell;
use crate::Error;

/// The sweep as the CLI shows it: each run as `run` shows it ([`Shown`]),
/// and each cell's rows on stderr as it finishes, with its cell k/N.
struct Streamed<'a, 'b>(&'a mut Shown<'b>);

impl Observer for Streamed<'_, '_> {
    fn run(
        &mut self,
        step: Step,
        scenario: &Scenario,
        run: &dyn Fn() -> Result<Report, Error>,
    ) -> Result<Report, Error> {
        self.0.run(step, scenario, run)
    }

    fn sweep_start(&mut self, _cells: &[Cell]) {
        let _ = writeln!(
            std::io::stderr().lock(),
            "{:>7} {}",
            "cell",
            crate::sweep::table_header()
        );
    }

    fn cell_done(&mut self, cell: usize, cells: usize, rows: &str) {
        let mut err = std::io::stderr().lock();
        for row in rows.lines() {
            let _ = writeln!(err, "{:>7} {row}", format!("[{cell}/{cells}]"));
        }
    }
}

pub(super) fn sweep(args: &SweepCmd) -> Result<u8, Error> {
    crate::signals::install()?;
    // Options of one run that a sweep has no use for (--svg, --scenario,
    // --placement) are refused here: they lay out one run, and the sweep
    // sets each cell's shape itself.
    if args.run.output.svg.is_some() {
        return Err(Error::Scenario(
            "--svg plots one run: use `ipivirt run --svg` for a cell".into(),
        ));
    }
    let outputs = Outputs::check(&args.run.output, args.run.scenario.trace.as_deref())?;
    if args.run.scenario.shape.scenario.is_some() || args.run.scenario.shape.placement.is_some() {
        return Err(Error::Scenario(
            "--scenario and --placement lay out one run's vCPUs: use them with `ipivirt run` \
             (a sweep changes the vCPU and host CPU counts per cell)"
                .into(),
        ));
    }
    let base = args.run.machine_config()?;
    let available = base.inject.host_cpus.clone().unwrap_or_default();
    let cells = crate::sweep::plan(
        &available,
        args.ratios.as_ref().map(|r| r.0.as_slice()),
        args.vcpus_list.as_deref(),
        base.vcpus,
    );
    let mut out = Printer::new(outputs.stdout_taken());
    let swept = {
        let mut shown = Shown::new(&args.run, &mut out, false);
        crate::sweep::run(
            &Scenario::from_config(base),
            cells,
            args.run.stats.repeat as usize,
            &mut Streamed(&mut shown),
        )?
    };
    out.say(swept.table.trim_end());
    for (k, c) in swept.report.cells.iter().enumerate() {
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
    if let (Status::Partial, Some(why)) = (swept.report.status, &swept.report.reason) {
        out.say(&format!("PARTIAL sweep: {why}"));
    }
    if let Some(t) = &outputs.json {
        let json = serde_json::to_string_pretty(&swept.report).expect("reports serialise");
        write_output(t, &json)?;
    }
    out.finish().map_err(Error::Stdout)?;
    Ok(swept.code)
}
