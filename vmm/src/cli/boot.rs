//! `ipivirt boot`: boot N vCPUs, print the online line, exit.

use super::args::RunArgs;
use super::print::{late_signal, Printer};
use crate::machine;
use crate::report::{online_line, partial_text};
use crate::scenario::Report;
use crate::Error;

pub(super) fn boot(args: &RunArgs) -> Result<u8, Error> {
    crate::signals::install()?;
    let mut out = Printer::new(false);
    let config = args.machine_config();
    let report = machine::boot(&config).inspect_err(|e| {
        if let Error::Interrupted(p) = e {
            out.say(&partial_text(p, &config));
        }
    })?;
    out.say(&online_line(&Report::new(&config, report)));
    late_signal();
    out.finish().map_err(Error::Stdout)?;
    Ok(crate::exit_code::OK)
}
