//! A sweep as a library call: every cell checked before the first boots,
//! then each run (its `--repeat` runs, [`crate::repeat`]) in plan order,
//! the first SIGINT/SIGTERM stopping the sweep as a whole, and one
//! [`SweepReport`] with the table. What is shown while it goes on is the
//! [`Observer`]'s; nothing here prints.

use super::{cell_trace, table_header, table_rows, Cell, SweepCell, SweepReport};
use crate::machine::MachineConfig;
use crate::provenance::Provenance;
use crate::repeat::{run_repeats, Observer, Repeated};
use crate::scenario::{Report, Scenario, Status};
use crate::Error;

/// What [`run`] returns.
#[derive(Debug, Clone)]
pub struct Swept {
    /// The `sweep --json` report: every cell's outcome and the sweep's
    /// status.
    pub report: SweepReport,
    /// The table: its header, then every cell's rows in plan order (a
    /// cell a signal kept from running says so; a skipped one too, unless
    /// the signal came first).
    pub table: String,
    /// The exit code: the worst of the cells' (the first failure's when
    /// no cell before it had one), the signal's when one stopped the sweep.
    pub code: u8,
}

/// The configuration of cell `index` of a sweep: its vCPUs and host
/// CPUs, and a trace file of its own.
pub fn cell_config(base: &MachineConfig, cell: &Cell, index: usize) -> MachineConfig {
    let mut config = base.clone();
    config.vcpus = cell.vcpus;
    config.inject.host_cpus = Some(cell.host_cpus.clone());
    config.inject.trace = base.inject.trace.as_deref().map(|t| cell_trace(t, index));
    config
}

/// Checks every cell before the first boots: the options all cells share
/// ([`Scenario::validate_options`]), then each cell's scenario; a cell
/// that cannot be measured is skipped, saying why, and a sweep of nothing
/// is refused.
pub fn check_cells(base: &Scenario, cells: &mut [Cell]) -> Result<(), Error> {
    base.validate_options()?;
    for (i, cell) in cells.iter_mut().enumerate() {
        if cell.skipped.is_some() {
            continue;
        }
        let scenario = Scenario::from_config(cell_config(base.config(), cell, i));
        if let Err(e) = scenario.validate() {
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
    Ok(())
}

/// Runs the sweep of `cells` ([`super::plan`]) over `base`: the cells are
/// checked ([`check_cells`]), then each runs `repeats` times
/// ([`Scenario::run_repeated`]) in plan order. A cell that fails is
/// recorded and the sweep goes on; the first SIGINT/SIGTERM
/// ([`crate::signals::pending`]; the caller installs the handler,
/// [`crate::signals::install`]) stops it: the cell it interrupts is
/// `partial`, the ones after it `not-run`.
pub fn run(
    base: &Scenario,
    mut cells: Vec<Cell>,
    repeats: usize,
    observer: &mut (impl Observer + ?Sized),
) -> Result<Swept, Error> {
    let provenance = Provenance::start();
    check_cells(base, &mut cells)?;
    observer.sweep_start(&cells);
    let n = cells.len();
    let done = run_cells(
        base.config(),
        &cells,
        observer,
        &crate::signals::pending,
        &mut |i, config, observer| run_repeats(config, Some((i + 1, n)), repeats, observer),
    );
    let Done {
        table,
        cells: json_cells,
        mut code,
        stopped,
        failed,
        ran,
    } = done;
    let runnable = cells.iter().filter(|c| c.skipped.is_none()).count();
    let (status, reason) = match (stopped, failed) {
        (Some(signal), _) => {
            code = crate::signals::exit_code(signal);
            let why = format!(
                "interrupted by {}: {ran} of {runnable} cells ran to the end",
                crate::signals::name(signal)
            );
            (Status::Partial, Some(why))
        }
        (None, Some(why)) => (Status::Failed, Some(why)),
        (None, None) => (Status::Ok, None),
    };
    Ok(Swept {
        report: SweepReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            status,
            reason,
            provenance: provenance.finish(),
            cells: json_cells,
        },
        table,
        code,
    })
}

/// What the loop over the cells gathered.
struct Done {
    table: String,
    cells: Vec<SweepCell>,
    /// The worst code of the cells that ran (before a signal's).
    code: u8,
    stopped: Option<i32>,
    /// The first failure, as the sweep's reason.
    failed: Option<String>,
    /// Cells that ran to the end.
    ran: usize,
}

/// What runs one cell's repeats: cell `index` (from 0) as
/// `config`, told to the observer.
type RunCell<'a, O> = dyn FnMut(usize, &MachineConfig, &mut O) -> Result<Repeated, Error> + 'a;

/// The loop of [`run`] over checked cells, with the signal poll and the
/// runner given (tests drive it without a VM).
fn run_cells<O: Observer + ?Sized>(
    base: &MachineConfig,
    cells: &[Cell],
    observer: &mut O,
    pending: &dyn Fn() -> Option<i32>,
    run_cell: &mut RunCell<'_, O>,
) -> Done {
    let mut done = Done {
        table: table_header() + "\n",
        cells: Vec::with_capacity(cells.len()),
        code: crate::exit_code::OK,
        stopped: None,
        failed: None,
        ran: 0,
    };
    for (i, cell) in cells.iter().enumerate() {
        let config = cell_config(base, cell, i);
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
        done.stopped = done.stopped.or_else(pending);
        if let Some(signal) = done.stopped {
            entry.outcome = "not-run".into();
            entry.reason = Some(format!(
                "the sweep was interrupted by {}",
                crate::signals::name(signal)
            ));
            if cell.skipped.is_none() {
                done.table +=
                    &table_rows(cell, Err("not run (interrupted)")).replace("failed: ", "");
            }
            done.cells.push(entry);
            continue;
        }
        let outcome: Result<Report, String> = if cell.skipped.is_some() {
            entry.outcome = "skipped".into();
            Err(String::new())
        } else {
            entry.trace = config.inject.trace.clone();
            match run_cell(i, &config, observer) {
                Ok(r) => {
                    done.code = done.code.max(r.code);
                    done.ran += 1;
                    Ok(r.report)
                }
                Err(Error::Interrupted(p)) => {
                    done.stopped = Some(p.signal);
                    entry.outcome = "partial".into();
                    entry.reason = Some(p.to_string());
                    Err(format!("interrupted by {}", crate::signals::name(p.signal)))
                }
                Err(e) => {
                    if done.code == crate::exit_code::OK {
                        done.code = e.exit_code();
                    }
                    entry.outcome = "failed".into();
                    entry.reason = Some(e.to_string());
                    done.failed
                        .get_or_insert(format!("the {} vCPU cell failed: {e}", cell.vcpus));
                    Err(e.to_string())
                }
            }
        };
        let rows = table_rows(cell, outcome.as_ref().map_err(String::as_str));
        observer.cell_done(i + 1, cells.len(), &rows);
        done.table += &rows;
        entry.report = outcome.ok();
        done.cells.push(entry);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::plan;
    use std::cell::Cell as Flag;
    use std::time::Duration;

    fn base() -> Scenario {
        Scenario::new()
            .vcpus(2)
            .host_cpus(&[0])
            .duration(Duration::from_millis(100))
            .timeout(Duration::from_secs(30))
    }

    #[test]
    fn test_cell_config_takes_the_cells_shape_and_trace() {
        let mut b = base().config().clone();
        b.inject.trace = Some("t.json".into());
        let cells = plan(&[0, 1], None, Some(&[4, 8]), 2);
        let c = cell_config(&b, &cells[1], 1);
        assert_eq!(c.vcpus, 8);
        assert_eq!(c.inject.host_cpus, Some(vec![0, 1]));
        assert_eq!(c.inject.trace, Some("t-2.json".into()));
        assert_eq!(c.designs, b.designs);
    }

    #[test]
    fn test_check_cells_skips_what_validate_refuses() {
        // 0 vCPUs is refused by validate; a cell the plan skipped (2 vCPUs
        // at 1:1 on 1 host CPU) stays skipped as the plan said.
        let r = super::super::parse_ratios("1:1,2:1").unwrap();
        let mut cells = plan(&[0], None, Some(&[0, 2]), 2);
        cells.extend(plan(&[0], Some(&r), Some(&[2]), 2));
        check_cells(&base(), &mut cells).unwrap();
        let skipped: Vec<bool> = cells.iter().map(|c| c.skipped.is_some()).collect();
        assert_eq!(skipped, [true, false, true, false]);
        let refused = cells[0].skipped.as_deref().unwrap();
        assert!(refused.starts_with("invalid scenario: "), "{refused}");
        assert_eq!(
            cells[2].skipped.as_deref(),
            Some("2 vCPUs at 1:1 need 2 host CPUs, 1 given")
        );
    }

    #[test]
    fn test_check_cells_refuses_a_sweep_of_nothing() {
        let mut cells = plan(&[0], None, Some(&[0]), 2);
        let e = check_cells(&base(), &mut cells).unwrap_err();
        assert_eq!(e.exit_code(), crate::exit_code::USAGE);
        assert!(
            e.to_string().starts_with(
                "invalid scenario: every cell of the sweep is skipped: invalid scenario: "
            ),
            "{e}"
        );
    }

    /// Records the rows it is told.
    #[derive(Default)]
    struct Rows(Vec<(usize, usize, String)>);

    impl Observer for Rows {
        fn cell_done(&mut self, cell: usize, cells: usize, rows: &str) {
            self.0.push((cell, cells, rows.to_string()));
        }
    }

    fn interrupted(signal: i32) -> Error {
        Error::Interrupted(Box::new(crate::results::PartialReport {
            signal,
            elapsed: Duration::from_millis(1500),
            vcpus: 2,
            online: 2,
            boot_time: None,
            tsc_khz: 0,
            host: Default::default(),
        }))
    }

    #[test]
    fn test_a_failed_cell_is_recorded_and_the_sweep_goes_on() {
        let mut cells = plan(&[0, 1], None, Some(&[2, 3, 4]), 2);
        cells[1].skipped = Some("no".into());
        let mut rows = Rows::default();
        let mut booted = Vec::new();
        let done = run_cells(
            base().config(),
            &cells,
            &mut rows,
            &|| None,
            &mut |i, c, _| {
                booted.push((i, c.vcpus));
                Err(Error::Scenario(format!("cell {i}")))
            },
        );
        assert_eq!(booted, [(0, 2), (2, 4)], "a skipped cell does not boot");
        let outcomes: Vec<&str> = done.cells.iter().map(|c| c.outcome.as_str()).collect();
        assert_eq!(outcomes, ["failed", "skipped", "failed"]);
        assert_eq!(done.code, crate::exit_code::USAGE);
        assert_eq!(
            done.failed.as_deref(),
            Some("the 2 vCPU cell failed: invalid scenario: cell 0")
        );
        assert_eq!(done.cells[1].reason.as_deref(), Some("no"));
        assert_eq!((done.stopped, done.ran), (None, 0));
        assert_eq!(rows.0.len(), 3, "every cell's rows are told");
        assert_eq!((rows.0[2].0, rows.0[2].1), (3, 3));
        assert!(rows.0[1].2.contains(" skipped: no"), "{}", rows.0[1].2);
        assert!(rows.0[0].2.contains(" failed: invalid scenario: cell 0"));
        assert_eq!(
            done.table,
            table_header() + "\n" + &rows.0.iter().map(|r| r.2.as_str()).collect::<String>()
        );
    }

    #[test]
    fn test_the_first_signal_stops_the_sweep() {
        let cells = plan(&[0, 1], None, Some(&[2, 3, 4, 5]), 2);
        let mut rows = Rows::default();
        // The second cell's run is interrupted: the cells after it do not
        // boot, though no signal is pending any more.
        let mut booted = 0;
        let done = run_cells(
            base().config(),
            &cells,
            &mut rows,
            &|| None,
            &mut |i, _, _| {
                booted += 1;
                match i {
                    0 => Err(Error::Scenario("boom".into())),
                    _ => Err(interrupted(libc::SIGTERM)),
                }
            },
        );
        assert_eq!(booted, 2);
        let outcomes: Vec<&str> = done.cells.iter().map(|c| c.outcome.as_str()).collect();
        assert_eq!(outcomes, ["failed", "partial", "not-run", "not-run"]);
        assert_eq!(done.stopped, Some(libc::SIGTERM));
        assert!(done.cells[1]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("interrupted by SIGTERM after 1.50 s"));
        assert_eq!(
            done.cells[2].reason.as_deref(),
            Some("the sweep was interrupted by SIGTERM")
        );
        assert_eq!(rows.0.len(), 2, "the cells not run are not streamed");
        assert!(rows.0[1].2.contains(" failed: interrupted by SIGTERM"));
        let not_run: Vec<&str> = done
            .table
            .lines()
            .filter(|l| l.ends_with(" not run (interrupted)"))
            .collect();
        assert_eq!(not_run.len(), 2, "{}", done.table);
        assert!(!done.table.contains("failed: not run"));
    }

    #[test]
    fn test_a_pending_signal_stops_before_the_next_cell() {
        let mut cells = plan(&[0, 1], None, Some(&[2, 3, 4]), 2);
        cells[2].skipped = Some("no".into());
        let signal = Flag::new(None);
        let mut rows = Rows::default();
        let done = run_cells(
            base().config(),
            &cells,
            &mut rows,
            &|| signal.get(),
            &mut |_, _, _| {
                signal.set(Some(libc::SIGINT));
                Err(Error::Scenario("boom".into()))
            },
        );
        let outcomes: Vec<&str> = done.cells.iter().map(|c| c.outcome.as_str()).collect();
        assert_eq!(outcomes, ["failed", "not-run", "not-run"]);
        assert_eq!(done.stopped, Some(libc::SIGINT));
        // A skipped cell after the signal has no row; a runnable one says
        // it did not run.
        assert_eq!(done.table.lines().count(), 3, "{}", done.table);
        assert!(done.table.ends_with(" not run (interrupted)\n"));
        assert_eq!(
            done.cells[2].reason.as_deref(),
            Some("the sweep was interrupted by SIGINT")
        );
    }
}
