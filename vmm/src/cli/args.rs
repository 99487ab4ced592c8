//! The clap structs: every flag of `run`, `boot` and `sweep`, its
//! default and its help text (`--help` prints them as written here).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::parse::{
    parse_cpus, parse_designs, parse_period, parse_placement, parse_probability, parse_pv,
    parse_ratio_list, parse_timeout, parse_vcpus, parse_weights, parse_window, wire_parser,
    CpuList, DesignList, Placement, PvList, RatioList, VcpuList, Weights,
};
use super::parse_duration;
use crate::scenario::ScenarioName;
use crate::TestHook;

/// ipivirt: how cross-CPU function calls (IPIs) behave on preempted and
/// migrated vCPUs.
#[derive(Debug, Parser)]
#[command(
    name = "ipivirt",
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = crate::exit_code::HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub(super) command: Option<Command>,
    #[command(flatten)]
    pub(super) run: RunCmd,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing would only obscure clap's derive
pub(super) enum Command {
    /// One scenario: boot the guest, run the workload under host-side
    /// injection, report (the default command).
    #[command(after_help = crate::exit_code::HELP)]
    Run(RunCmd),
    /// Boot N vCPUs, print `online N/N vCPUs in X ms`, exit.
    #[command(after_help = crate::exit_code::HELP)]
    Boot(RunArgs),
    /// The run for each overcommit ratio / vCPU count given, one table.
    #[command(after_help = crate::exit_code::HELP)]
    Sweep(SweepCmd),
}

/// Options of `sweep`: those of `run` and the matrix.
#[derive(Debug, Clone, Args)]
pub(super) struct SweepCmd {
    #[command(flatten)]
    pub(super) run: RunCmd,
    /// Overcommit ratios vCPUs:host CPUs, comma-separated (e.g.
    /// 1:1,2:1,4:1). Alone, each gives the vCPU count on all host CPUs;
    /// with --vcpus-list, the host CPUs used for each count.
    #[arg(long, value_name = "LIST", value_parser = parse_ratio_list)]
    pub(super) ratios: Option<RatioList>,
    /// vCPU counts, comma-separated (e.g. 4,64,128) [default: --vcpus].
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=abi::MAX_VCPUS as i64))]
    pub(super) vcpus_list: Option<Vec<u32>>,
}

/// Report files of `run` (and `sweep`).
#[derive(Debug, Clone, Args)]
pub(super) struct OutputArgs {
    /// Write the machine-readable report (JSON, see the README).
    #[arg(long, value_name = "PATH")]
    pub(super) json: Option<PathBuf>,
    /// Write a latency CDF plot (SVG), one curve per design (run only).
    #[arg(long, value_name = "PATH")]
    pub(super) svg: Option<PathBuf>,
}

/// Options shared by `run` and `boot`.
#[derive(Debug, Clone, Args)]
pub(super) struct RunArgs {
    /// Guest CPUs.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=abi::MAX_VCPUS as i64))]
    pub(super) vcpus: u32,
    /// Seeds every random choice, host and guest.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// Watchdog for the whole run (us, ms, s; a bare number is seconds).
    #[arg(long, value_name = "DUR", default_value_t = 120.0, value_parser = parse_timeout)]
    pub(super) timeout: f64,
    /// Do not print the guest console.
    #[arg(long, short)]
    pub(super) quiet: bool,
    /// Guest kernel: auto (the PVM host's native mode where the host offers
    /// it, else plain), pvm (native mode or exit 2), plain [default:
    /// $IPIVIRT_GUEST_MODE, else auto].
    #[arg(long, value_name = "MODE")]
    pub(super) guest_mode: Option<crate::guest_mode::GuestMode>,
    /// Test only: make the guest fail on purpose.
    #[arg(long, hide = true, value_parser = wire_parser::<TestHook>(), default_value = "none")]
    pub(super) test_hook: TestHook,
    /// Test only: the vCPU the hook acts on.
    #[arg(long, hide = true, default_value_t = 0)]
    pub(super) test_hook_vcpu: u32,
    /// Test only: the hook's argument (pin-preempt: microseconds).
    #[arg(long, hide = true, default_value_t = 0)]
    pub(super) test_hook_arg: u32,
    /// Measurement only: run without the preempt-off tracer (its cost).
    #[arg(long, hide = true)]
    pub(super) no_preempt_trace: bool,
}

/// Options of `run`: the common ones and the scenario.
#[derive(Debug, Clone, Args)]
pub(super) struct RunCmd {
    #[command(flatten)]
    pub(super) common: RunArgs,
    #[command(flatten)]
    pub(super) scenario: ScenarioArgs,
    #[command(flatten)]
    pub(super) output: OutputArgs,
    #[command(flatten)]
    pub(super) stats: StatsArgs,
}

/// Statistics: repeats of the whole comparison.
#[derive(Debug, Clone, Args)]
pub(super) struct StatsArgs {
    /// Run the whole comparison N times, each with the designs in an order
    /// shuffled from --seed and the seed --seed + repeat - 1; every ratio
    /// against upstream is then reported as median (min-max) over the N.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(super) repeat: u32,
}

/// The scenario of `run`: workload and host-side injection.
#[derive(Debug, Clone, Args)]
pub(super) struct ScenarioArgs {
    /// Host CPUs the vCPU threads are placed on, spread evenly (e.g. 0,
    /// 0-1, 0,2) [default: every CPU this process may use].
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    pub(super) host_cpus: Option<CpuList>,
    /// Host-side vCPU preemption: `antagonist` (a SCHED_FIFO thread per host
    /// CPU busy-runs; needs the privilege, else falls back to pause),
    /// `pause` (the VMM holds a vCPU out of KVM_RUN; no privileges,
    /// deterministic, but KVM never marks such a vCPU `preempted` and counts
    /// no steal time for it), or `none` [default: antagonist if SCHED_FIFO
    /// is permitted, else pause].
    #[arg(long, value_name = "MODE", value_enum)]
    pub(super) preempt: Option<PreemptArg>,
    /// Length of one injected preemption (us, ms, s) [default: 200us].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(super) preempt_len: Option<Duration>,
    /// Mean gap between preemptions on each host CPU (seeded jitter)
    /// [default: 2ms].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(super) preempt_every: Option<Duration>,
    /// Mean gap between vCPU thread migrations (seeded jitter); 0 disables
    /// [default: 5ms].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(super) migrate_every: Option<Duration>,
    /// Most of a host CPU an injector may take, in percent (1..=90; a
    /// scenario above 90% is refused).
    #[arg(long, value_name = "PCT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=90))]
    pub(super) max_duty: u32,
    /// Write the injected events as Chrome trace-event JSON (Perfetto).
    #[arg(long, value_name = "PATH")]
    pub(super) trace: Option<PathBuf>,
    /// CPU hotplug from the host: mean gap between cycles in which a random
    /// vCPU (never vCPU 0; two always stay online) is asked to go offline
    /// and, --hotplug-len later, back online (seeded jitter); 0 disables.
    /// Needs 3 or more vCPUs.
    #[arg(long, value_name = "DUR", default_value = "0", value_parser = parse_duration)]
    pub(super) hotplug_every: Duration,
    /// Mean time a vCPU stays offline in one hotplug cycle (seeded jitter).
    #[arg(long, value_name = "DUR", default_value = "10ms", value_parser = parse_duration)]
    pub(super) hotplug_len: Duration,
    /// Torture's own CPU hotplug (scftorture's onoff_interval): every DUR a
    /// guest task takes a random vCPU offline and brings it back DUR/2
    /// later; 0 disables. --workload torture only.
    #[arg(long, value_name = "DUR", default_value = "0", value_parser = parse_duration)]
    pub(super) torture_onoff: Duration,
    /// What the guest runs after boot: none (boot only), idle (the
    /// scheduler and its probe), spin, hogs, churn, ping, shootdown, floor
    /// (the raw IPI round trip), torture (docs/usage.md has the table).
    #[arg(long, value_parser = wire_parser::<abi::Workload>(), default_value = "shootdown")]
    pub(super) workload: abi::Workload,
    /// Wait-mask designs to compare (ping, shootdown, torture), comma-separated:
    /// upstream, task-local, stack, alloc-in-path, unsafe-percpu,
    /// free-csd-offline, no-dying-flush (the last three are wrong on purpose
    /// and run only when named; the last two break CPU hotplug, so they
    /// need --hotplug-every or --torture-onoff to show). A design can carry
    /// PV features of its own: `task-local+sched-yield`, `upstream+pv` (pv:
    /// those of --pv). At most 8 columns.
    #[arg(long, value_name = "LIST", default_value = "upstream,task-local,stack,alloc-in-path", value_parser = parse_designs)]
    pub(super) designs: DesignList,
    /// Paravirtual features, comma-separated: steal-time, preempted,
    /// send-ipi, sched-yield, flush-defer (or all). Each uses KVM's mechanism
    /// where the host offers it (a probe runs first) and ipivirt's VMM-level
    /// one otherwise. steal-time and preempted apply to the whole run; the
    /// others add PV columns beside the plain designs: task-local+FEATURE
    /// for each, and upstream+ALL OF THEM when there are several (unless
    /// --designs already names PV columns).
    #[arg(long, value_name = "LIST", value_parser = parse_pv)]
    pub(super) pv: Option<PvList>,
    /// Guest-side forced preemption: chance to yield at each spin of a
    /// preemptible wait (0..1).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub(super) guest_preempt_prob: f64,
    /// Torture workload: relative weights of the primitives, e.g.
    /// `single-rpc=4,all-wait=1` (names: resched, single, single-wait,
    /// single-rpc, many, many-wait, all, all-wait; unnamed ones weigh 0;
    /// default: all equal).
    #[arg(long, value_name = "LIST", value_parser = parse_weights)]
    pub(super) torture_weights: Option<Weights>,
    /// Injected allocation failures (0..1): alloc-in-path's per-call mask,
    /// and above 64 vCPUs task-local's per-task mask at the creation of each
    /// design phase's tasks (a refused creation is counted; nothing leaks).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub(super) alloc_fail_prob: f64,
    /// How long a design's phase may take past its end to quiesce (every
    /// task it started finished, every vCPU's call queue drained); past it
    /// the phase is reported as stalled and later designs do not run.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub(super) quiesce_timeout: Duration,
    /// How long the workload runs per design (us, ms, s) [default: 2s; 10s with --scenario
    /// series: 100 windows of 100 ms on its initiator]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(super) duration: Option<Duration>,
    #[command(flatten)]
    pub(super) shape: ShapeArgs,
    /// Chance per guest scheduler tick that the running task is moved to
    /// another vCPU (0..1): makes tasks hop CPUs.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub(super) forced_migration: f64,
    /// Guest scheduler tick in Hz [default: 1000 on hardware, 100 where
    /// guest kernel code is emulated].
    #[arg(long, value_parser = clap::value_parser!(u32).range(10..=10_000))]
    pub(super) tick_hz: Option<u32>,
    /// Latency probe period, above 0 [default: 1ms on hardware, 10ms
    /// where guest kernel code is emulated].
    #[arg(long, value_name = "DUR", value_parser = parse_period)]
    pub(super) probe_period: Option<Duration>,
    /// Window of the preempt-off tracer: per vCPU, the longest
    /// non-preemptible section of each window is kept, and the report gives
    /// the P50/P99/max of those maxima (1us..4000s).
    #[arg(long, value_name = "DUR", default_value = "100ms", value_parser = parse_window)]
    pub(super) window: Duration,
}

/// The workload's shape and the injection's targets, and the named
/// scenarios that set them all at once. Options left out are `None`, so
/// that a `--scenario` fills exactly those and every explicit one wins.
#[derive(Debug, Clone, Args)]
pub(super) struct ShapeArgs {
    /// A named scenario: `series` (vCPU 0, the only initiator, alone on the
    /// first host CPU; the other vCPUs, running hogs only, on the second,
    /// which antagonists take for 3 ms every 10 ms; no migration; see
    /// docs/injection.md). Options given explicitly override its values.
    #[arg(long, value_name = "NAME", value_parser = clap::value_parser!(ScenarioName))]
    pub(super) scenario: Option<ScenarioName>,
    /// IPI-issuing tasks on each initiator vCPU (shootdown, torture)
    /// [default: 1]. `--tasks-per-cpu` is the old spelling.
    #[arg(long, value_name = "N", alias = "tasks-per-cpu", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(super) issuers_per_cpu: Option<u32>,
    /// CPU-bound tasks that send no IPI on every vCPU (shootdown, torture;
    /// the hogs workload's tasks) [default: 1].
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u32).range(0..=64))]
    pub(super) hogs_per_cpu: Option<u32>,
    /// The vCPUs that run the issuers, a list like 0 or 0-1,3 (shootdown,
    /// torture); the issuers are pinned there [default: every vCPU, issuers
    /// free to migrate].
    #[arg(long, value_name = "LIST", value_parser = parse_vcpus)]
    pub(super) initiators: Option<VcpuList>,
    /// The host CPU of each vCPU, vCPU 0 first (e.g. 0,1,1,1) [default:
    /// vCPUs spread round robin over --host-cpus].
    #[arg(long, value_name = "LIST", value_parser = parse_placement)]
    pub(super) placement: Option<Placement>,
    /// The host CPUs preemption is injected on, a CPU list (the others stay
    /// quiet) [default: every host CPU of the run].
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    pub(super) preempt_host_cpus: Option<CpuList>,
    /// The vCPUs `--preempt pause` holds, a list like 1-3 [default: every
    /// vCPU].
    #[arg(long, value_name = "LIST", value_parser = parse_vcpus)]
    pub(super) preempt_vcpus: Option<VcpuList>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum PreemptArg {
    None,
    Pause,
    Antagonist,
}
