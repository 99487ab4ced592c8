//! The `ipivirt` command line (clap). `ipivirt` with no subcommand is
//! `ipivirt run` with the defaults.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::machine::{self, BootReport, MachineConfig};
use crate::{ConsoleMode, Error, TestHook, Workload};

/// Environment variable that overrides the KVM device path.
pub const KVM_PATH_ENV: &str = "IPIVIRT_KVM_PATH";

/// ipivirt: how cross-CPU function calls (IPIs) behave on preempted and
/// migrated vCPUs.
#[derive(Debug, Parser)]
#[command(
    name = "ipivirt",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One scenario: boot the guest and report (the default command).
    Run(RunArgs),
    /// Boot N vCPUs, print `online N/N vCPUs in X ms`, exit.
    Boot(RunArgs),
}

/// Options shared by `run` and `boot`.
#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// Guest CPUs.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=abi::MAX_VCPUS as i64))]
    vcpus: u32,
    /// Seeds every random choice, host and guest.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Watchdog for the whole run, in seconds.
    #[arg(long, default_value_t = 120.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Do not print the guest console.
    #[arg(long, short)]
    quiet: bool,
    /// What the guest runs after boot: none, idle (scheduler and latency
    /// probe only), hogs (CPU-bound user tasks), churn (task create/exit).
    #[arg(long, value_enum)]
    workload: Option<WorkloadArg>,
    /// Measured time of the workload (us, ms or s; plain numbers are s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    duration: Duration,
    /// Workload tasks on each vCPU.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    tasks_per_cpu: u32,
    /// Chance per scheduler tick that the running task is moved to another
    /// vCPU (0..1): makes tasks hop CPUs.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    forced_migration: f64,
    /// Scheduler tick in Hz (default: 1000 on hardware, 100 where guest
    /// kernel code is emulated).
    #[arg(long, value_parser = clap::value_parser!(u32).range(10..=10_000))]
    tick_hz: Option<u32>,
    /// Latency probe period (default: 1ms on hardware, 10ms where guest
    /// kernel code is emulated).
    #[arg(long, value_parser = parse_duration)]
    probe_period: Option<Duration>,
    /// Test only: make the guest fail on purpose.
    #[arg(long, hide = true, value_enum, default_value_t = HookArg::None)]
    test_hook: HookArg,
    /// Test only: the vCPU the hook acts on.
    #[arg(long, hide = true, default_value_t = 0)]
    test_hook_vcpu: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WorkloadArg {
    None,
    Idle,
    Hogs,
    Churn,
}

impl From<WorkloadArg> for Workload {
    fn from(w: WorkloadArg) -> Self {
        match w {
            WorkloadArg::None => Workload::None,
            WorkloadArg::Idle => Workload::Idle,
            WorkloadArg::Hogs => Workload::Hogs,
            WorkloadArg::Churn => Workload::Churn,
        }
    }
}

/// Parses `250us`, `2ms`, `1.5s` or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 200us, 2ms, 1.5s)"))?;
    let secs = v * scale;
    if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "{s} is out of range: give a duration above 0 and at most a day"
        ))
    }
}

fn parse_probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("'{s}' is not a probability between 0 and 1")),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HookArg {
    None,
    Panic,
    TripleFault,
    Hang,
    BadResultsMagic,
    BadOnlineCount,
    UserFault,
}

impl From<HookArg> for TestHook {
    fn from(h: HookArg) -> Self {
        match h {
            HookArg::None => TestHook::None,
            HookArg::Panic => TestHook::Panic,
            HookArg::TripleFault => TestHook::TripleFault,
            HookArg::Hang => TestHook::Hang,
            HookArg::BadResultsMagic => TestHook::BadResultsMagic,
            HookArg::BadOnlineCount => TestHook::BadOnlineCount,
            HookArg::UserFault => TestHook::UserFault,
        }
    }
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
        Ok(secs)
    } else {
        Err(format!("{s} is out of range: give 0 < SECS <= 86400"))
    }
}

impl RunArgs {
    fn machine_config(&self, default_workload: WorkloadArg) -> MachineConfig {
        let kvm_path = std::env::var_os(KVM_PATH_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(machine::DEFAULT_KVM_PATH));
        MachineConfig {
            vcpus: self.vcpus,
            seed: self.seed,
            timeout: Duration::from_secs_f64(self.timeout),
            kvm_path,
            console: if self.quiet {
                ConsoleMode::Capture
            } else {
                ConsoleMode::Stderr
            },
            test_hook: self.test_hook.into(),
            test_hook_vcpu: self.test_hook_vcpu,
            workload: self.workload.unwrap_or(default_workload).into(),
            duration: self.duration,
            tasks_per_cpu: self.tasks_per_cpu,
            forced_migration: self.forced_migration,
            tick_hz: self.tick_hz,
            probe_period: self.probe_period,
        }
    }
}

fn online_line(r: &BootReport) -> String {
    format!(
        "online {}/{} vCPUs in {:.1} ms",
        r.online,
        r.vcpus,
        r.boot_time.as_secs_f64() * 1e3
    )
}

/// Prints to stdout; a closed pipe (`ipivirt ... | head`) is not an error.
fn say(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn run(args: &RunArgs) -> Result<(), Error> {
    let config = args.machine_config(WorkloadArg::Idle);
    let report = machine::boot(&config)?;
    say(&online_line(&report));
    say(&crate::report::scheduler_text(&config, &report));
    Ok(())
}

fn boot(args: &RunArgs) -> Result<(), Error> {
    let report = machine::boot(&args.machine_config(WorkloadArg::None))?;
    say(&online_line(&report));
    Ok(())
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        None => run(&cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Boot(args)) => boot(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cli_parses_boot_and_default_run() {
        let c = Cli::try_parse_from(["ipivirt", "boot", "--vcpus", "64"]).unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Boot(RunArgs { vcpus: 64, .. }))
        ));
        let c = Cli::try_parse_from(["ipivirt"]).unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.run.vcpus, 4);
    }

    #[test]
    fn test_cli_rejects_bad_values() {
        for args in [
            &["ipivirt", "boot", "--vcpus", "0"][..],
            &["ipivirt", "boot", "--vcpus", "5000"],
            &["ipivirt", "boot", "--timeout", "-1"],
            &["ipivirt", "boot", "--timeout", "soon"],
            &["ipivirt", "boot", "--test-hook", "explode"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
