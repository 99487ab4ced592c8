//! The control block: the scenario, written by the VMM before the first
//! vCPU runs.

use core::mem::size_of;

use crate::{check, torture, FieldError, Pod, ABI_VERSION, CONTROL_MAGIC, MAX_DESIGNS, MAX_VCPUS};
#[cfg(doc)]
use crate::{pv, Design, TestHook, Workload};

/// Written by the VMM before the first vCPU runs; read-only for the guest.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Control {
    /// [`CONTROL_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Number of vCPUs the VMM created (`nr_cpu_ids` of the guest).
    pub nr_vcpus: u32,
    /// Seeds every random choice of the guest.
    pub seed: u64,
    /// TSC frequency in kHz as KVM reports it (0 if unknown).
    pub tsc_khz: u64,
    /// Guest RAM size in bytes, starting at guest-physical 0.
    pub mem_size: u64,
    /// A [`TestHook`] code.
    pub test_hook: u32,
    /// The vCPU the test hook fires on.
    pub test_hook_vcpu: u32,
    /// A [`Workload`] code: what the guest runs after boot.
    pub workload: u32,
    /// [`pv`] feature bits the guest enables for the whole run
    /// (`STEAL_TIME`, `PREEMPTED`); the others are per phase (`phase_pv`).
    pub pv_flags: u32,
    /// Measured time of the workload, in microseconds.
    pub duration_us: u64,
    /// Scheduler tick in Hz (0: the guest picks one from its calibration).
    pub tick_hz: u32,
    /// Latency probe period in microseconds (0: no probe).
    pub probe_period_us: u32,
    /// Forced task migration: chance per tick, in 1/65536 (0: off).
    pub forced_migration: u32,
    /// IPI-issuing workload tasks on each initiator vCPU (`shootdown`,
    /// `torture`; see `initiators`).
    pub issuers_per_cpu: u32,
    /// Number of entries used in `designs`.
    pub nr_designs: u32,
    /// [`Design`] codes, run one after the other.
    pub designs: [u32; MAX_DESIGNS],
    /// Guest-side forced preemption at each spin of a preemptible wait:
    /// chance in 1/65536.
    pub guest_preempt_prob: u32,
    /// Injected allocation failures of the alloc-in-path design, in 1/65536.
    pub alloc_fail_prob: u32,
    /// csd-lock-wait watchdog threshold in microseconds (0:
    /// [`DEFAULT_CSD_WATCHDOG_US`]).
    pub csd_watchdog_us: u32,
    /// Relative weights of the torture primitives (index: [`torture`]);
    /// all zero means equal weights.
    pub torture_weights: [u8; torture::COUNT],
    /// [`pv`] features served by KVM's own mechanism (the VMM sets them from
    /// its host probe); the others use ipivirt's.
    pub pv_kvm: u32,
    /// Non-zero: the KVM hypercall instruction is `vmmcall` (AMD).
    pub pv_amd: u32,
    /// [`pv`] features of each design phase (index as `designs`), on top
    /// of the global `pv_flags`.
    pub phase_pv: [u32; MAX_DESIGNS],
    /// The [`guest_mode`](crate::guest_mode) asked for (AUTO, PLAIN or
    /// PVM_NATIVE).
    pub guest_mode: u32,
    /// Non-zero: the VMM saw the host offer the PVM native mode (its
    /// `/dev/kvm` comes from the `kvm_pvm` module).
    pub host_pvm: u32,
    /// Non-zero: the guest acts on the VMM's CPU hotplug requests
    /// (`--hotplug-every`).
    pub hotplug: u32,
    /// Torture's own onoff mode (scftorture's `onoff_interval`): every this
    /// many microseconds a guest task takes a random vCPU offline and brings
    /// it back half an interval later (0: off).
    pub onoff_interval_us: u32,
    /// The workload's shape beside the issuers: hogs and initiators.
    pub shape: Shape,
    /// How long a design's phase may take past its end to quiesce (every
    /// task it started finished, every call queue drained), in
    /// microseconds (0: [`DEFAULT_QUIESCE_BOUND_US`]); past it the phase is
    /// reported as stalled.
    pub quiesce_bound_us: u64,
    /// The preempt-off tracer's window in microseconds (0:
    /// [`DEFAULT_PREEMPT_WINDOW_US`]).
    pub preempt_window_us: u32,
    /// Non-zero: the preempt-off tracer is off (the hidden switch that
    /// measures its own cost).
    pub preempt_trace_off: u32,
    /// The argument of the test hook (`pin-preempt`: the section's length
    /// in microseconds; 0: [`DEFAULT_PIN_PREEMPT_US`]).
    pub test_hook_arg: u32,
    /// Padding; zero.
    pub reserved_u32: u32,
    /// Room for later scenario fields; zero.
    pub reserved: [u64; 20],
}

// SAFETY: #[repr(C)] of u32/u64 fields and u8/u32/u64 arrays, laid out
// without padding (the size assert pins the layout).
unsafe impl Pod for Control {}
const _: () = assert!(size_of::<Control>() == 512);

/// The preempt-off tracer's window when the control block leaves it 0:
/// 100 ms.
pub const DEFAULT_PREEMPT_WINDOW_US: u32 = 100_000;

/// The `pin-preempt` test hook's section when the control block leaves its
/// argument 0: 50 ms.
pub const DEFAULT_PIN_PREEMPT_US: u32 = 50_000;

/// The series' workload shape: which vCPUs issue cross calls and how many
/// CPU-bound tasks that send none share every vCPU with them. Kept apart
/// from the rest of [`Control`] so the shape travels as one value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// CPU-bound user tasks per vCPU that send no IPI (`shootdown`,
    /// `torture` phases; the `hogs` workload's tasks).
    pub hogs_per_cpu: u32,
    /// Non-zero: `initiators` is an explicit set, and the issuers are
    /// pinned to their vCPU so the set stays what was asked for. Zero:
    /// every vCPU issues and the issuers may migrate.
    pub explicit_initiators: u32,
    /// Bit `v` set: vCPU `v` runs the issuers (only read when
    /// `explicit_initiators` is non-zero).
    pub initiators: [u64; MAX_VCPUS / 64],
}

// SAFETY: #[repr(C)] of two u32 and a u64 array: no padding (asserted).
unsafe impl Pod for Shape {}
const _: () = assert!(size_of::<Shape>() == 8 + MAX_VCPUS / 8);

impl Shape {
    /// Whether vCPU `v` runs issuers.
    pub fn is_initiator(&self, v: u32) -> bool {
        self.explicit_initiators == 0
            || self
                .initiators
                .get(v as usize / 64)
                .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    /// Makes vCPU `v` an initiator (and the set explicit).
    pub fn set_initiator(&mut self, v: u32) {
        self.explicit_initiators = 1;
        if let Some(w) = self.initiators.get_mut(v as usize / 64) {
            *w |= 1 << (v % 64);
        }
    }
}

/// The csd-lock-wait watchdog threshold when the control block leaves it 0:
/// 100 ms, far above any healthy wait and well below the VMM's watchdog.
pub const DEFAULT_CSD_WATCHDOG_US: u32 = 100_000;

/// The quiescence bound when the control block leaves it 0: 60 s, above
/// the slowest phase end seen (128 vCPUs on 2 host CPUs, emulated kernel).
pub const DEFAULT_QUIESCE_BOUND_US: u64 = 60_000_000;

impl Control {
    /// The quiescence bound of a phase in microseconds.
    pub fn quiesce_bound_us(&self) -> u64 {
        match self.quiesce_bound_us {
            0 => DEFAULT_QUIESCE_BOUND_US,
            us => us,
        }
    }

    /// The csd-lock-wait watchdog threshold in microseconds.
    pub fn csd_watchdog_us(&self) -> u32 {
        match self.csd_watchdog_us {
            0 => DEFAULT_CSD_WATCHDOG_US,
            us => us,
        }
    }

    /// The preempt-off tracer's window in microseconds.
    pub fn preempt_window_us(&self) -> u32 {
        match self.preempt_window_us {
            0 => DEFAULT_PREEMPT_WINDOW_US,
            us => us,
        }
    }

    /// The `pin-preempt` test hook's section length in microseconds.
    pub fn pin_preempt_us(&self) -> u32 {
        match self.test_hook_arg {
            0 => DEFAULT_PIN_PREEMPT_US,
            us => us,
        }
    }

    /// A control block for `nr_vcpus` vCPUs; the other fields zero.
    pub fn new(nr_vcpus: u32) -> Self {
        Control {
            magic: CONTROL_MAGIC,
            abi_version: ABI_VERSION,
            nr_vcpus,
            ..Pod::zeroed()
        }
    }

    /// What the guest checks before trusting the block.
    pub fn validate(&self) -> Result<(), FieldError> {
        check(
            self.magic == CONTROL_MAGIC,
            "control.magic",
            self.magic,
            "CONTROL_MAGIC",
        )?;
        check(
            self.abi_version == ABI_VERSION,
            "control.abi_version",
            self.abi_version.into(),
            "ABI_VERSION",
        )?;
        check(
            (1..=MAX_VCPUS as u32).contains(&self.nr_vcpus),
            "control.nr_vcpus",
            self.nr_vcpus.into(),
            "1..=MAX_VCPUS",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_control_validate() {
        assert!(Control::new(4).validate().is_ok());
        let mut c = Control::new(0);
        assert_eq!(c.validate().unwrap_err().field, "control.nr_vcpus");
        c = Control::new(4);
        c.magic = 0;
        assert_eq!(c.validate().unwrap_err().field, "control.magic");
    }

    #[test]
    fn test_shape_initiators() {
        let mut s = Control::new(4).shape;
        assert!((0..4).all(|v| s.is_initiator(v)), "empty set: every vCPU");
        s.set_initiator(0);
        s.set_initiator(1023);
        assert!(s.is_initiator(0) && s.is_initiator(1023));
        assert!(!s.is_initiator(1) && !s.is_initiator(64) && !s.is_initiator(5000));
    }
}
