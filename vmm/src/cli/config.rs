//! The parsed options as the run's [`MachineConfig`]: the options given,
//! a `--scenario`'s values for those left out, the defaults for the rest.
//! Nothing is refused here that [`crate::Scenario::validate`] would not
//! refuse from the library too.

use std::path::PathBuf;
use std::time::Duration;

use super::args::{PreemptArg, RunArgs, RunCmd};
use super::parse::{CpuList, Placement, VcpuList, Weights};
use super::KVM_PATH_ENV;
use crate::inject::{self, InjectConfig, PreemptMode};
use crate::machine::{self, MachineConfig};
use crate::scenario::Preset;
use crate::{ConsoleMode, Error};

impl RunArgs {
    pub(super) fn machine_config(&self) -> MachineConfig {
        // Empty is unset (a `VAR= ipivirt` typo must not name the empty path).
        let kvm_path = std::env::var_os(KVM_PATH_ENV)
            .filter(|v| !v.is_empty())
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
            test_hook: self.test_hook,
            test_hook_vcpu: self.test_hook_vcpu,
            test_hook_arg: self.test_hook_arg,
            preempt_trace_off: self.no_preempt_trace,
            guest_mode: self.guest_mode,
            ..MachineConfig::new(self.vcpus)
        }
    }
}

impl RunCmd {
    /// The run's configuration: the options given, a `--scenario`'s values
    /// for those left out, the defaults for the rest.
    pub(super) fn machine_config(&self) -> Result<MachineConfig, Error> {
        let s = &self.scenario;
        let sh = &s.shape;
        let mut config = self.common.machine_config();
        config.workload = s.workload;
        if let Some(Weights(w)) = &s.torture_weights {
            config.torture_weights = *w;
        }
        let pv = s.pv.map_or(0, |p| p.0);
        crate::scenario::set_columns(&mut config, &s.designs.0, pv);
        config.guest_preempt_prob = s.guest_preempt_prob;
        config.alloc_fail_prob = s.alloc_fail_prob;
        config.quiesce_bound = s.quiesce_timeout;
        config.duration = s.duration.unwrap_or(crate::machine::DEFAULT_DURATION);
        config.forced_migration = s.forced_migration;
        config.tick_hz = s.tick_hz;
        config.probe_period = s.probe_period.filter(|p| !p.is_zero());
        config.preempt_window = s.window;
        // Default: every CPU of the process's mask (validated there).
        let host_cpus = match &s.host_cpus {
            Some(CpuList(cpus)) => cpus.clone(),
            None => inject::placement::process_cpus().unwrap_or_default(),
        };
        config.inject = InjectConfig {
            host_cpus: Some(host_cpus.clone()),
            preempt: PreemptMode::Antagonist,
            max_duty: f64::from(s.max_duty) / 100.0,
            trace: s.trace.clone(),
            migrate_every: Some(Duration::from_millis(5)),
            ..InjectConfig::default()
        };
        if let Some(name) = sh.scenario {
            Preset::new(name, &host_cpus, config.vcpus)?.apply(&mut config);
        }
        // Explicit options win over the scenario's values.
        if let Some(d) = s.duration {
            config.duration = d;
        }
        let inj = &mut config.inject;
        match s.preempt {
            Some(PreemptArg::None) => inj.preempt = PreemptMode::None,
            Some(PreemptArg::Pause) => inj.preempt = PreemptMode::Pause,
            // Named, antagonist does not fall back to pause: without
            // SCHED_FIFO the scenario is refused (`Scenario::validate`).
            Some(PreemptArg::Antagonist) => {
                inj.preempt = PreemptMode::Antagonist;
                inj.antagonist_required = true;
            }
            None => {}
        }
        if let Some(d) = s.preempt_len {
            inj.preempt_len = d;
        }
        if let Some(d) = s.preempt_every {
            inj.preempt_every = d;
        }
        if let Some(d) = s.migrate_every {
            inj.migrate_every = Some(d).filter(|d| !d.is_zero());
        }
        if let Some(Placement(p)) = &sh.placement {
            inj.placement = Some(p.clone());
        }
        if let Some(CpuList(c)) = &sh.preempt_host_cpus {
            inj.preempt_host_cpus = Some(c.clone());
        }
        if let Some(VcpuList(v)) = &sh.preempt_vcpus {
            inj.preempt_vcpus = Some(v.clone());
        }
        if let Some(n) = sh.issuers_per_cpu {
            config.issuers_per_cpu = n;
        }
        if let Some(m) = sh.hogs_per_cpu {
            config.hogs_per_cpu = m;
        }
        if let Some(VcpuList(v)) = &sh.initiators {
            config.initiators = Some(v.clone());
        }
        config.inject.hotplug_every = Some(s.hotplug_every).filter(|d| !d.is_zero());
        config.inject.hotplug_len = s.hotplug_len;
        config.torture_onoff = Some(s.torture_onoff).filter(|d| !d.is_zero());
        Ok(config)
    }
}
