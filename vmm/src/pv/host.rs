//! The VMM side of the ipivirt PV interface ([`abi::pv`]): the per-vCPU
//! `preempted` state the injectors publish in guest memory, and the
//! port-I/O hypercall (send-ipi with KVM_SIGNAL_MSI, yield-to ending an
//! injected pause early).
//!
//! The state lives in guest RAM and the guest reads (and compare-and-swaps)
//! it while its vCPUs run, so every access here is atomic on the host
//! mapping. What the guest wrote into a request is untrusted: a malformed
//! request is an error that stops the run.

use std::mem::offset_of;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use abi::{layout, pv, vector, PvVcpuState, MAX_VCPUS};
use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::vcpu::Kicker;

/// A hypercall the VMM refuses (the guest broke the PV contract).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HypercallError {
    /// `op` is not a known operation.
    #[error("unknown PV hypercall op {0}")]
    UnknownOp(u32),
    /// send-ipi with a vector below 32 (exceptions) or above 255.
    #[error("PV send-ipi with invalid vector {0:#x}")]
    BadVector(u32),
    /// A target that does not exist.
    #[error("PV hypercall names vCPU {0}, which does not exist")]
    NoSuchVcpu(u64),
    /// KVM_SIGNAL_MSI failed.
    #[error("KVM_SIGNAL_MSI to vCPU {vcpu} failed: {errno}")]
    SignalMsi {
        /// Target.
        vcpu: u32,
        /// The error.
        errno: String,
    },
}

/// What the VMM served over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PvHostTotals {
    /// Hypercalls served.
    pub hypercalls: u64,
    /// Of those, send-ipi.
    pub send_ipi_calls: u64,
    /// IPIs delivered for them (KVM_SIGNAL_MSI).
    pub ipis_sent: u64,
    /// yield-to requests.
    pub yields: u64,
    /// Of those, yields that ended a pause early.
    pub yields_effective: u64,
    /// The pause time those yields cut short, in ns (what the target and
    /// its waiters did not have to sit out).
    pub pause_ns_saved: u64,
    /// Preemptions published in the PV state.
    pub preemptions_marked: u64,
    /// Of those, held with interrupts enabled (deferrable).
    pub deferrable: u64,
    /// Resumes at which deferred flush work was signalled (FLUSH_DEFER).
    pub flushes_signalled: u64,
}

#[derive(Default)]
struct Counters {
    hypercalls: AtomicU64,
    send_ipi_calls: AtomicU64,
    ipis_sent: AtomicU64,
    yields: AtomicU64,
    yields_effective: AtomicU64,
    pause_ns_saved: AtomicU64,
    preemptions_marked: AtomicU64,
    deferrable: AtomicU64,
    flushes_signalled: AtomicU64,
}

/// The host side of the PV interface of one VM.
pub struct PvHost {
    /// Keeps the guest mapping alive as long as any user of `base`; read
    /// for the guests' virtual IF in native mode.
    mem: GuestMemoryMmap,
    /// The guest may run in the PVM host's native mode, where the interrupt
    /// flag that matters is the virtual one in each vCPU's VIF page.
    native: std::sync::atomic::AtomicBool,
    /// Host address of the PV state area.
    base: *mut u8,
    nr_vcpus: u32,
    t0: Instant,
    vm: Arc<VmFd>,
    kickers: OnceLock<Vec<Arc<Kicker>>>,
    /// Per vCPU: how many injectors hold it now (antagonist bursts of two
    /// host CPUs can overlap on a migrating vCPU).
    holders: Vec<AtomicU32>,
    counters: Counters,
}

// SAFETY: `base` points into the mapping `_mem` keeps alive; it is only
// accessed through atomics (the guest shares those words), so concurrent
// use from vCPU and injector threads is sound.
unsafe impl Send for PvHost {}
// SAFETY: as above.
unsafe impl Sync for PvHost {}

impl PvHost {
    /// The PV host of a VM with `nr_vcpus` vCPUs whose RAM is `mem`.
    pub fn new(mem: &GuestMemoryMmap, vm: Arc<VmFd>, nr_vcpus: u32) -> Option<Self> {
        let size = nr_vcpus as u64 * size_of::<PvVcpuState>() as u64;
        // The area must lie inside one region (guest RAM is one region
        // starting at 0), so that base + offset stays inside the mapping.
        let last = GuestAddress(layout::PV_STATE_ADDR + size.max(1) - 1);
        let base = mem
            .get_host_address(GuestAddress(layout::PV_STATE_ADDR))
            .ok()?;
        let end = mem.get_host_address(last).ok()?;
        if end as usize - base as usize != (size.max(1) - 1) as usize {
            return None;
        }
        Some(PvHost {
            mem: mem.clone(),
            native: std::sync::atomic::AtomicBool::new(false),
            base,
            nr_vcpus: nr_vcpus.min(MAX_VCPUS as u32),
            t0: Instant::now(),
            vm,
            kickers: OnceLock::new(),
            holders: (0..nr_vcpus).map(|_| AtomicU32::new(0)).collect(),
            counters: Counters::default(),
        })
    }

    /// The guest may enter the PVM host's native mode (set before the vCPUs
    /// run): from then on [`PvHost::irqs_enabled`] reads the VIF pages.
    pub fn set_native(&self, native: bool) {
        self.native.store(native, Ordering::Relaxed);
    }

    /// Whether `vcpu`, stopped in the VMM, had interrupts enabled: natively
    /// the virtual IF (byte 0 of its VIF page; KVM's `if_flag` is the
    /// hardware's there), `None` where the plain kernel's RFLAGS.IF
    /// (`kvm_run.if_flag`) is the answer. A guest that fell back to plain
    /// leaves its VIF page zero: never deferrable, the safe side.
    pub fn irqs_enabled(&self, vcpu: u32) -> Option<bool> {
        if !self.native.load(Ordering::Relaxed) {
            return None;
        }
        let byte: u8 = self
            .mem
            .read_obj(GuestAddress(layout::vif_page(vcpu)))
            .unwrap_or(0);
        Some(byte != 0)
    }

    /// The vCPU threads' kickers (for yield-to), once they exist.
    pub fn set_kickers(&self, kickers: Vec<Arc<Kicker>>) {
        let _ = self.kickers.set(kickers);
    }

    fn word<T>(&self, vcpu: u32, offset: usize) -> *mut T {
        assert!(vcpu < self.nr_vcpus);
        // SAFETY: in bounds of the area checked in `new` (vcpu < nr_vcpus,
        // offset inside one PvVcpuState); PvVcpuState is 64-byte aligned in
        // guest memory and the mapping is page-aligned, so fields are
        // naturally aligned.
        unsafe {
            self.base
                .add(vcpu as usize * size_of::<PvVcpuState>() + offset)
                .cast()
        }
    }

    fn u32_at(&self, vcpu: u32, offset: usize) -> &AtomicU32 {
        // SAFETY: an aligned, live u32 of the shared area (see `word`).
        unsafe { AtomicU32::from_ptr(self.word(vcpu, offset)) }
    }

    fn u64_at(&self, vcpu: u32, offset: usize) -> &AtomicU64 {
        // SAFETY: an aligned, live u64 of the shared area (see `word`).
        unsafe { AtomicU64::from_ptr(self.word(vcpu, offset)) }
    }

    /// An injector starts holding `vcpu`. `deferrable`: it was stopped with
    /// interrupts enabled, so FLUSH_DEFER will be the first thing it runs
    /// when resumed.
    pub fn begin_preemption(&self, vcpu: u32, deferrable: bool) {
        if vcpu >= self.nr_vcpus || self.holders[vcpu as usize].fetch_add(1, Ordering::AcqRel) != 0
        {
            return;
        }
        let since = self.t0.elapsed().as_nanos() as u64;
        self.u64_at(vcpu, offset_of!(PvVcpuState, since_ns))
            .store(since, Ordering::Relaxed);
        self.u64_at(vcpu, offset_of!(PvVcpuState, preemptions))
            .fetch_add(1, Ordering::Relaxed);
        self.u32_at(vcpu, offset_of!(PvVcpuState, seq))
            .fetch_add(1, Ordering::Release);
        let state = if deferrable {
            self.counters.deferrable.fetch_add(1, Ordering::Relaxed);
            pv::STATE_PREEMPTED | pv::STATE_DEFERRABLE
        } else {
            pv::STATE_PREEMPTED
        };
        self.u32_at(vcpu, offset_of!(PvVcpuState, state))
            .store(state, Ordering::Release);
        self.counters
            .preemptions_marked
            .fetch_add(1, Ordering::Relaxed);
    }

    /// An injector stops holding `vcpu`; the last one clears its state and,
    /// if a caller deferred work to the resume, sends FLUSH_DEFER to it
    /// (call before the vCPU re-enters KVM_RUN for the guarantee that it
    /// runs first).
    pub fn end_preemption(&self, vcpu: u32) -> Result<(), HypercallError> {
        if vcpu >= self.nr_vcpus {
            return Ok(());
        }
        let holders = &self.holders[vcpu as usize];
        let prev = holders
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| h.checked_sub(1))
            .unwrap_or(0);
        if prev != 1 {
            return Ok(());
        }
        let old = self
            .u32_at(vcpu, offset_of!(PvVcpuState, state))
            .swap(0, Ordering::AcqRel);
        self.u32_at(vcpu, offset_of!(PvVcpuState, seq))
            .fetch_add(1, Ordering::Release);
        if old & pv::STATE_FLUSH != 0 {
            self.u64_at(vcpu, offset_of!(PvVcpuState, flushes))
                .fetch_add(1, Ordering::Relaxed);
            self.counters
                .flushes_signalled
                .fetch_add(1, Ordering::Relaxed);
            self.signal(vcpu, vector::FLUSH_DEFER)?;
        }
        Ok(())
    }

    /// CPU hotplug: asks `vcpu` to go offline (or back online) by writing
    /// its request word, then sends it the HOTPLUG interrupt. Returns the
    /// request value (what the guest echoes in `hotplug_done`).
    pub fn hotplug_request(&self, vcpu: u32, offline: bool) -> Result<u32, HypercallError> {
        if vcpu >= self.nr_vcpus {
            return Err(HypercallError::NoSuchVcpu(vcpu.into()));
        }
        let w = self.u32_at(vcpu, offset_of!(PvVcpuState, hotplug_request));
        let seq = (w.load(Ordering::Relaxed) >> 1).wrapping_add(1).max(1);
        let value = seq << 1 | if offline { pv::HOTPLUG_OFFLINE } else { 0 };
        // Release: nothing else to publish, but the guest reads it Acquire.
        w.store(value, Ordering::Release);
        self.signal(vcpu, vector::HOTPLUG)?;
        Ok(value)
    }

    /// The last hotplug request `vcpu` acted on (with
    /// [`pv::HOTPLUG_REFUSED`] if it refused it); untrusted, for counting.
    pub fn hotplug_done(&self, vcpu: u32) -> u32 {
        if vcpu >= self.nr_vcpus {
            return 0;
        }
        self.u32_at(vcpu, offset_of!(PvVcpuState, hotplug_done))
            .load(Ordering::Acquire)
    }

    /// Sends `vector` to `vcpu` through the in-kernel APIC (x2APIC id =
    /// vCPU index; 32-bit ids in the MSI address as KVM_CAP_X2APIC_API
    /// allows).
    fn signal(&self, vcpu: u32, vector: u8) -> Result<(), HypercallError> {
        let msi = kvm_msi {
            address_lo: 0xfee0_0000 | ((vcpu & 0xff) << 12),
            address_hi: vcpu & !0xff,
            data: u32::from(vector),
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| HypercallError::SignalMsi {
                vcpu,
                errno: e.to_string(),
            })
    }

    /// Serves the hypercall `vcpu` made (its request is in its own PV
    /// state); returns the value its `in` reads.
    pub fn hypercall(&self, vcpu: u32) -> Result<u32, HypercallError> {
        if vcpu >= self.nr_vcpus {
            return Err(HypercallError::NoSuchVcpu(vcpu.into()));
        }
        self.counters.hypercalls.fetch_add(1, Ordering::Relaxed);
        let op = self
            .u32_at(vcpu, offset_of!(PvVcpuState, op))
            .load(Ordering::Acquire);
        match op {
            pv::OP_SEND_IPI => {
                let v = self
                    .u32_at(vcpu, offset_of!(PvVcpuState, vector))
                    .load(Ordering::Relaxed);
                let vector = u8::try_from(v)
                    .ok()
                    .filter(|&v| v >= 32)
                    .ok_or(HypercallError::BadVector(v))?;
                let mut targets = Vec::new();
                for w in 0..MAX_VCPUS / 64 {
                    let bits = self
                        .u64_at(vcpu, offset_of!(PvVcpuState, bitmap) + w * size_of::<u64>())
                        .load(Ordering::Relaxed);
                    let mut b = bits;
                    while b != 0 {
                        let t = (w * 64) as u64 + u64::from(b.trailing_zeros());
                        if t >= u64::from(self.nr_vcpus) {
                            return Err(HypercallError::NoSuchVcpu(t));
                        }
                        targets.push(t as u32);
                        b &= b - 1;
                    }
                }
                for &t in &targets {
                    self.signal(t, vector)?;
                }
                self.counters.send_ipi_calls.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .ipis_sent
                    .fetch_add(targets.len() as u64, Ordering::Relaxed);
                Ok(targets.len() as u32)
            }
            pv::OP_YIELD_TO => {
                let target = self
                    .u64_at(vcpu, offset_of!(PvVcpuState, arg))
                    .load(Ordering::Relaxed);
                if target >= u64::from(self.nr_vcpus) {
                    return Err(HypercallError::NoSuchVcpu(target));
                }
                self.counters.yields.fetch_add(1, Ordering::Relaxed);
                let left = self
                    .kickers
                    .get()
                    .and_then(|k| k.get(target as usize))
                    .and_then(|k| k.end_pause_early());
                if let Some(left) = left {
                    self.counters
                        .yields_effective
                        .fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .pause_ns_saved
                        .fetch_add(left.as_nanos() as u64, Ordering::Relaxed);
                }
                Ok(u32::from(left.is_some()))
            }
            other => Err(HypercallError::UnknownOp(other)),
        }
    }

    /// What was served so far.
    pub fn totals(&self) -> PvHostTotals {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PvHostTotals {
            hypercalls: l(&c.hypercalls),
            send_ipi_calls: l(&c.send_ipi_calls),
            ipis_sent: l(&c.ipis_sent),
            yields: l(&c.yields),
            yields_effective: l(&c.yields_effective),
            pause_ns_saved: l(&c.pause_ns_saved),
            preemptions_marked: l(&c.preemptions_marked),
            deferrable: l(&c.deferrable),
            flushes_signalled: l(&c.flushes_signalled),
        }
    }
}
