//! Where the text report goes, and the report files of run and sweep.

use std::io::Write;
use std::path::Path;

use super::args::OutputArgs;
use crate::machine::MachineConfig;
use crate::output::{self, OutputError, Target};
use crate::provenance::Provenance;
use crate::scenario::FailedRun;
use crate::Error;

/// Where the text report goes (stdout, or stderr when stdout carries
/// `--json -`), and the first error writing it: a report lost to a full
/// disk must not pass for success. A closed pipe (`ipivirt ... | head`)
/// is not an error.
pub(super) struct Printer {
    to_stderr: bool,
    failed: Option<std::io::Error>,
}

impl Printer {
    pub(super) fn new(to_stderr: bool) -> Self {
        Printer {
            to_stderr,
            failed: None,
        }
    }

    pub(super) fn say(&mut self, text: &str) {
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
    pub(super) fn finish(self) -> Result<(), std::io::Error> {
        self.failed.map_or(Ok(()), Err)
    }
}

/// Prints to stderr (diagnostics, never the report).
pub(super) fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "ipivirt: {text}");
}

/// The report files of run and sweep, checked before anything boots.
pub(super) struct Outputs {
    pub(super) json: Option<Target>,
    pub(super) svg: Option<Target>,
}

impl Outputs {
    pub(super) fn check(o: &OutputArgs, trace: Option<&Path>) -> Result<Self, Error> {
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
    pub(super) fn stdout_taken(&self) -> bool {
        self.json == Some(Target::Stdout) || self.svg == Some(Target::Stdout)
    }

    /// A run that did not finish must not leave an earlier run's report
    /// behind: the failure's JSON replaces it, a stale SVG is removed.
    pub(super) fn record_failure(
        &self,
        config: &MachineConfig,
        e: &Error,
        provenance: &Provenance,
    ) {
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

pub(super) fn write_output(target: &Target, text: &str) -> Result<(), Error> {
    output::write(target, text.as_bytes()).map_err(|source| Error::Output {
        path: target.display().into(),
        source,
    })
}

/// Says that a signal which came after the run had finished was ignored.
pub(super) fn late_signal() {
    if let Some(signal) = crate::signals::pending() {
        note(&format!(
            "{} arrived after the run had finished: ignored (the report is complete)",
            crate::signals::name(signal)
        ));
    }
}
