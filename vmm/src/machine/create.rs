//! [`Machine::create`]: a run's machine, built in named steps (the guest
//! kernel mode, KVM and the limits it sets, the injection plan, guest
//! memory and the image, the VM with its irqchip and vCPUs, the control
//! block, the PV interfaces, the statistics fds, the vCPU threads, the
//! injectors). Each step is a function of what the earlier ones made, in
//! the order the run needs them.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use abi::{pv, Control, Workload};
use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{Machine, MachineConfig};
use crate::console::Console;
use crate::guest_mode::{self, GuestMode};
use crate::inject::{self, HostReport, Injector, Plan};
use crate::pv::{HostPv, PvHost};
use crate::vcpu::{self, RunControl};
use crate::{loader, memory, vm, Error};

/// KVM statistics are read for at most this many vCPUs (one fd each).
const STATS_VCPUS: usize = 256;

/// A probability as the guest's 1/65536 fixed point.
fn per_65536(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * 65536.0).min(65535.0) as u32
}

/// Address space the threads of a run need: one per vCPU (its stack, its
/// signal stack and guard pages) and a handful of others (injectors, the PV
/// probe, the controller) at Rust's default 2 MiB stacks, plus slack for
/// the heap.
fn thread_room(vcpus: u32) -> u64 {
    const VCPU_THREAD: u64 = 512 << 10;
    const OTHER_THREADS: u64 = 16 * (2 << 20) + (1 << 20);
    const SLACK: u64 = 16 << 20;
    u64::from(vcpus) * VCPU_THREAD + OTHER_THREADS + SLACK
}

/// Which guest kernel runs: the mode asked for and what the host offers.
struct Kernel {
    mode: GuestMode,
    /// The host's `/dev/kvm` is a PVM host's.
    host_pvm: bool,
    /// The guest may enter the PVM host's native mode.
    native_possible: bool,
}

/// The VM and its vCPUs, not yet running.
struct Vm {
    fd: Arc<VmFd>,
    cpuid: CpuId,
    vcpus: Vec<VcpuFd>,
    /// The guest TSC frequency as KVM reports it (0: unknown).
    tsc_khz: u64,
}

/// The PV interfaces of the VMM side: the one `--pv` asks for, and the
/// one CPU hotplug requests go through.
struct PvHosts {
    pv: Option<Arc<PvHost>>,
    hotplug: Option<Arc<PvHost>>,
}

impl Machine {
    /// Builds the machine of one run and starts its vCPU threads and
    /// injectors; a failure after the threads exist stops them first.
    pub(super) fn create(config: &MachineConfig) -> Result<Self, Error> {
        let kernel = guest_kernel(config)?;
        let kvm = vm::open_kvm(&config.kvm_path)?;
        check_config(config, vm::max_vcpus(&kvm))?;
        let plan = injection_plan(config)?;
        let created = Instant::now();
        let (mem, entry) = guest_memory(config, &kernel)?;
        // The host capability probe, before the run (cached per process).
        let pv_probe = if config.all_pv() != 0 {
            Some(crate::pv::host_pv(&kvm)?)
        } else {
            None
        };
        let vm = create_vm(&kvm, &mem, config, entry)?;
        let (control, steal_time) =
            control_block(config, &kernel, &vm, plan.as_ref(), pv_probe.as_ref());
        let pv_hosts = pv_hosts(config, &kernel, &mem, &vm, &control)?;
        memory::write_control(&mem, &control)?;
        let (stats, warnings) = stats_fds(config, &vm.vcpus, plan.is_some());
        let console = Arc::new(Console::new(config.vcpus, config.console));
        console.attach_memory(mem.clone());
        let (tx, rx) = mpsc::channel();
        let mut machine = Machine {
            warnings,
            cpu_locks: Default::default(),
            stalls: crate::stall::StallLog::default(),
            _vm: vm.fd,
            pv: pv_hosts.pv.clone(),
            pv_probe,
            mem,
            native_possible: kernel.native_possible,
            _kvm: kvm,
            vcpus: Vec::with_capacity(vm.vcpus.len()),
            control: Arc::new(RunControl::default()),
            console,
            events: rx,
            _events_tx: tx,
            created,
            tsc_khz: vm.tsc_khz,
            injector: None,
            stats,
            host: HostReport::default(),
            steal_time,
            phase_marks: Vec::new(),
        };
        machine.spawn_vcpus(vm.vcpus, plan.as_ref(), &pv_hosts)?;
        if let Some(plan) = plan {
            machine.start_injector(plan, config.seed, pv_hosts)?;
        }
        Ok(machine)
    }

    /// One thread per vCPU, pinned where the plan places it.
    fn spawn_vcpus(
        &mut self,
        fds: Vec<VcpuFd>,
        plan: Option<&Plan>,
        pv_hosts: &PvHosts,
    ) -> Result<(), Error> {
        for (id, fd) in (0..).zip(fds) {
            match vcpu::spawn(
                id,
                fd,
                self.console.clone(),
                self.control.clone(),
                self._events_tx.clone(),
                plan.and_then(|p| p.host_cpu_of(id)),
                pv_hosts.pv.clone(),
            ) {
                Ok(handle) => self.vcpus.push(handle),
                Err(e) => {
                    self.stop();
                    return Err(Error::Thread(e));
                }
            }
        }
        if let Some(pv) = &pv_hosts.pv {
            pv.set_kickers(self.kickers());
        }
        Ok(())
    }

    /// The host-side injectors, on the host CPUs this run claims.
    fn start_injector(&mut self, plan: Plan, seed: u64, pv_hosts: PvHosts) -> Result<(), Error> {
        let (locks, busy) = inject::lock::claim(&plan.host_cpus);
        self.cpu_locks = locks;
        self.warnings.extend(busy);
        let kickers = self.kickers();
        match Injector::start(plan, seed, &kickers, pv_hosts.pv, pv_hosts.hotplug) {
            Ok(injector) => {
                self.injector = Some(injector);
                Ok(())
            }
            Err(e) => {
                self.stop();
                Err(e.into())
            }
        }
    }

    fn kickers(&self) -> Vec<Arc<vcpu::Kicker>> {
        self.vcpus.iter().map(|v| v.kicker.clone()).collect()
    }
}

/// The guest kernel mode: asked for, else `IPIVIRT_GUEST_MODE`, else
/// auto; refused where the host cannot run it.
fn guest_kernel(config: &MachineConfig) -> Result<Kernel, Error> {
    let mode = match config.guest_mode {
        Some(m) => m,
        None => GuestMode::from_env().map_err(|e| Error::Scenario(e.to_string()))?,
    };
    let host_pvm = guest_mode::host_offers_pvm();
    let native_possible = guest_mode::resolve(mode, host_pvm).map_err(Error::Scenario)?;
    Ok(Kernel {
        mode,
        host_pvm,
        native_possible,
    })
}

/// What this machine cannot run whoever built the config (a library user
/// may create one without [`crate::Scenario::validate`]): more vCPUs than
/// the host's KVM allows, design columns the guest cannot run
/// ([`MachineConfig::check_columns`], validate's check too), a test hook
/// on a vCPU that does not exist.
fn check_config(config: &MachineConfig, max_vcpus: u32) -> Result<(), Error> {
    if config.vcpus == 0 || config.vcpus > max_vcpus {
        return Err(Error::Scenario(format!(
            "--vcpus {} is out of range: this host allows 1..={max_vcpus}",
            config.vcpus
        )));
    }
    config
        .check_columns()
        .map_err(|e| Error::Scenario(e.to_string()))?;
    if config.test_hook_vcpu >= config.vcpus {
        return Err(Error::Scenario(format!(
            "test hook vCPU {} does not exist (vCPUs 0..{})",
            config.test_hook_vcpu, config.vcpus
        )));
    }
    Ok(())
}

/// The injection plan (placement, preemption, migration, hotplug), when
/// the run injects anything; a fallback (no SCHED_FIFO, no second host
/// CPU) is said once.
fn injection_plan(config: &MachineConfig) -> Result<Option<Plan>, Error> {
    if !config.inject.is_active() {
        return Ok(None);
    }
    let plan = Plan::new(&config.inject, config.vcpus)?;
    if let Some(why) = &plan.fallback {
        eprintln!("ipivirt: {why}");
    }
    Ok(Some(plan))
}

/// Guest RAM with its identity page tables and boot GDT, the guest image
/// loaded into it; returns the memory and the image's entry point.
fn guest_memory(
    config: &MachineConfig,
    kernel: &Kernel,
) -> Result<(GuestMemoryMmap, GuestAddress), Error> {
    let mem = memory::allocate(memory::ram_size(config.vcpus))?;
    memory::check_room(thread_room(config.vcpus))?;
    memory::write_page_tables(&mem, kernel.native_possible)?;
    memory::write_gdt(&mem)?;
    let entry = loader::load(&mem, loader::GUEST_ELF)?;
    Ok((mem, entry))
}

/// The VM (with its in-kernel irqchip) and every vCPU in 64-bit mode at
/// the guest's entry.
fn create_vm(
    kvm: &Kvm,
    mem: &GuestMemoryMmap,
    config: &MachineConfig,
    entry: GuestAddress,
) -> Result<Vm, Error> {
    let fd = Arc::new(vm::create_vm(kvm, mem, config.vcpus)?);
    let cpuid = vm::supported_cpuid(kvm)?;
    let vcpus = (0..config.vcpus)
        .map(|id| vm::create_vcpu(&fd, &cpuid, id, config.vcpus, entry))
        .collect::<Result<Vec<_>, _>>()?;
    let tsc_khz = vcpus[0].get_tsc_khz().map(u64::from).unwrap_or(0);
    Ok(Vm {
        fd,
        cpuid,
        vcpus,
        tsc_khz,
    })
}

/// The control block the guest reads at boot, and whether the guest is
/// told to register steal time.
fn control_block(
    config: &MachineConfig,
    kernel: &Kernel,
    vm: &Vm,
    plan: Option<&Plan>,
    pv_probe: Option<&HostPv>,
) -> (Control, bool) {
    let mut control = Control::new(config.vcpus);
    control.seed = config.seed;
    control.tsc_khz = vm.tsc_khz;
    control.mem_size = memory::ram_size(config.vcpus);
    control.test_hook = config.test_hook as u32;
    control.test_hook_vcpu = config.test_hook_vcpu;
    control.test_hook_arg = config.test_hook_arg;
    control.preempt_window_us = u32::try_from(config.preempt_window.as_micros())
        .unwrap_or(u32::MAX)
        .max(1);
    control.preempt_trace_off = u32::from(config.preempt_trace_off);
    control.guest_mode = kernel.mode.code();
    control.host_pvm = u32::from(kernel.host_pvm);
    control.workload = config.workload as u32;
    control.duration_us = config.duration.as_micros().min(u128::from(u64::MAX)) as u64;
    control.issuers_per_cpu = config.issuers_per_cpu;
    control.shape.hogs_per_cpu = config.hogs_per_cpu;
    for &v in config.initiators.iter().flatten() {
        control.shape.set_initiator(v);
    }
    control.forced_migration = per_65536(config.forced_migration);
    control.tick_hz = config.tick_hz.unwrap_or(0);
    control.probe_period_us = config.probe_period.map_or(0, |p| {
        u32::try_from(p.as_micros()).unwrap_or(u32::MAX).max(1)
    });
    control.nr_designs = config.designs.len().min(abi::MAX_DESIGNS) as u32;
    for (slot, d) in control.designs.iter_mut().zip(&config.designs) {
        *slot = *d as u32;
    }
    control.guest_preempt_prob = per_65536(config.guest_preempt_prob);
    control.alloc_fail_prob = per_65536(config.alloc_fail_prob);
    control.quiesce_bound_us = u64::try_from(config.quiesce_bound.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    control.csd_watchdog_us = u32::try_from(config.csd_watchdog.as_micros())
        .unwrap_or(u32::MAX)
        .max(1);
    control.torture_weights = config.torture_weights;
    control.hotplug = u32::from(plan.is_some_and(|p| p.config.hotplug_every.is_some()));
    control.onoff_interval_us = config.torture_onoff.map_or(0, |d| {
        u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1)
    });
    if config.workload == Workload::Spin {
        control.pv_flags |= pv::STEAL_TIME;
    }
    control.pv_flags |= config.pv & (pv::STEAL_TIME | pv::PREEMPTED);
    // Steal time in every run with a workload where KVM offers it (one
    // MSR write per vCPU), so that steal_ms and run_delay_ms compare.
    let steal_offered = vm::kvm_pv_features(&vm.cpuid) & (1 << vm::KVM_FEATURE_STEAL_TIME) != 0
        && pv_probe.map_or(true, |p| p.steal_time);
    let steal_time = config.workload != Workload::None && steal_offered;
    if steal_time {
        control.pv_flags |= pv::STEAL_TIME;
    }
    for (i, slot) in control.phase_pv.iter_mut().enumerate() {
        *slot = config.phase_pv(i) & pv::ALL;
    }
    if steal_time {
        control.pv_kvm |= pv::STEAL_TIME;
    }
    if let Some(probe) = pv_probe {
        control.pv_kvm |= crate::pv::kvm_bits(probe);
        control.pv_amd = u32::from(probe.amd);
        if kernel.native_possible {
            // KVM's hypercall instructions are forbidden in native mode
            // (vmcall loops in KVM's emulator).
            control.pv_kvm &= !(pv::SEND_IPI | pv::SCHED_YIELD);
        }
    }
    (control, steal_time)
}

/// The VMM side of the ipivirt PV interface, when a feature beyond steal
/// time asks for it (otherwise its port stays closed: an `in` faults the
/// run); CPU hotplug requests go through the PV state area too, with a PV
/// host of their own (the hypercall port stays as `--pv` leaves it).
fn pv_hosts(
    config: &MachineConfig,
    kernel: &Kernel,
    mem: &GuestMemoryMmap,
    vm: &Vm,
    control: &Control,
) -> Result<PvHosts, Error> {
    let new_host = || {
        PvHost::new(mem, vm.fd.clone(), config.vcpus)
            .ok_or_else(|| Error::Scenario("guest RAM does not cover the PV state area".into()))
    };
    let pv = if config.all_pv() & !pv::STEAL_TIME != 0 {
        let host = new_host()?;
        host.set_native(kernel.native_possible);
        Some(Arc::new(host))
    } else {
        None
    };
    let hotplug = if control.hotplug != 0 {
        Some(Arc::new(new_host()?))
    } else {
        None
    };
    Ok(PvHosts { pv, hotplug })
}

/// One KVM binary stats fd per vCPU when the run injects or runs a
/// workload, for the first [`STATS_VCPUS`] only (fd limits), and the
/// warning that says why columns are blank where one is missing.
fn stats_fds(
    config: &MachineConfig,
    fds: &[VcpuFd],
    injecting: bool,
) -> (Vec<Option<std::fs::File>>, Vec<String>) {
    let stats: Vec<Option<std::fs::File>> = if injecting || config.workload != Workload::None {
        fds.iter()
            .take(STATS_VCPUS)
            .map(|fd| inject::kvmstats::open(fd).ok())
            .collect()
    } else {
        Vec::new()
    };
    let missing = stats.iter().filter(|s| s.is_none()).count();
    let mut warnings = Vec::new();
    if missing > 0 {
        warnings.push(format!(
            "KVM statistics of {missing} vCPU(s) unavailable (KVM_GET_STATS_FD failed; ulimit -n \
             is {}): their kvm: columns show -",
            vm::fd_limit().map_or("unknown".to_string(), |l| l.to_string())
        ));
    }
    (stats, warnings)
}
