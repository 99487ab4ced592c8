//! The `ipivirt` command line (clap). `ipivirt` with no subcommand is
//! `ipivirt run` with the defaults. The CLI parses and prints, nothing
//! else: what a scenario may be is [`crate::Scenario::validate`]'s.
//!
//! - `args.rs`: the clap structs (every flag and its help text);
//!   `parse.rs`: their value parsers.
//! - `config.rs`: the parsed options as a [`MachineConfig`](crate::MachineConfig).
//! - `run.rs`, `sweep.rs`, `boot.rs`: the commands.
//! - `print.rs`: where the report goes (stdout, or stderr when stdout
//!   carries a file) and the report files. The text it prints is rendered
//!   in [`crate::report`].

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

mod args;
mod boot;
mod config;
mod parse;
mod print;
mod run;
mod sweep;

use args::{Cli, Command};
use print::note;

pub use parse::parse_duration;

/// Environment variable that overrides the KVM device path.
pub const KVM_PATH_ENV: &str = "IPIVIRT_KVM_PATH";

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
        None => run::run(&cli.run),
        Some(Command::Run(args)) => run::run(args),
        Some(Command::Boot(args)) => boot::boot(args),
        Some(Command::Sweep(args)) => sweep::sweep(args),
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

#[cfg(test)]
mod tests;
