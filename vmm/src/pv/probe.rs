//! The host capability probe: before a run, a throwaway 1-vCPU VM in real
//! mode asks KVM what paravirtual features really work here.
//!
//! - **Steal time**: the probe guest writes MSR_KVM_STEAL_TIME and exits
//!   twice; KVM updates the area on the re-entry in between, so a non-zero
//!   `version` afterwards means KVM accepted it.
//! - **KVM hypercalls**: the probe guest issues `KVM_HC_VAPIC_POLL_IRQ` (a
//!   no-op returning 0) with `vmcall` (Intel) or `vmmcall` (AMD) and reports
//!   the return value through a port. On some hosts (nested ones among
//!   them) the vCPU never comes back from the instruction: after
//!   [`HYPERCALL_TIMEOUT`] the probe kicks its vCPU thread out of KVM_RUN
//!   and answers "no". A thread that does not even leave KVM_RUN is left
//!   behind (it owns its VM), never waited on: the probe cannot hang.
//! - **KVM's `preempted` flag**: KVM sets it only while a vCPU thread is
//!   descheduled involuntarily in KVM_RUN. A second throwaway VM has two
//!   vCPUs on two host CPUs: vCPU 1 spins, vCPU 0 polls vCPU 1's flag, and
//!   a SCHED_FIFO thread preempts vCPU 1's host CPU in a few short bursts.
//!   "Unknown" when that cannot be arranged (one host CPU, no SCHED_FIFO);
//!   the guest also reports whether it saw the flag during the run.
//!
//! The result is computed once per process (a sweep probes once).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::memory::MemoryError;

use crate::vcpu::Kicker;

/// How long the hypercall may take before the answer is "no".
pub const HYPERCALL_TIMEOUT: Duration = Duration::from_millis(50);
/// How long a kicked probe vCPU thread gets to leave KVM_RUN.
const KICK_GRACE: Duration = Duration::from_millis(500);

/// KVM's paravirtual feature bits the probe reports (steal time's is in
/// [`crate::vm`], which every run uses).
const KVM_FEATURE_PV_TLB_FLUSH: u32 = 9;
const KVM_FEATURE_PV_SEND_IPI: u32 = 11;
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 13;

/// Probe guest layout: the boot GDT and page tables the real guest gets
/// (below 0x8000), then the steal-time area and the code.
const PROBE_MEM: u64 = 2 << 20;
const STEAL_AREA: u64 = 0x9000;
const CODE_ADDR: u64 = 0xa000;
/// Ports of the probe guest.
const PORT_STEP: u16 = 0xf5;
const PORT_HYPERCALL_DONE: u16 = 0xf6;

/// What the host offers, as probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPv {
    /// KVM accepted the steal-time area (and advertises it in CPUID).
    pub steal_time: bool,
    /// A KVM hypercall completed (returned to the guest).
    pub kvm_hypercalls: bool,
    /// Why hypercalls are unavailable, in words (empty when they work).
    pub hypercall_note: String,
    /// KVM advertises PV send-IPI (KVM_FEATURE_PV_SEND_IPI).
    pub cpuid_send_ipi: bool,
    /// KVM advertises PV sched-yield (KVM_FEATURE_PV_SCHED_YIELD).
    pub cpuid_sched_yield: bool,
    /// KVM advertises PV TLB flush (KVM_FEATURE_PV_TLB_FLUSH).
    pub cpuid_flush_tlb: bool,
    /// The hypercall instruction is `vmmcall` (AMD) rather than `vmcall`.
    pub amd: bool,
    /// KVM set the `preempted` flag of a vCPU the probe preempted (`None`:
    /// could not be tested).
    pub preempted_flag: Option<bool>,
    /// How the flag probe went, in words.
    pub preempted_flag_note: String,
    /// How long the probe took.
    pub elapsed: Duration,
}

impl HostPv {
    /// Whether KVM's PV send-IPI can be used (hypercalls work, advertised).
    pub fn kvm_send_ipi(&self) -> bool {
        self.kvm_hypercalls && self.cpuid_send_ipi
    }

    /// Whether KVM's PV sched-yield can be used.
    pub fn kvm_sched_yield(&self) -> bool {
        self.kvm_hypercalls && self.cpuid_sched_yield
    }

    /// The one-line summary of the run header.
    pub fn summary(&self) -> String {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut s = format!(
            "steal-time {}, preempted-flag {}, kvm-hypercalls {}",
            yn(self.steal_time),
            self.preempted_flag.map_or("unknown", yn),
            yn(self.kvm_hypercalls)
        );
        if !self.kvm_hypercalls && !self.hypercall_note.is_empty() {
            s += &format!(" ({})", self.hypercall_note);
        }
        s += &format!(" [probe {} ms]", self.elapsed.as_millis());
        s
    }
}

/// Why the probe could not run at all.
#[derive(Debug, thiserror::Error)]
#[error("host capability probe: {what} failed: {source}")]
pub struct ProbeError {
    what: &'static str,
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn err<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> ProbeError {
    move |e| ProbeError {
        what,
        source: Box::new(e),
    }
}

/// The probe result for this process (probed on first use).
pub fn host_pv(kvm: &Kvm) -> Result<HostPv, ProbeError> {
    static CACHE: Mutex<Option<HostPv>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(pv) = &*cache {
        return Ok(pv.clone());
    }
    let pv = probe(kvm)?;
    *cache = Some(pv.clone());
    Ok(pv)
}

/// [`host_pv`] for the KVM device at `path` (cached per process).
pub fn host_pv_at(path: &std::path::Path) -> Result<HostPv, crate::Error> {
    let kvm = crate::vm::open_kvm(path)?;
    Ok(host_pv(&kvm)?)
}

/// [`probe`] for the KVM device at `path` (not cached).
pub fn probe_at(path: &std::path::Path) -> Result<HostPv, crate::Error> {
    let kvm = crate::vm::open_kvm(path)?;
    Ok(probe(&kvm)?)
}

/// Runs the probe (uncached).
pub fn probe(kvm: &Kvm) -> Result<HostPv, ProbeError> {
    let start = Instant::now();
    let cpuid = crate::vm::supported_cpuid(kvm).map_err(err("KVM_GET_SUPPORTED_CPUID"))?;
    let features = crate::vm::kvm_pv_features(&cpuid);
    let has = |bit: u32| features & (1 << bit) != 0;
    let amd = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| e.ebx == u32::from_le_bytes(*b"Auth"));
    // The probe guest runs as the real one does: 64-bit mode at CPL0 (the
    // same page tables, GDT and vCPU set-up), in-kernel irqchip.
    let mem = crate::memory::allocate(PROBE_MEM).map_err(err("allocating probe memory"))?;
    crate::memory::write_page_tables(&mem, false).map_err(err("writing the probe page tables"))?;
    crate::memory::write_gdt(&mem).map_err(err("writing the probe GDT"))?;
    write_probe_guest(&mem, amd).map_err(err("writing the probe guest"))?;
    let vm = crate::vm::create_vm(kvm, &mem, 1).map_err(err("creating the probe VM"))?;
    let vcpu = crate::vm::create_vcpu(&vm, &cpuid, 0, 1, GuestAddress(CODE_ADDR))
        .map_err(err("creating the probe vCPU"))?;
    crate::vcpu::install_kick_handler().map_err(err("installing the kick handler"))?;

    let (steal_time, hypercall) = run_probe_vcpu(vm, vcpu, mem);
    let (preempted_flag, preempted_flag_note) = if steal_time {
        probe_preempted_flag(kvm, &cpuid)
    } else {
        (None, "steal time is not accepted".to_string())
    };
    let (kvm_hypercalls, hypercall_note) = match hypercall {
        Hypercall::Returned(0) => (true, String::new()),
        Hypercall::Returned(r) => (false, format!("the hypercall returned error {r:#x}")),
        Hypercall::TimedOut => (
            false,
            format!(
                "the probe vCPU did not return from {} within {} ms",
                if amd { "vmmcall" } else { "vmcall" },
                HYPERCALL_TIMEOUT.as_millis()
            ),
        ),
        Hypercall::Stuck => (
            false,
            "the probe vCPU hung in the hypercall and ignored the kick; its thread was left behind"
                .to_string(),
        ),
        Hypercall::Failed(why) => (false, why),
    };
    Ok(HostPv {
        steal_time: steal_time && has(crate::vm::KVM_FEATURE_STEAL_TIME),
        kvm_hypercalls,
        hypercall_note,
        cpuid_send_ipi: has(KVM_FEATURE_PV_SEND_IPI),
        cpuid_sched_yield: has(KVM_FEATURE_PV_SCHED_YIELD),
        cpuid_flush_tlb: has(KVM_FEATURE_PV_TLB_FLUSH),
        amd,
        preempted_flag,
        preempted_flag_note,
        elapsed: start.elapsed(),
    })
}

/// Where the flag probe's vCPUs run: vCPU 0 polls, vCPU 1 spins.
const FLAG_POLLER: u64 = 0xc000;
const FLAG_SPINNER: u64 = 0xd000;
/// vCPU 1's steal-time area (vCPU 0's is at STEAL_AREA).
const FLAG_AREA: u64 = STEAL_AREA + 0x40;
/// The poller reports a sighting here.
const PORT_FLAG_SEEN: u16 = 0xf9;
/// Antagonist bursts on the spinner's host CPU.
const FLAG_BURSTS: u32 = 4;
const FLAG_BURST: Duration = Duration::from_millis(3);

/// The flag probe: returns (answer, note).
fn probe_preempted_flag(kvm: &Kvm, cpuid: &kvm_bindings::CpuId) -> (Option<bool>, String) {
    let cpus = match crate::inject::placement::process_cpus() {
        Ok(c) if c.len() >= 2 => c,
        _ => return (None, "needs two host CPUs".into()),
    };
    let setup = || -> Result<(VmFd, VcpuFd, VcpuFd, GuestMemoryMmap), ProbeError> {
        let mem = crate::memory::allocate(PROBE_MEM).map_err(err("allocating probe memory"))?;
        crate::memory::write_page_tables(&mem, false)
            .map_err(err("writing the probe page tables"))?;
        crate::memory::write_gdt(&mem).map_err(err("writing the probe GDT"))?;
        write_flag_guest(&mem).map_err(err("writing the flag probe guest"))?;
        let vm = crate::vm::create_vm(kvm, &mem, 2).map_err(err("creating the flag probe VM"))?;
        let poller = crate::vm::create_vcpu(&vm, cpuid, 0, 2, GuestAddress(FLAG_POLLER))
            .map_err(err("creating the poller vCPU"))?;
        let spinner = crate::vm::create_vcpu(&vm, cpuid, 1, 2, GuestAddress(FLAG_SPINNER))
            .map_err(err("creating the spinner vCPU"))?;
        Ok((vm, poller, spinner, mem))
    };
    let (vm, poller, spinner, mem) = match setup() {
        Ok(v) => v,
        Err(e) => return (None, e.to_string()),
    };
    let vm = Arc::new(vm);
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for (mut fd, cpu) in [(poller, cpus[0]), (spinner, cpus[1])] {
        let kicker = Arc::new(Kicker::new(&mut fd));
        let (thread_kicker, tx, vm, mem) = (kicker.clone(), tx.clone(), vm.clone(), mem.clone());
        let t = std::thread::Builder::new()
            .name("pv-probe".into())
            .spawn(move || {
                let (_vm, _mem, mut fd) = (vm, mem, fd);
                let _detach = DetachOnDrop(&thread_kicker);
                let _ = crate::inject::placement::set_affinity(0, &[cpu]);
                let _ = tx.send(None);
                // Leaves on the poller's report, a kick, or an error.
                if let Ok(VcpuExit::IoOut(PORT_FLAG_SEEN, _)) = fd.run() {
                    let _ = tx.send(Some(true));
                }
            });
        match t {
            Ok(t) => {
                kicker.set_thread(&t);
                threads.push((t, kicker));
            }
            Err(e) => return (None, format!("cannot start a probe thread: {e}")),
        }
    }
    drop(tx);
    // Both threads started (then a moment to enter the guest).
    for _ in 0..2 {
        let _ = rx.recv_timeout(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_millis(2));
    let antagonist = std::thread::Builder::new()
        .name("pv-probe-fifo".into())
        .spawn(move || -> Result<(), String> {
            crate::inject::placement::set_affinity(0, &[cpus[1]]).map_err(|e| e.to_string())?;
            crate::inject::placement::set_fifo(1)
                .map_err(|e| format!("SCHED_FIFO refused: {e}"))?;
            for _ in 0..FLAG_BURSTS {
                let end = Instant::now() + FLAG_BURST;
                while Instant::now() < end {
                    std::hint::spin_loop();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            crate::inject::placement::set_normal();
            Ok(())
        });
    let fifo = match antagonist {
        Ok(t) => t.join().unwrap_or(Err("the antagonist panicked".into())),
        Err(e) => Err(format!("cannot start the antagonist: {e}")),
    };
    let seen = rx.try_recv().ok().flatten() == Some(true);
    for (_, k) in &threads {
        k.kick();
    }
    let grace = Instant::now() + KICK_GRACE;
    for (t, _) in threads {
        while !t.is_finished() && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(2));
        }
        if t.is_finished() {
            let _ = t.join();
        } // else: left behind with its VM, never waited on
    }
    match (seen, fifo) {
        (true, _) => (
            Some(true),
            "set while a SCHED_FIFO thread preempted the vCPU".into(),
        ),
        (false, Ok(())) => (
            Some(false),
            format!(
                "not set during {FLAG_BURSTS} SCHED_FIFO bursts of {} ms on the vCPU's host CPU",
                FLAG_BURST.as_millis()
            ),
        ),
        (false, Err(why)) => (None, why),
    }
}

/// The flag probe guest: each vCPU registers its steal-time area; vCPU 1
/// then spins, vCPU 0 polls vCPU 1's `preempted` byte and reports it set.
fn write_flag_guest(mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    let register = |area: u64| {
        let mut c = vec![0xb9];
        c.extend_from_slice(&0x4b56_4d03u32.to_le_bytes()); // mov ecx, MSR_KVM_STEAL_TIME
        c.push(0xb8);
        c.extend_from_slice(&(area as u32 | 1).to_le_bytes()); // mov eax, area | enable
        c.extend_from_slice(&[0x31, 0xd2, 0x0f, 0x30]); // xor edx, edx; wrmsr
        c
    };
    let mut spinner = register(FLAG_AREA);
    spinner.extend_from_slice(&[0xeb, 0xfe]); // jmp $
    crate::memory::write_bytes(mem, "the flag probe spinner", FLAG_SPINNER, &spinner)?;
    let mut poller = register(STEAL_AREA);
    // loop: movzx eax, byte [FLAG_AREA + 16]; test eax, eax; jz loop
    poller.extend_from_slice(&[0x0f, 0xb6, 0x04, 0x25]);
    poller.extend_from_slice(&(FLAG_AREA as u32 + 16).to_le_bytes());
    poller.extend_from_slice(&[0x85, 0xc0, 0x74, 0xf4]);
    poller.extend_from_slice(&[0xe6, PORT_FLAG_SEEN as u8, 0xf4, 0xeb, 0xfd]); // out; hlt; jmp $-1
    crate::memory::write_bytes(mem, "the flag probe poller", FLAG_POLLER, &poller)
}

/// The probe guest (64-bit code): writes the steal-time MSR, exits twice,
/// then makes the hypercall and reports its return value. It has no IDT:
/// any exception is a triple fault (KVM_EXIT_SHUTDOWN).
fn write_probe_guest(mem: &GuestMemoryMmap, amd: bool) -> Result<(), MemoryError> {
    let mut code = vec![0xb9];
    code.extend_from_slice(&0x4b56_4d03u32.to_le_bytes()); // mov ecx, MSR_KVM_STEAL_TIME
    code.push(0xb8);
    code.extend_from_slice(&(STEAL_AREA as u32 | 1).to_le_bytes()); // mov eax, area | enable
    code.extend_from_slice(&[0x31, 0xd2]); // xor edx, edx
    code.extend_from_slice(&[0x0f, 0x30]); // wrmsr
    code.extend_from_slice(&[0xe6, PORT_STEP as u8]); // out PORT_STEP, al
    code.extend_from_slice(&[0xe6, PORT_STEP as u8]); // again, after a re-entry
    code.extend_from_slice(&[0xb8, 1, 0, 0, 0]); // mov eax, KVM_HC_VAPIC_POLL_IRQ
    code.extend_from_slice(&[0x31, 0xdb]); // xor ebx, ebx
    code.extend_from_slice(if amd {
        &[0x0f, 0x01, 0xd9] // vmmcall
    } else {
        &[0x0f, 0x01, 0xc1] // vmcall
    });
    code.extend_from_slice(&[0xe7, PORT_HYPERCALL_DONE as u8]); // out port, eax
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp $-1
    crate::memory::write_bytes(mem, "the probe guest", CODE_ADDR, &code)
}

enum Hypercall {
    Returned(u32),
    TimedOut,
    Stuck,
    Failed(String),
}

enum Step {
    StealVersion(u32),
    Hypercall(u32),
    Failed(String),
}

/// Runs the probe vCPU on its own thread and watches it.
fn run_probe_vcpu(vm: VmFd, mut vcpu: VcpuFd, mem: GuestMemoryMmap) -> (bool, Hypercall) {
    let kicker = Arc::new(Kicker::new(&mut vcpu));
    let thread_kicker = kicker.clone();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("pv-probe".into())
        .spawn(move || {
            // The VM, vCPU and memory live as long as this thread.
            let (_vm, mut vcpu, mem) = (vm, vcpu, mem);
            let mut steps = 0;
            let tx = tx;
            // The kick pointer is nulled before the vCPU fd drops.
            let _detach = DetachOnDrop(&thread_kicker);
            loop {
                let step = match vcpu.run() {
                    Ok(VcpuExit::IoOut(PORT_STEP, _)) => {
                        steps += 1;
                        if steps < 2 {
                            continue;
                        }
                        let v = mem
                            .read_obj::<u32>(GuestAddress(STEAL_AREA + 8))
                            .unwrap_or(0);
                        Step::StealVersion(v)
                    }
                    Ok(VcpuExit::IoOut(PORT_HYPERCALL_DONE, data)) => {
                        let mut b = [0u8; 4];
                        let n = data.len().min(4);
                        b[..n].copy_from_slice(&data[..n]);
                        let _ = tx.send(Step::Hypercall(u32::from_le_bytes(b)));
                        return;
                    }
                    Ok(VcpuExit::Shutdown) => Step::Failed(format!(
                        "the probe guest triple-faulted (after {steps} of 2 steps)"
                    )),
                    Ok(VcpuExit::Hlt) => continue,
                    Ok(other) => Step::Failed(format!("unexpected exit {other:?}")),
                    Err(e) => Step::Failed(format!("KVM_RUN: {e}")),
                };
                let last = matches!(step, Step::Failed(_));
                if tx.send(step).is_err() || last {
                    return;
                }
            }
        });
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            return (
                false,
                Hypercall::Failed(format!("cannot start the probe thread: {e}")),
            )
        }
    };
    let mut steal = false;
    let deadline = Instant::now() + HYPERCALL_TIMEOUT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Step::StealVersion(v)) => steal = v != 0,
            Ok(Step::Hypercall(r)) => {
                let _ = thread.join();
                return (steal, Hypercall::Returned(r));
            }
            Ok(Step::Failed(why)) => {
                let _ = thread.join();
                return (steal, Hypercall::Failed(why));
            }
            Err(_) => break,
        }
    }
    // Timed out: kick the thread out of KVM_RUN and give it a grace period.
    kicker.set_thread(&thread);
    kicker.kick();
    let grace = Instant::now() + KICK_GRACE;
    while Instant::now() < grace {
        if thread.is_finished() {
            let _ = thread.join();
            return (steal, Hypercall::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Never joined: the thread (and its VM) are left behind.
    drop(thread);
    (steal, Hypercall::Stuck)
}

/// Nulls the kicker's pointer into `kvm_run` when the probe thread ends
/// (declared after the vCPU fd's owner, so it runs first).
struct DetachOnDrop<'a>(&'a Kicker);

impl Drop for DetachOnDrop<'_> {
    fn drop(&mut self) {
        self.0.detach();
    }
}
