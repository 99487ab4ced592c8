//! The design columns of a run (`--designs` with `--pv`): a wait-mask
//! design, each with the PV features of its phase. The CLI parses the
//! option here and the library builds the same columns
//! ([`Scenario::columns`]), so that both mean the same by a `+pv` column
//! and by the PV columns `--pv` adds.

use abi::Design;

use super::Scenario;
use crate::machine::MachineConfig;

/// The PV features of one design column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnPv {
    /// Its own ([`abi::pv`] bits; 0: none).
    Own(u32),
    /// Those the run names run-wide (`--pv`): the `+pv` column.
    FromPvFlag,
}

/// One design column as named: `task-local`, `task-local+sched-yield`,
/// `upstream+pv`.
pub type DesignColumn = (Design, ColumnPv);

/// Parses a `--designs` list (`upstream,task-local+sched-yield,stack+pv`).
pub fn parse_columns(s: &str) -> Result<Vec<DesignColumn>, String> {
    let valid = || {
        Design::ALL
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let (name, features) = item.split_once('+').unwrap_or((item, ""));
        let d = Design::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| format!("unknown design '{name}': valid designs are {}", valid()))?;
        if item.ends_with('+') {
            return Err(format!("design '{item}' names no PV feature after '+'"));
        }
        let pv = match features {
            "pv" => ColumnPv::FromPvFlag,
            f => ColumnPv::Own(crate::pv::parse_features(f)?),
        };
        if out.contains(&(d, pv)) {
            return Err(format!("design '{item}' is named twice"));
        }
        out.push((d, pv));
    }
    if out.is_empty() {
        return Err(format!("name at least one design: {}", valid()));
    }
    if out.len() > abi::MAX_DESIGNS {
        return Err(format!("at most {} designs per run", abi::MAX_DESIGNS));
    }
    Ok(out)
}

/// The phases of `list` with run-wide features `pv`: the designs in run
/// order and each phase's PV features. With PV path features in `pv` and
/// no PV column named, the PV columns are added: `task-local+F` for each
/// feature F (the series with each mechanism alone), and `upstream+ALL`
/// when there are several (Linux today: the pinned wait with every PV
/// help).
pub fn phases(list: &[DesignColumn], pv: u32) -> (Vec<Design>, Vec<u32>) {
    use abi::pv::{FLUSH_DEFER, SCHED_YIELD, SEND_IPI};
    let path = pv & (SEND_IPI | SCHED_YIELD | FLUSH_DEFER);
    let mut designs = Vec::new();
    let mut phase = Vec::new();
    for &(d, c) in list {
        designs.push(d);
        phase.push(match c {
            ColumnPv::Own(bits) => bits,
            ColumnPv::FromPvFlag => pv,
        });
    }
    let named = list.iter().any(|(_, c)| *c != ColumnPv::Own(0));
    if path != 0 && !named {
        let series = if list.iter().any(|(d, _)| *d == Design::TaskLocal) {
            Design::TaskLocal
        } else {
            list.first().map_or(Design::TaskLocal, |d| d.0)
        };
        for f in [SEND_IPI, SCHED_YIELD, FLUSH_DEFER] {
            if path & f != 0 {
                designs.push(series);
                phase.push(f);
            }
        }
        if path.count_ones() > 1 {
            designs.push(Design::Upstream);
            phase.push(path);
        }
    }
    (designs, phase)
}

impl Scenario {
    /// The design columns `list` with the run-wide PV features `pv`, as
    /// `--designs` and `--pv` give them (see [`phases`]): steal time and
    /// `preempted` apply run-wide, the path features per phase.
    pub fn columns(mut self, list: &[DesignColumn], pv: u32) -> Self {
        set_columns(&mut self.config, list, pv);
        self
    }
}

/// Sets `config`'s phases to the columns `list` with run-wide features
/// `pv` (what [`Scenario::columns`] does; the CLI's config is built here).
pub fn set_columns(config: &mut MachineConfig, list: &[DesignColumn], pv: u32) {
    let (designs, design_pv) = phases(list, pv);
    config.designs = designs;
    config.design_pv = design_pv;
    config.pv = pv & (abi::pv::STEAL_TIME | abi::pv::PREEMPTED);
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::pv::{FLUSH_DEFER, SCHED_YIELD, SEND_IPI, STEAL_TIME};

    #[test]
    fn test_pv_flag_adds_one_column_per_path_feature_and_upstream_with_all() {
        let list = parse_columns("upstream,task-local").unwrap();
        let (d, p) = phases(&list, SEND_IPI | SCHED_YIELD | STEAL_TIME);
        assert_eq!(
            d,
            [
                Design::Upstream,
                Design::TaskLocal,
                Design::TaskLocal,
                Design::TaskLocal,
                Design::Upstream
            ]
        );
        assert_eq!(p, [0, 0, SEND_IPI, SCHED_YIELD, SEND_IPI | SCHED_YIELD]);
        // Named PV columns: nothing is added; `+pv` takes --pv's bits.
        let list = parse_columns("upstream,stack+pv,task-local+flush-defer").unwrap();
        let (d, p) = phases(&list, SEND_IPI);
        assert_eq!(d, [Design::Upstream, Design::Stack, Design::TaskLocal]);
        assert_eq!(p, [0, SEND_IPI, FLUSH_DEFER]);
    }

    #[test]
    fn test_parse_columns_refuses_what_it_cannot_run() {
        assert!(parse_columns("nope")
            .unwrap_err()
            .contains("valid designs are"));
        assert!(parse_columns("stack+")
            .unwrap_err()
            .contains("no PV feature"));
        assert!(parse_columns("stack,stack").unwrap_err().contains("twice"));
        assert!(parse_columns(" , ").unwrap_err().contains("at least one"));
    }

    #[test]
    fn test_library_columns_are_the_clis() {
        let list = parse_columns("task-local").unwrap();
        let s = Scenario::new().columns(&list, SCHED_YIELD | STEAL_TIME);
        assert_eq!(s.config().designs, [Design::TaskLocal, Design::TaskLocal]);
        assert_eq!(s.config().design_pv, [0, SCHED_YIELD]);
        assert_eq!(s.config().pv, STEAL_TIME);
    }
}
