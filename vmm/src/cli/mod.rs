//! The `ipivirt` command line (clap). `ipivirt` with no subcommand is
//! `ipivirt run` with the defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::inject::{self, InjectConfig, PreemptMode};
use crate::machine::{self, MachineConfig};
use crate::scenario::{Preset, ScenarioError, ScenarioName};
use crate::{ConsoleMode, Error, TestHook};

/// Environment variable that overrides the KVM device path.
pub const KVM_PATH_ENV: &str = "IPIVIRT_KVM_PATH";

/// The exit codes, shown after every command's `--help`.
const EXIT_CODES: &str = "\
Exit status:
  0    ran; no invariant violation in a design expected to be safe
  1    an invariant violation in a design expected to be safe
  2    bad command line or scenario (refused before anything boots)
  3    the guest crashed (exception, triple fault, panic) or broke the results contract
  4    the watchdog (--timeout) fired
  5    KVM unusable (/dev/kvm missing, not permitted, not KVM, or a KVM call failed)
  6    another host-side failure (memory, threads, writing an output or the report)
  130  stopped by SIGINT (Ctrl-C); 143 stopped by SIGTERM: the partial report is printed";

/// ipivirt: how cross-CPU function calls (IPIs) behave on preempted and
/// migrated vCPUs.
#[derive(Debug, Parser)]
#[command(
    name = "ipivirt",
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunCmd,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing would only obscure clap's derive
enum Command {
    /// One scenario: boot the guest, run the workload under host-side
    /// injection, report (the default command).
    #[command(after_help = EXIT_CODES)]
    Run(RunCmd),
    /// Boot N vCPUs, print `online N/N vCPUs in X ms`, exit.
    #[command(after_help = EXIT_CODES)]
    Boot(RunArgs),
    /// The run for each overcommit ratio / vCPU count given, one table.
    #[command(after_help = EXIT_CODES)]
    Sweep(SweepCmd),
}

/// Options of `sweep`: those of `run` and the matrix.
#[derive(Debug, Clone, Args)]
struct SweepCmd {
    #[command(flatten)]
    run: RunCmd,
    /// Overcommit ratios vCPUs:host CPUs, comma-separated (e.g.
    /// 1:1,2:1,4:1). Alone, each gives the vCPU count on all host CPUs;
    /// with --vcpus-list, the host CPUs used for each count.
    #[arg(long, value_name = "LIST", value_parser = parse_ratio_list)]
    ratios: Option<RatioList>,
    /// vCPU counts, comma-separated (e.g. 4,64,128) [default: --vcpus].
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=abi::MAX_VCPUS as i64))]
    vcpus_list: Option<Vec<u32>>,
}

/// A parsed `--ratios` list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RatioList(Vec<crate::sweep::Ratio>);

fn parse_ratio_list(s: &str) -> Result<RatioList, String> {
    crate::sweep::parse_ratios(s)
        .map(RatioList)
        .map_err(|e| e.to_string())
}

/// Report files of `run` (and `sweep`).
#[derive(Debug, Clone, Args)]
struct OutputArgs {
    /// Write the machine-readable report (JSON, see the README).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write a latency CDF plot (SVG), one curve per design (run only).
    #[arg(long, value_name = "PATH")]
    svg: Option<PathBuf>,
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
    /// Watchdog for the whole run (us, ms, s; a bare number is seconds).
    #[arg(long, value_name = "DUR", default_value_t = 120.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Do not print the guest console.
    #[arg(long, short)]
    quiet: bool,
    /// Guest kernel: auto (the PVM host's native mode where the host offers
    /// it, else plain), pvm (native mode or exit 2), plain [default:
    /// $IPIVIRT_GUEST_MODE, else auto].
    #[arg(long, value_name = "MODE")]
    guest_mode: Option<crate::guest_mode::GuestMode>,
    /// Test only: make the guest fail on purpose.
    #[arg(long, hide = true, value_parser = wire_parser::<TestHook>(), default_value = "none")]
    test_hook: TestHook,
    /// Test only: the vCPU the hook acts on.
    #[arg(long, hide = true, default_value_t = 0)]
    test_hook_vcpu: u32,
    /// Test only: the hook's argument (pin-preempt: microseconds).
    #[arg(long, hide = true, default_value_t = 0)]
    test_hook_arg: u32,
    /// Measurement only: run without the preempt-off tracer (its cost).
    #[arg(long, hide = true)]
    no_preempt_trace: bool,
}

/// Options of `run`: the common ones and the scenario.
#[derive(Debug, Clone, Args)]
struct RunCmd {
    #[command(flatten)]
    common: RunArgs,
    #[command(flatten)]
    scenario: ScenarioArgs,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    stats: StatsArgs,
}

/// Statistics: repeats of the whole comparison.
#[derive(Debug, Clone, Args)]
struct StatsArgs {
    /// Run the whole comparison N times, each with the designs in an order
    /// shuffled from --seed and the seed --seed + repeat - 1; every ratio
    /// against upstream is then reported as median (min-max) over the N.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
}

/// The scenario of `run`: workload and host-side injection.
#[derive(Debug, Clone, Args)]
struct ScenarioArgs {
    /// Host CPUs the vCPU threads are placed on, spread evenly (e.g. 0,
    /// 0-1, 0,2) [default: every CPU this process may use].
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    host_cpus: Option<CpuList>,
    /// Host-side vCPU preemption: `antagonist` (a SCHED_FIFO thread per host
    /// CPU busy-runs; needs the privilege, else falls back to pause),
    /// `pause` (the VMM holds a vCPU out of KVM_RUN; no privileges,
    /// deterministic, but KVM never marks such a vCPU `preempted` and counts
    /// no steal time for it), or `none` [default: antagonist if SCHED_FIFO
    /// is permitted, else pause].
    #[arg(long, value_name = "MODE", value_enum)]
    preempt: Option<PreemptArg>,
    /// Length of one injected preemption (us, ms, s) [default: 200us].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    preempt_len: Option<Duration>,
    /// Mean gap between preemptions on each host CPU (seeded jitter)
    /// [default: 2ms].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    preempt_every: Option<Duration>,
    /// Mean gap between vCPU thread migrations (seeded jitter); 0 disables
    /// [default: 5ms].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    migrate_every: Option<Duration>,
    /// Most of a host CPU an injector may take, in percent (1..=90; a
    /// scenario above 90% is refused).
    #[arg(long, value_name = "PCT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=90))]
    max_duty: u32,
    /// Write the injected events as Chrome trace-event JSON (Perfetto).
    #[arg(long, value_name = "PATH")]
    trace: Option<PathBuf>,
    /// CPU hotplug from the host: mean gap between cycles in which a random
    /// vCPU (never vCPU 0; two always stay online) is asked to go offline
    /// and, --hotplug-len later, back online (seeded jitter); 0 disables.
    /// Needs 3 or more vCPUs.
    #[arg(long, value_name = "DUR", default_value = "0", value_parser = parse_duration)]
    hotplug_every: Duration,
    /// Mean time a vCPU stays offline in one hotplug cycle (seeded jitter).
    #[arg(long, value_name = "DUR", default_value = "10ms", value_parser = parse_duration)]
    hotplug_len: Duration,
    /// Torture's own CPU hotplug (scftorture's onoff_interval): every DUR a
    /// guest task takes a random vCPU offline and brings it back DUR/2
    /// later; 0 disables. --workload torture only.
    #[arg(long, value_name = "DUR", default_value = "0", value_parser = parse_duration)]
    torture_onoff: Duration,
    /// What the guest runs after boot: none (boot only), idle (the
    /// scheduler and its probe), spin, hogs, churn, ping, shootdown, floor
    /// (the raw IPI round trip), torture (docs/usage.md has the table).
    #[arg(long, value_parser = wire_parser::<abi::Workload>(), default_value = "shootdown")]
    workload: abi::Workload,
    /// Wait-mask designs to compare (ping, shootdown, torture), comma-separated:
    /// upstream, task-local, stack, alloc-in-path, unsafe-percpu,
    /// free-csd-offline, no-dying-flush (the last three are wrong on purpose
    /// and run only when named; the last two break CPU hotplug, so they
    /// need --hotplug-every or --torture-onoff to show). A design can carry
    /// PV features of its own: `task-local+sched-yield`, `upstream+pv` (pv:
    /// those of --pv). At most 8 columns.
    #[arg(long, value_name = "LIST", default_value = "upstream,task-local,stack,alloc-in-path", value_parser = parse_designs)]
    designs: DesignList,
    /// Paravirtual features, comma-separated: steal-time, preempted,
    /// send-ipi, sched-yield, flush-defer (or all). Each uses KVM's mechanism
    /// where the host offers it (a probe runs first) and ipivirt's VMM-level
    /// one otherwise. steal-time and preempted apply to the whole run; the
    /// others add PV columns beside the plain designs: task-local+FEATURE
    /// for each, and upstream+ALL OF THEM when there are several (unless
    /// --designs already names PV columns).
    #[arg(long, value_name = "LIST", value_parser = parse_pv)]
    pv: Option<PvList>,
    /// Guest-side forced preemption: chance to yield at each spin of a
    /// preemptible wait (0..1).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    guest_preempt_prob: f64,
    /// Torture workload: relative weights of the primitives, e.g.
    /// `single-rpc=4,all-wait=1` (names: resched, single, single-wait,
    /// single-rpc, many, many-wait, all, all-wait; unnamed ones weigh 0;
    /// default: all equal).
    #[arg(long, value_name = "LIST", value_parser = parse_weights)]
    torture_weights: Option<Weights>,
    /// Injected allocation failures (0..1): alloc-in-path's per-call mask,
    /// and above 64 vCPUs task-local's per-task mask at the creation of each
    /// design phase's tasks (a refused creation is counted; nothing leaks).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    alloc_fail_prob: f64,
    /// How long a design's phase may take past its end to quiesce (every
    /// task it started finished, every vCPU's call queue drained); past it
    /// the phase is reported as stalled and later designs do not run.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    quiesce_timeout: Duration,
    /// How long the workload runs (us, ms, s).
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = parse_duration)]
    duration: Duration,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Chance per guest scheduler tick that the running task is moved to
    /// another vCPU (0..1): makes tasks hop CPUs.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    forced_migration: f64,
    /// Guest scheduler tick in Hz [default: 1000 on hardware, 100 where
    /// guest kernel code is emulated].
    #[arg(long, value_parser = clap::value_parser!(u32).range(10..=10_000))]
    tick_hz: Option<u32>,
    /// Latency probe period, above 0 [default: 1ms on hardware, 10ms
    /// where guest kernel code is emulated].
    #[arg(long, value_name = "DUR", value_parser = parse_period)]
    probe_period: Option<Duration>,
    /// Window of the preempt-off tracer: per vCPU, the longest
    /// non-preemptible section of each window is kept, and the report gives
    /// the P50/P99/max of those maxima (1us..4000s).
    #[arg(long, value_name = "DUR", default_value = "100ms", value_parser = parse_window)]
    window: Duration,
}

/// A `--window`: above 0, and in the guest's microsecond field.
fn parse_window(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.as_micros() == 0 => Err(format!("{s}: give a window of at least 1us")),
        d if d.as_micros() > u128::from(u32::MAX) => {
            Err(format!("{s}: give a window of at most 4000s"))
        }
        d => Ok(d),
    }
}

/// The workload's shape and the injection's targets, and the named
/// scenarios that set them all at once. Options left out are `None`, so
/// that a `--scenario` fills exactly those and every explicit one wins.
#[derive(Debug, Clone, Args)]
struct ShapeArgs {
    /// A named scenario: `series` (vCPU 0, the only initiator, alone on the
    /// first host CPU; the other vCPUs, running hogs only, on the second,
    /// which antagonists take for 3 ms every 10 ms; no migration; see
    /// docs/injection.md). Options given explicitly override its values.
    #[arg(long, value_name = "NAME", value_parser = clap::value_parser!(ScenarioName))]
    scenario: Option<ScenarioName>,
    /// IPI-issuing tasks on each initiator vCPU (shootdown, torture)
    /// [default: 1]. `--tasks-per-cpu` is the old spelling.
    #[arg(long, value_name = "N", alias = "tasks-per-cpu", value_parser = clap::value_parser!(u32).range(1..=64))]
    issuers_per_cpu: Option<u32>,
    /// CPU-bound tasks that send no IPI on every vCPU (shootdown, torture;
    /// the hogs workload's tasks) [default: 1].
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u32).range(0..=64))]
    hogs_per_cpu: Option<u32>,
    /// The vCPUs that run the issuers, a list like 0 or 0-1,3 (shootdown,
    /// torture); the issuers are pinned there [default: every vCPU, issuers
    /// free to migrate].
    #[arg(long, value_name = "LIST", value_parser = parse_vcpus)]
    initiators: Option<VcpuList>,
    /// The host CPU of each vCPU, vCPU 0 first (e.g. 0,1,1,1) [default:
    /// vCPUs spread round robin over --host-cpus].
    #[arg(long, value_name = "LIST", value_parser = parse_placement)]
    placement: Option<Placement>,
    /// The host CPUs preemption is injected on, a CPU list (the others stay
    /// quiet) [default: every host CPU of the run].
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    preempt_host_cpus: Option<CpuList>,
    /// The vCPUs `--preempt pause` holds, a list like 1-3 [default: every
    /// vCPU].
    #[arg(long, value_name = "LIST", value_parser = parse_vcpus)]
    preempt_vcpus: Option<VcpuList>,
}

/// A parsed vCPU list (`--initiators`, `--preempt-vcpus`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct VcpuList(Vec<u32>);

fn parse_vcpus(s: &str) -> Result<VcpuList, String> {
    inject::placement::parse_cpu_list(s)
        .map(|v| VcpuList(v.into_iter().map(|c| c as u32).collect()))
        .map_err(|_| format!("'{s}' is not a vCPU list (give e.g. 0, 1-3, 0,2)"))
}

/// A parsed `--placement` map.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement(Vec<usize>);

fn parse_placement(s: &str) -> Result<Placement, String> {
    inject::placement::parse_placement(s).map(Placement)
}

/// Parsed `--torture-weights`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Weights([u8; abi::torture::COUNT]);

fn parse_weights(s: &str) -> Result<Weights, String> {
    let mut w = [0u8; abi::torture::COUNT];
    let mut seen = [false; abi::torture::COUNT];
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not NAME=WEIGHT"))?;
        let i = abi::torture::NAMES
            .iter()
            .position(|n| *n == name.trim())
            .ok_or_else(|| {
                format!(
                    "unknown primitive '{name}': valid are {}",
                    abi::torture::NAMES.join(", ")
                )
            })?;
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("primitive '{}' is weighted twice", name.trim()));
        }
        w[i] = value
            .trim()
            .parse()
            .map_err(|_| format!("weight of {name} must be 0..=255"))?;
    }
    if w.iter().all(|&v| v == 0) {
        return Err("give at least one primitive a weight above 0".into());
    }
    Ok(Weights(w))
}

/// A parsed `--pv` list ([`abi::pv`] bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PvList(u32);

fn parse_pv(s: &str) -> Result<PvList, String> {
    if s.split(',').all(|f| f.trim().is_empty()) {
        return Err("name at least one PV feature (or none)".into());
    }
    crate::pv::parse_features(s).map(PvList)
}

/// PV features of a design column: its own, or those of `--pv` (`+pv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnPv {
    Own(u32),
    FromPvFlag,
}

/// A parsed `--designs` list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DesignList(Vec<(abi::Design, ColumnPv)>);

fn parse_designs(s: &str) -> Result<DesignList, String> {
    let valid = || {
        abi::Design::ALL
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let (name, features) = item.split_once('+').unwrap_or((item, ""));
        let d = abi::Design::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| format!("unknown design '{name}': valid designs are {}", valid()))?;
        if item.ends_with('+') {
            return Err(format!("design '{item}' names no PV feature after '+'"));
        }
        let pv = match features {
            "pv" => ColumnPv::FromPvFlag,
            f => ColumnPv::Own(crate::pv::parse_features(f)?),
        };
        if out.contains(&(d, pv)) {
            return Err(format!("design '{item}' is named twice"));
        }
        out.push((d, pv));
    }
    if out.is_empty() {
        return Err(format!("name at least one design: {}", valid()));
    }
    if out.len() > abi::MAX_DESIGNS {
        return Err(format!("at most {} designs per run", abi::MAX_DESIGNS));
    }
    Ok(DesignList(out))
}

/// The design columns of a run: those of `--designs`; with `--pv` path
/// features and no PV column named, the PV columns are added:
/// `task-local+F` for each feature F (the series with each mechanism
/// alone), and `upstream+ALL` when there are several (Linux today: the
/// pinned wait with every PV help).
fn design_columns(list: &[(abi::Design, ColumnPv)], pv: u32) -> (Vec<abi::Design>, Vec<u32>) {
    use abi::pv::{FLUSH_DEFER, SCHED_YIELD, SEND_IPI};
    let path = pv & (SEND_IPI | SCHED_YIELD | FLUSH_DEFER);
    let mut designs = Vec::new();
    let mut phase = Vec::new();
    for &(d, c) in list {
        designs.push(d);
        phase.push(match c {
            ColumnPv::Own(bits) => bits,
            ColumnPv::FromPvFlag => pv,
        });
    }
    let named = list.iter().any(|(_, c)| *c != ColumnPv::Own(0));
    if path != 0 && !named {
        let series = if list.iter().any(|(d, _)| *d == abi::Design::TaskLocal) {
            abi::Design::TaskLocal
        } else {
            list.first().map_or(abi::Design::TaskLocal, |d| d.0)
        };
        for f in [SEND_IPI, SCHED_YIELD, FLUSH_DEFER] {
            if path & f != 0 {
                designs.push(series);
                phase.push(f);
            }
        }
        if path.count_ones() > 1 {
            designs.push(abi::Design::Upstream);
            phase.push(path);
        }
    }
    (designs, phase)
}

fn parse_probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("'{s}' is not a probability between 0 and 1")),
    }
}

/// A parsed `--host-cpus` list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CpuList(Vec<usize>);

fn parse_cpus(s: &str) -> Result<CpuList, String> {
    inject::placement::parse_cpu_list(s)
        .map(CpuList)
        .map_err(|e| e.to_string())
}

/// Parses `200us`, `2ms`, `1.5s`, or a bare number of seconds (`0`, `2`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (give e.g. 200us, 2ms, 2s)"))?;
    let secs = v * scale;
    if secs.is_finite() && (0.0..=86_400.0).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("{s} is out of range: give 0 to 86400 s"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PreemptArg {
    None,
    Pause,
    Antagonist,
}

/// A clap parser for one of abi's closed sets: the names, their order and
/// their parsing are abi's (`wire_enum!`), not a second list here.
fn wire_parser<T: abi::WireEnum + Send + Sync>() -> impl clap::builder::TypedValueParser<Value = T>
{
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(T::names().iter().copied())
        .map(|s| s.parse::<T>().expect("a name abi lists parses"))
}

/// A duration above zero (0 would silently mean the default).
fn parse_period(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!(
            "{s}: give a period above 0 (leave the option out for the default)"
        )),
        d => Ok(d),
    }
}

/// A duration like every other (`10s`, `500ms`, a bare number of
/// seconds), above zero.
fn parse_timeout(s: &str) -> Result<f64, String> {
    match parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d.as_secs_f64()),
        Ok(_) => Err(format!("{s} is out of range: give a timeout above 0")),
        Err(e) => Err(e),
    }
}

impl RunArgs {
    fn machine_config(&self) -> MachineConfig {
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
    fn machine_config(&self) -> Result<MachineConfig, Error> {
        let s = &self.scenario;
        let sh = &s.shape;
        let mut config = self.common.machine_config();
        config.workload = s.workload;
        if let Some(Weights(w)) = &s.torture_weights {
            config.torture_weights = *w;
        }
        let pv = s.pv.map_or(0, |p| p.0);
        let (designs, design_pv) = design_columns(&s.designs.0, pv);
        config.designs = designs;
        config.design_pv = design_pv;
        config.pv = pv & (abi::pv::STEAL_TIME | abi::pv::PREEMPTED);
        config.guest_preempt_prob = s.guest_preempt_prob;
        config.alloc_fail_prob = s.alloc_fail_prob;
        config.quiesce_bound = s.quiesce_timeout;
        config.duration = s.duration;
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
        let inj = &mut config.inject;
        match s.preempt {
            Some(PreemptArg::None) => inj.preempt = PreemptMode::None,
            Some(PreemptArg::Pause) => inj.preempt = PreemptMode::Pause,
            // Antagonist falls back to pause when SCHED_FIFO is refused.
            Some(PreemptArg::Antagonist) => inj.preempt = PreemptMode::Antagonist,
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
            if s.workload == abi::Workload::Hogs {
                return Err(ScenarioError::Unused(
                    "--issuers-per-cpu (or --tasks-per-cpu): the hogs workload sends no IPI; its \
                     tasks are --hogs-per-cpu",
                )
                .into());
            }
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

mod exec;
mod text;

pub use exec::main;
pub use text::{host_block, partial_text};

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
        assert_eq!(c.run.common.vcpus, 4);
    }

    #[test]
    fn test_cli_rejects_bad_values() {
        for args in [
            &["ipivirt", "boot", "--vcpus", "0"][..],
            &["ipivirt", "boot", "--vcpus", "5000"],
            &["ipivirt", "boot", "--timeout", "-1"],
            &["ipivirt", "boot", "--timeout", "soon"],
            &["ipivirt", "boot", "--test-hook", "explode"],
            &["ipivirt", "run", "--host-cpus", "x"],
            &["ipivirt", "run", "--host-cpus", "1-0"],
            &["ipivirt", "run", "--preempt", "sometimes"],
            &["ipivirt", "run", "--preempt-len", "5 parsecs"],
            &["ipivirt", "run", "--migrate-every", "-1ms"],
            &["ipivirt", "run", "--max-duty", "95"],
            &["ipivirt", "run", "--workload", "dance"],
            &["ipivirt", "boot", "--preempt", "pause"],
            &["ipivirt", "run", "--probe-period", "0"],
            &["ipivirt", "run", "--torture-weights", "single=1,single=2"],
            &["ipivirt", "run", "--scenario", "bogus"],
            &["ipivirt", "run", "--issuers-per-cpu", "0"],
            &["ipivirt", "run", "--hogs-per-cpu", "65"],
            &["ipivirt", "run", "--initiators", "x"],
            &["ipivirt", "run", "--placement", "0-1"],
            &["ipivirt", "run", "--preempt-host-cpus", ""],
            &["ipivirt", "run", "--preempt-vcpus", "3-1"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn test_cli_repeat() {
        let c = Cli::try_parse_from(["ipivirt", "run", "--repeat", "3"]).unwrap();
        assert!(
            matches!(c.command, Some(Command::Run(RunCmd { ref stats, .. })) if stats.repeat == 3)
        );
        assert_eq!(
            Cli::try_parse_from(["ipivirt"]).unwrap().run.stats.repeat,
            1
        );
        let c = Cli::try_parse_from(["ipivirt", "sweep", "--repeat", "2"]).unwrap();
        assert!(
            matches!(c.command, Some(Command::Sweep(SweepCmd { ref run, .. })) if run.stats.repeat == 2)
        );
        for bad in ["0", "101", "two"] {
            let err = Cli::try_parse_from(["ipivirt", "run", "--repeat", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn test_cli_run_scenario_options() {
        let c = Cli::try_parse_from([
            "ipivirt",
            "run",
            "--host-cpus",
            "0,2-3",
            "--preempt",
            "pause",
            "--preempt-len",
            "1.5ms",
            "--migrate-every",
            "0",
            "--workload",
            "spin",
            "--duration",
            "500ms",
        ])
        .unwrap();
        let Some(Command::Run(run)) = c.command else {
            panic!()
        };
        let m = run.machine_config().unwrap();
        assert_eq!(m.inject.host_cpus, Some(vec![0, 2, 3]));
        assert_eq!(m.inject.preempt, PreemptMode::Pause);
        assert_eq!(m.inject.preempt_len, Duration::from_micros(1500));
        assert_eq!(m.inject.preempt_every, Duration::from_millis(2));
        assert_eq!(m.inject.migrate_every, None);
        assert_eq!(m.workload, abi::Workload::Spin);
        assert_eq!(m.duration, Duration::from_millis(500));
        let c = Cli::try_parse_from(["ipivirt"]).unwrap();
        let m = c.run.machine_config().unwrap();
        assert_eq!(m.inject.preempt, PreemptMode::Antagonist);
        assert_eq!(m.inject.migrate_every, Some(Duration::from_millis(5)));
        assert_eq!(m.inject.preempt_len, Duration::from_micros(200));
        assert_eq!(m.inject.max_duty, 0.5);
        assert_eq!((m.issuers_per_cpu, m.hogs_per_cpu), (1, 1));
        assert_eq!(
            (m.initiators.as_ref(), m.scenario_name.as_ref()),
            (None, None)
        );
    }

    fn run_config(args: &[&str]) -> MachineConfig {
        let c = Cli::try_parse_from(args).unwrap();
        let Some(Command::Run(run)) = c.command else {
            panic!()
        };
        run.machine_config().unwrap()
    }

    #[test]
    fn test_cli_series_scenario_and_overrides() {
        let m = run_config(&[
            "ipivirt",
            "run",
            "--scenario",
            "series",
            "--host-cpus",
            "0,1",
        ]);
        assert_eq!(m.scenario_name.as_deref(), Some("series"));
        assert_eq!(m.inject.placement, Some(vec![0, 1, 1, 1]));
        assert_eq!(m.inject.preempt_host_cpus, Some(vec![1]));
        assert_eq!(m.initiators, Some(vec![0]));
        assert_eq!(m.inject.preempt_len, Duration::from_millis(3));
        assert_eq!(m.inject.preempt_every, Duration::from_millis(10));
        assert_eq!(m.inject.migrate_every, None);
        let m = run_config(&[
            "ipivirt",
            "run",
            "--scenario",
            "series",
            "--host-cpus",
            "0,1",
            "--preempt-len",
            "1ms",
            "--placement",
            "0,0,1,1",
            "--initiators",
            "0-1",
            "--issuers-per-cpu",
            "2",
            "--hogs-per-cpu",
            "0",
            "--preempt",
            "pause",
            "--preempt-vcpus",
            "3",
        ]);
        assert_eq!(m.inject.preempt_len, Duration::from_millis(1));
        assert_eq!(m.inject.preempt_every, Duration::from_millis(10));
        assert_eq!(m.inject.placement, Some(vec![0, 0, 1, 1]));
        assert_eq!(m.initiators, Some(vec![0, 1]));
        assert_eq!((m.issuers_per_cpu, m.hogs_per_cpu), (2, 0));
        assert_eq!(m.inject.preempt, PreemptMode::Pause);
        assert_eq!(m.inject.preempt_vcpus, Some(vec![3]));
        let m = run_config(&["ipivirt", "run", "--tasks-per-cpu", "3"]);
        assert_eq!(m.issuers_per_cpu, 3);
        let c = Cli::try_parse_from(["ipivirt", "run", "--scenario", "series", "--host-cpus", "0"]);
        let Some(Command::Run(run)) = c.unwrap().command else {
            panic!()
        };
        let e = run.machine_config().unwrap_err();
        assert!(e.to_string().contains("two host CPUs"), "{e}");
    }

    #[test]
    fn test_timeout_accepts_units_like_every_duration() {
        assert_eq!(parse_timeout("10s"), Ok(10.0));
        assert_eq!(parse_timeout("1500ms"), Ok(1.5));
        assert_eq!(parse_timeout("2"), Ok(2.0));
        assert!(parse_timeout("0").is_err() && parse_timeout("0s").is_err());
        let c = Cli::try_parse_from(["ipivirt", "boot", "--timeout", "10s"]).unwrap();
        assert!(
            matches!(c.command, Some(Command::Boot(RunArgs { timeout, .. })) if timeout == 10.0)
        );
    }

    #[test]
    fn test_parse_duration_units() {
        assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration("2ms"), Ok(Duration::from_millis(2)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-2ms").is_err());
        assert!(parse_duration("1e9s").is_err());
    }
}
