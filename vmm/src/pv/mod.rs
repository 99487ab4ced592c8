//! Paravirtual IPI paths, host side: the capability probe ([`probe`]), the
//! mechanism that serves each feature ([`mechanism`]), `--pv` parsing, and
//! the VMM's own PV interface ([`host`]): per-vCPU `preempted` state the
//! injectors write, and the port-I/O hypercall (send-ipi, yield-to).

pub mod host;
pub mod probe;

pub use host::{HypercallError, PvHost, PvHostTotals};
pub use probe::{host_pv, HostPv, ProbeError};

use abi::pv;

/// Which mechanism serves a feature in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// KVM's own (steal time, its `preempted` flag, hypercalls).
    Kvm,
    /// ipivirt's VMM-level interface.
    Ipivirt,
    /// Both are read (`preempted`: KVM's flag or ipivirt's state).
    KvmAndIpivirt,
    /// Not available on this host.
    Unavailable,
}

impl Mechanism {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Kvm => "kvm",
            Mechanism::Ipivirt => "ipivirt",
            Mechanism::KvmAndIpivirt => "kvm+ipivirt",
            Mechanism::Unavailable => "unavailable",
        }
    }
}

/// The mechanism that serves `feature` (one [`abi::pv`] bit) on a host.
pub fn mechanism(feature: u32, host: &HostPv) -> Mechanism {
    match feature {
        pv::STEAL_TIME if host.steal_time => Mechanism::Kvm,
        pv::STEAL_TIME => Mechanism::Unavailable,
        pv::PREEMPTED if host.steal_time => Mechanism::KvmAndIpivirt,
        pv::SEND_IPI if host.kvm_send_ipi() => Mechanism::Kvm,
        pv::SCHED_YIELD if host.kvm_sched_yield() => Mechanism::Kvm,
        _ => Mechanism::Ipivirt,
    }
}

/// The [`abi::Control::pv_kvm`] bits for a host: features KVM serves
/// (for `preempted`: KVM's flag is read too).
pub fn kvm_bits(host: &HostPv) -> u32 {
    (0..pv::NAMES.len() as u32)
        .map(|i| 1 << i)
        .filter(|&f| {
            matches!(
                mechanism(f, host),
                Mechanism::Kvm | Mechanism::KvmAndIpivirt
            )
        })
        .fold(0, |a, f| a | f)
}

/// Parses a feature list (`send-ipi,sched-yield`; `all`; `none`) into
/// [`abi::pv`] bits.
pub fn parse_features(list: &str) -> Result<u32, String> {
    let mut bits = 0;
    for name in list
        .split([',', '+'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let bit = match name {
            "all" => pv::ALL,
            "none" => 0,
            _ => pv::NAMES
                .iter()
                .position(|n| *n == name)
                .map(|i| 1 << i)
                .ok_or_else(|| {
                    format!(
                        "unknown PV feature '{name}': valid features are {}, all, none",
                        pv::NAMES.join(", ")
                    )
                })?,
        };
        if bits & bit != 0 {
            return Err(format!("PV feature '{name}' is named twice"));
        }
        bits |= bit;
    }
    Ok(bits)
}

/// `a+b+c` for feature bits (empty for none).
pub fn feature_names(bits: u32) -> String {
    let mut names = Vec::new();
    pv::names(bits, |n| names.push(n));
    names.join("+")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_features() {
        assert_eq!(
            parse_features("send-ipi,sched-yield"),
            Ok(pv::SEND_IPI | pv::SCHED_YIELD)
        );
        assert_eq!(parse_features("all"), Ok(pv::ALL));
        assert_eq!(parse_features(""), Ok(0));
        assert!(parse_features("warp-drive")
            .unwrap_err()
            .contains("valid features"));
        assert_eq!(
            feature_names(pv::PREEMPTED | pv::FLUSH_DEFER),
            "preempted+flush-defer"
        );
    }

    #[test]
    fn test_mechanisms_follow_the_probe() {
        let mut host = HostPv {
            steal_time: true,
            kvm_hypercalls: false,
            hypercall_note: String::new(),
            cpuid_send_ipi: true,
            cpuid_sched_yield: true,
            cpuid_flush_tlb: true,
            amd: true,
            preempted_flag: Some(false),
            preempted_flag_note: String::new(),
            elapsed: Default::default(),
        };
        assert_eq!(mechanism(pv::SEND_IPI, &host), Mechanism::Ipivirt);
        assert_eq!(mechanism(pv::PREEMPTED, &host), Mechanism::KvmAndIpivirt);
        assert_eq!(mechanism(pv::FLUSH_DEFER, &host), Mechanism::Ipivirt);
        assert_eq!(kvm_bits(&host), pv::STEAL_TIME | pv::PREEMPTED);
        host.kvm_hypercalls = true;
        assert_eq!(mechanism(pv::SEND_IPI, &host), Mechanism::Kvm);
        assert_eq!(mechanism(pv::SCHED_YIELD, &host), Mechanism::Kvm);
        host.steal_time = false;
        assert_eq!(mechanism(pv::STEAL_TIME, &host), Mechanism::Unavailable);
        assert_eq!(mechanism(pv::PREEMPTED, &host), Mechanism::Ipivirt);
    }
}
