//! The commands: boot, run and sweep, and what they print.

use std::io::Write;

use clap::Parser;
use std::process::ExitCode;

use super::text::{host_block, online_line, partial_text};
use super::{Cli, Command, RunArgs, RunCmd, SweepCmd};
use crate::machine::{self, BootReport, MachineConfig};
use crate::scenario::{Report, Scenario};
use crate::Error;

/// Prints to stdout; a closed pipe (`ipivirt ... | head`) is not an error.
fn say(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Boots, printing the partial report if a signal stopped the run.
fn boot_or_partial(config: &MachineConfig) -> Result<BootReport, Error> {
    crate::signals::install()?;
    machine::boot(config).inspect_err(|e| {
        if let Error::Interrupted(p) = e {
            say(&partial_text(p));
        }
    })
}

fn write_file(path: &std::path::Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Output {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs a scenario with the progress bar (stderr, not with --quiet).
fn run_scenario(args: &RunCmd, config: MachineConfig) -> Result<Report, Error> {
    let scenario = Scenario::from_config(config);
    let label = format!(
        "{} on {} vCPUs",
        crate::scenario::workload_name(scenario.config().workload),
        scenario.config().vcpus
    );
    crate::signals::install()?;
    crate::progress::with_progress(
        !args.common.quiet,
        scenario.expected_duration(),
        &label,
        || scenario.run(),
    )
    .inspect_err(|e| {
        if let Error::Interrupted(p) = e {
            say(&partial_text(p));
        }
    })
}

fn run(args: &RunCmd) -> Result<u8, Error> {
    let config = args.machine_config();
    if config.requested_pv() != 0 {
        // The host capability probe (cached: the run reuses it).
        let probe = crate::pv::probe::host_pv_at(&config.kvm_path)?;
        say(&format!("pv: {}", probe.summary()));
    }
    let report = run_scenario(args, config.clone())?;
    let Some(raw) = report.raw.as_deref() else {
        unreachable!("a fresh report carries the guest's")
    };
    say(&online_line(raw));
    if raw.tsc_khz > 0 {
        say(&format!(
            "guest TSC {} kHz; guest-measured boot (BSP entry to all online) {:.3} ms",
            raw.tsc_khz,
            raw.guest_boot_cycles as f64 / raw.tsc_khz as f64
        ));
    }
    if !matches!(config.workload, abi::Workload::None | abi::Workload::Spin) {
        say(&crate::report::scheduler_text(&config, raw));
    }
    let floor = report.floor_text();
    if !floor.is_empty() {
        say(&floor);
    }
    if !raw.guest.designs.is_empty() {
        say(&crate::report::designs_text(raw));
    }
    let block = host_block(&raw.host, raw.tsc_khz, config.vcpus);
    if !block.is_empty() {
        say(&block);
    }
    if let Some(path) = &args.output.json {
        write_file(path, &report.to_json())?;
    }
    if let Some(path) = &args.output.svg {
        write_file(path, &report.svg().unwrap_or_default())?;
    }
    let code = report.exit_code();
    if code == crate::exit_code::VIOLATION {
        let _ = writeln!(
            std::io::stderr().lock(),
            "ipivirt: invariant violation in a design expected to be safe (see the violations row)"
        );
    }
    Ok(code)
}

fn sweep(args: &SweepCmd) -> Result<u8, Error> {
    if args.run.output.svg.is_some() {
        return Err(Error::Scenario(
            "--svg plots one run: use `ipivirt run --svg` for a cell".into(),
        ));
    }
    let base = args.run.machine_config();
    let available = base.inject.host_cpus.clone().unwrap_or_default();
    let cells = crate::sweep::plan(
        &available,
        args.ratios.as_ref().map(|r| r.0.as_slice()),
        args.vcpus_list.as_deref(),
        base.vcpus,
    );
    let mut code = crate::exit_code::OK;
    let mut table = crate::sweep::table_header() + "\n";
    let mut reports = Vec::new();
    for cell in &cells {
        let outcome = if cell.skipped.is_some() {
            Err(String::new())
        } else {
            let mut config = base.clone();
            config.vcpus = cell.vcpus;
            config.inject.host_cpus = Some(cell.host_cpus.clone());
            match run_scenario(&args.run, config) {
                Ok(r) => {
                    code = code.max(r.exit_code());
                    Ok(r)
                }
                Err(e) => {
                    if code == crate::exit_code::OK {
                        code = e.exit_code();
                    }
                    Err(e.to_string())
                }
            }
        };
        let rows = crate::sweep::table_rows(cell, outcome.as_ref().map_err(String::as_str));
        let _ = write!(std::io::stderr().lock(), "{rows}");
        table += &rows;
        if let Ok(r) = outcome {
            reports.push(r);
        }
    }
    say(table.trim_end());
    if let Some(path) = &args.run.output.json {
        let json = serde_json::to_string_pretty(&reports).expect("reports serialise");
        write_file(path, &json)?;
    }
    Ok(code)
}

fn boot(args: &RunArgs) -> Result<u8, Error> {
    let report = boot_or_partial(&args.machine_config())?;
    say(&online_line(&report));
    Ok(crate::exit_code::OK)
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
            let dumps = e.register_dumps();
            if !dumps.is_empty() {
                let _ = writeln!(err, "vCPU registers at stop:");
                let _ = crate::vcpu::write_dumps(&mut err, dumps, &e.focus_vcpus());
            }
            ExitCode::from(e.exit_code())
        }
    }
}
