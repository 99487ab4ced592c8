//! Where a report comes from: what decides whether two runs can be
//! compared (the command, the build, the host kernel and KVM module, and
//! how loaded the host was at the start and the end).

use serde::{Deserialize, Serialize};

/// The `provenance` object of every JSON report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The argument list of the process (argv, the program first).
    pub command: Vec<String>,
    /// ipivirt's version.
    pub version: String,
    /// The git commit ipivirt was built from (`-dirty`: with uncommitted
    /// changes); null when not built from a checkout.
    pub commit: Option<String>,
    /// The host kernel's release (`uname -r`); null if unreadable.
    pub host_kernel: Option<String>,
    /// The loaded KVM vendor module(s) (`kvm_intel`, `kvm_amd`,
    /// `kvm_pvm`, ...); null if none is visible.
    pub kvm_module: Option<String>,
    /// The guest kernel that ran (`plain` or `pvm-native`); before a run,
    /// the mode asked for (`auto`, `pvm`, `plain`).
    pub guest_mode: String,
    /// Host load averages (1, 5, 15 min) when the run started.
    pub load_start: Option<[f64; 3]>,
    /// The same when it ended.
    pub load_end: Option<[f64; 3]>,
}

impl Provenance {
    /// Everything known at the start of a run (`load_end` still null).
    pub fn start() -> Self {
        Provenance {
            command: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            commit: option_env!("IPIVIRT_GIT_COMMIT").map(str::to_string),
            host_kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            kvm_module: kvm_modules(),
            guest_mode: crate::guest_mode::GuestMode::from_env()
                .unwrap_or_default()
                .name()
                .into(),
            load_start: load_average(),
            load_end: None,
        }
    }

    /// Records the load at the end.
    pub fn finish(mut self) -> Self {
        self.load_end = load_average();
        self
    }
}

/// `kvm_*` entries of /sys/module (the vendor modules; `kvm` itself is
/// common to all), joined with `+`.
fn kvm_modules() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/module")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kvm_"))
        .collect();
    names.sort();
    (!names.is_empty()).then(|| names.join("+"))
}

/// The three load averages of /proc/loadavg.
fn load_average() -> Option<[f64; 3]> {
    parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

fn parse_loadavg(s: &str) -> Option<[f64; 3]> {
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_loadavg() {
        assert_eq!(
            parse_loadavg("3.44 1.32 0.49 5/127 6684\n"),
            Some([3.44, 1.32, 0.49])
        );
        assert_eq!(parse_loadavg("3.44 x"), None);
        assert_eq!(parse_loadavg(""), None);
    }

    #[test]
    fn test_start_and_finish_fill_the_host_fields() {
        let p = Provenance::start().finish();
        assert!(
            ["auto", "pvm", "plain"].contains(&p.guest_mode.as_str()),
            "{p:?}"
        );
        assert!(!p.command.is_empty());
        assert!(p.host_kernel.is_some() && p.load_start.is_some() && p.load_end.is_some());
    }
}
