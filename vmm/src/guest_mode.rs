//! Which kernel the guest runs: the plain CPL0 kernel, or the PVM host's
//! native mode (`../shared/design/native-mode.md`), chosen by
//! `--guest-mode`, [`crate::Scenario::guest_mode`] or the environment
//! variable `IPIVIRT_GUEST_MODE` (the default for every run, so a whole
//! test suite can run in either mode).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The environment variable that sets the default guest mode.
pub const ENV: &str = "IPIVIRT_GUEST_MODE";

/// Where the host module that offers the native mode shows itself.
const KVM_PVM_SYSFS: &str = "/sys/module/kvm_pvm";

/// The guest kernel mode a run asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestMode {
    /// The native mode where the host offers it, plain everywhere else.
    #[default]
    Auto,
    /// The plain CPL0 kernel, on every host.
    Plain,
    /// The native mode; a host without it is an error (exit 2).
    Pvm,
}

impl GuestMode {
    /// Every mode, in `--help` order.
    pub const ALL: [GuestMode; 3] = [GuestMode::Auto, GuestMode::Pvm, GuestMode::Plain];

    /// The spelling of the flag and the environment variable.
    pub fn name(self) -> &'static str {
        match self {
            GuestMode::Auto => "auto",
            GuestMode::Plain => "plain",
            GuestMode::Pvm => "pvm",
        }
    }

    /// The control block's code ([`abi::guest_mode`]).
    pub fn code(self) -> u32 {
        match self {
            GuestMode::Auto => abi::guest_mode::AUTO,
            GuestMode::Plain => abi::guest_mode::PLAIN,
            GuestMode::Pvm => abi::guest_mode::PVM_NATIVE,
        }
    }

    /// The default: `IPIVIRT_GUEST_MODE` if set, else `auto`. A value that
    /// is not a mode is an error naming the variable.
    pub fn from_env() -> Result<GuestMode, GuestModeError> {
        match std::env::var(ENV) {
            Ok(v) if !v.is_empty() => v.parse().map_err(|e: GuestModeError| GuestModeError {
                value: e.value,
                from: Some(ENV),
            }),
            _ => Ok(GuestMode::Auto),
        }
    }
}

impl fmt::Display for GuestMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A guest mode name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}invalid guest mode '{value}' (expected auto, pvm or plain)", from.map(|s| format!("{s}: ")).unwrap_or_default())]
pub struct GuestModeError {
    /// What was given.
    pub value: String,
    /// Where it came from (an environment variable), if not a flag.
    pub from: Option<&'static str>,
}

impl FromStr for GuestMode {
    type Err = GuestModeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GuestMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| GuestModeError {
                value: s.to_string(),
                from: None,
            })
    }
}

/// Whether this host's `/dev/kvm` offers the PVM native mode (it comes from
/// the `kvm_pvm` module).
pub fn host_offers_pvm() -> bool {
    host_offers_pvm_at(Path::new(KVM_PVM_SYSFS))
}

fn host_offers_pvm_at(sysfs: &Path) -> bool {
    sysfs.is_dir()
}

/// What the VMM does for a requested mode on this host: whether the guest
/// may enter native mode (its page tables must allow it), or why the
/// request cannot be met.
pub fn resolve(mode: GuestMode, host_pvm: bool) -> Result<bool, String> {
    match (mode, host_pvm) {
        (GuestMode::Plain, _) => Ok(false),
        (GuestMode::Auto, pvm) => Ok(pvm),
        (GuestMode::Pvm, true) => Ok(true),
        (GuestMode::Pvm, false) => Err(format!(
            "--guest-mode pvm: this host's /dev/kvm does not offer the PVM native mode \
             ({KVM_PVM_SYSFS} does not exist; use --guest-mode auto or plain)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_guest_mode_names_round_trip() {
        for m in GuestMode::ALL {
            assert_eq!(m.name().parse::<GuestMode>(), Ok(m));
        }
        let e = "native".parse::<GuestMode>().unwrap_err();
        assert!(e.to_string().contains("'native'"), "{e}");
    }

    #[test]
    fn test_guest_mode_host_check_reads_sysfs() {
        let dir = std::env::temp_dir().join(format!("ipivirt-sysfs-{}", std::process::id()));
        let module = dir.join("kvm_pvm");
        assert!(!host_offers_pvm_at(&module));
        std::fs::create_dir_all(&module).unwrap();
        assert!(host_offers_pvm_at(&module));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_guest_mode_pvm_without_host_is_refused() {
        assert_eq!(resolve(GuestMode::Auto, false), Ok(false));
        assert_eq!(resolve(GuestMode::Auto, true), Ok(true));
        assert_eq!(resolve(GuestMode::Plain, true), Ok(false));
        let e = resolve(GuestMode::Pvm, false).unwrap_err();
        assert!(e.contains("kvm_pvm"), "{e}");
    }
}
