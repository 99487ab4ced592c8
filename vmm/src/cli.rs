//! The `ipivirt` command line (clap). `ipivirt` with no subcommand is
//! `ipivirt run` with the defaults.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::machine::{self, BootReport, MachineConfig};
use crate::{ConsoleMode, Error, TestHook};

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
    /// Test only: make the guest fail on purpose.
    #[arg(long, hide = true, value_enum, default_value_t = HookArg::None)]
    test_hook: HookArg,
    /// Test only: the vCPU the hook acts on.
    #[arg(long, hide = true, default_value_t = 0)]
    test_hook_vcpu: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HookArg {
    None,
    Panic,
    TripleFault,
    Hang,
    BadResultsMagic,
    BadOnlineCount,
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
    fn machine_config(&self) -> MachineConfig {
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
    let report = machine::boot(&args.machine_config())?;
    say(&online_line(&report));
    if report.tsc_khz > 0 {
        say(&format!(
            "guest TSC {} kHz; guest-measured boot (BSP entry to all online) {:.3} ms",
            report.tsc_khz,
            report.guest_boot_cycles as f64 / report.tsc_khz as f64
        ));
    }
    Ok(())
}

fn boot(args: &RunArgs) -> Result<(), Error> {
    let report = machine::boot(&args.machine_config())?;
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
