//! `--repeat N` as a library call: the comparison run `N` times, each
//! repeat with its own seed and shuffled design order
//! ([`crate::stats::repeat_orders`]), combined into one report
//! ([`crate::stats::combine`]).
//!
//! What a caller shows while the runs go on (a progress bar, each repeat's
//! text, a sweep's rows) is its [`Observer`]'s: nothing here prints, so a
//! library user or a bench runs `N` repeats (or a sweep,
//! [`crate::sweep::run`]) without the CLI.
//!
//! ```no_run
//! use ipivirt_vmm::Scenario;
//!
//! let done = Scenario::new().vcpus(4).run_repeated(3, &mut ()).expect("a KVM host");
//! for s in &done.report.summary {
//!     println!("{}: {:?}", s.design, s.ratios.get("call_p99"));
//! }
//! ```

use crate::machine::MachineConfig;
use crate::scenario::{Report, Scenario};
use crate::Error;

/// Which run an [`Observer`] is told about: its sweep cell (if any) and
/// its repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The sweep cell, from 1, and the sweep's cell count (None: not a
    /// sweep).
    pub cell: Option<(usize, usize)>,
    /// The repeat, from 1.
    pub repeat: usize,
    /// How many repeats.
    pub repeats: usize,
}

/// What the caller of [`Scenario::run_repeated`] or [`crate::sweep::run`]
/// is told as the runs go. Every method defaults to doing nothing beyond
/// the run, so `&mut ()` observes nothing.
pub trait Observer {
    /// Runs one repeat: `run` boots `scenario` and returns its report. The
    /// default only calls `run`; the CLI wraps it in its progress bar and
    /// prints an interrupted run's partial report.
    fn run(
        &mut self,
        step: Step,
        scenario: &Scenario,
        run: &dyn Fn() -> Result<Report, Error>,
    ) -> Result<Report, Error> {
        let _ = (step, scenario);
        run()
    }

    /// A repeat ran to its report (before the repeats are combined);
    /// `scenario` is the one it ran (its seed and design order).
    fn repeat_done(&mut self, step: Step, scenario: &Scenario, report: &Report) {
        let _ = (step, scenario, report);
    }

    /// A sweep's cells are checked (the skipped ones say why) and the
    /// first is about to boot.
    fn sweep_start(&mut self, cells: &[crate::sweep::Cell]) {
        let _ = cells;
    }

    /// Sweep cell `cell` (from 1) of `cells` ran, failed or was skipped:
    /// its table rows ([`crate::sweep::table_rows`]). The cells a signal
    /// kept from running are not reported (their rows are in the table
    /// [`crate::sweep::run`] returns).
    fn cell_done(&mut self, cell: usize, cells: usize, rows: &str) {
        let _ = (cell, cells, rows);
    }
}

/// The observer that observes nothing.
impl Observer for () {}

/// The repeats of a comparison, combined.
#[derive(Debug, Clone)]
pub struct Repeated {
    /// The first repeat's report with every repeat's record and the
    /// summary over all of them ([`crate::stats::combine`]).
    pub report: Report,
    /// The worst exit code among the repeats ([`Report::exit_code`]).
    pub code: u8,
}

/// The configurations of `repeats` repeats of `config` (at least one) and
/// their design orders as indexes into `config.designs`: each with the seed
/// `config.seed + repeat - 1` and its shuffled order
/// ([`crate::stats::repeat_config`]) and, with more than one, a `--trace`
/// file of its own (`t.json` gives `t-1.json`, `t-2.json`, ...).
pub fn plan(config: &MachineConfig, repeats: usize) -> (Vec<MachineConfig>, Vec<Vec<usize>>) {
    let n = repeats.max(1);
    let orders = crate::stats::repeat_orders(config.seed, config.designs.len(), n);
    let configs = orders
        .iter()
        .enumerate()
        .map(|(k, order)| {
            let mut c = crate::stats::repeat_config(config, k, order);
            if n > 1 {
                c.inject.trace = c
                    .inject
                    .trace
                    .as_deref()
                    .map(|t| crate::sweep::cell_trace(t, k));
            }
            c
        })
        .collect();
    (configs, orders)
}

impl Scenario {
    /// Runs the comparison `repeats` times (0 counts as 1), each repeat
    /// with its own seed and design order ([`plan`]), and combines the
    /// reports. The first error (an interrupted repeat's included) ends
    /// the repeats and is returned.
    pub fn run_repeated(
        &self,
        repeats: usize,
        observer: &mut (impl Observer + ?Sized),
    ) -> Result<Repeated, Error> {
        run_repeats(self.config(), None, repeats, observer)
    }
}

/// [`Scenario::run_repeated`] of `config`, as sweep cell `cell` (if any).
pub(crate) fn run_repeats(
    config: &MachineConfig,
    cell: Option<(usize, usize)>,
    repeats: usize,
    observer: &mut (impl Observer + ?Sized),
) -> Result<Repeated, Error> {
    let (configs, orders) = plan(config, repeats);
    let n = configs.len();
    let mut runs = Vec::with_capacity(n);
    let mut code = crate::exit_code::OK;
    for (k, c) in configs.into_iter().enumerate() {
        let step = Step {
            cell,
            repeat: k + 1,
            repeats: n,
        };
        let scenario = Scenario::from_config(c);
        let report = observer.run(step, &scenario, &|| scenario.run())?;
        code = code.max(report.exit_code());
        observer.repeat_done(step, &scenario, &report);
        runs.push(report);
    }
    Ok(Repeated {
        report: crate::stats::combine(runs, &orders),
        code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::Design;
    use std::path::{Path, PathBuf};

    fn base() -> MachineConfig {
        let mut c = MachineConfig::new(2);
        c.designs = vec![
            Design::Upstream,
            Design::TaskLocal,
            Design::Stack,
            Design::AllocInPath,
        ];
        c.seed = 5;
        c.inject.trace = Some(PathBuf::from("d/t.json"));
        c
    }

    #[test]
    fn test_plan_one_repeat_keeps_order_seed_and_trace() {
        let (configs, orders) = plan(&base(), 1);
        assert_eq!(orders, vec![vec![0, 1, 2, 3]]);
        assert_eq!(configs.len(), 1);
        assert_eq!(configs[0].designs, base().designs);
        assert_eq!(configs[0].seed, 5);
        assert_eq!(
            configs[0].inject.trace.as_deref(),
            Some(Path::new("d/t.json"))
        );
        // 0 repeats is one.
        assert_eq!(plan(&base(), 0).1, orders);
    }

    #[test]
    fn test_plan_shuffles_per_repeat_from_the_seed() {
        let (configs, orders) = plan(&base(), 3);
        assert_eq!(orders, crate::stats::repeat_orders(5, 4, 3), "seeded");
        assert_eq!(plan(&base(), 3).1, orders, "same seed, same orders");
        for (k, (c, order)) in configs.iter().zip(&orders).enumerate() {
            assert_eq!(c.seed, 5 + k as u64, "--seed + repeat - 1");
            let want: Vec<Design> = order.iter().map(|&i| base().designs[i]).collect();
            assert_eq!(c.designs, want, "repeat {k} runs its order");
            let trace = format!("d/t-{}.json", k + 1);
            assert_eq!(c.inject.trace.as_deref(), Some(Path::new(&trace)));
        }
        let mut other = base();
        other.seed = 6;
        assert_ne!(plan(&other, 3).1, orders, "another seed, other orders");
    }

    #[test]
    fn test_plan_without_trace_adds_none() {
        let mut c = base();
        c.inject.trace = None;
        assert!(plan(&c, 2).0.iter().all(|c| c.inject.trace.is_none()));
    }

    /// Counts what it is told and fails every run without booting.
    #[derive(Default)]
    struct Refuse {
        steps: Vec<Step>,
    }

    impl Observer for Refuse {
        fn run(
            &mut self,
            step: Step,
            _: &Scenario,
            _: &dyn Fn() -> Result<Report, Error>,
        ) -> Result<Report, Error> {
            self.steps.push(step);
            Err(Error::Scenario(format!("repeat {}", step.repeat)))
        }
    }

    #[test]
    fn test_the_first_failed_repeat_ends_the_repeats() {
        let mut seen = Refuse::default();
        let e = run_repeats(&base(), Some((2, 3)), 3, &mut seen).unwrap_err();
        assert_eq!(e.to_string(), "invalid scenario: repeat 1");
        assert_eq!(
            seen.steps,
            vec![Step {
                cell: Some((2, 3)),
                repeat: 1,
                repeats: 3
            }]
        );
    }
}
