//! The workload layer: what the guest runs once every vCPU is online. The
//! platform calibration, the latency probe on every vCPU, and the workload
//! the control block names, one file each:
//!
//! | workload | file | runs |
//! |---|---|---|
//! | `idle`, `hogs`, `churn` | [`phase`], [`hogs`], [`churn`] | once, timed |
//! | `spin` | [`spin`] | once, every vCPU, interrupts off |
//! | `floor` | [`floor`] | once, vCPU 0 and 1 |
//! | `ping`, `shootdown`, `torture` | [`ping`], [`shootdown`], [`torture`] | once per design |
//!
//! [`PROGRAM`] is what the kernel runs: it plugs the cross-call layer and
//! the workloads' system calls in at boot ([`init`]) and then runs the
//! experiment on the BSP ([`bsp`]) and the `spin` loop on the APs ([`ap`]).
//! Adding a workload is a file here, an [`abi::Workload`] variant and its
//! row in [`bsp`] (and [`phase::run_designs`]'s spawn table if it runs per
//! design).

mod calibrate;
mod calls;
mod checker;
mod churn;
pub mod floor;
mod hogs;
mod phase;
mod ping;
mod probe;
mod shootdown;
mod spin;
mod torture;

use core::sync::atomic::{AtomicU64, Ordering};

use abi::{syscall, vector, Control, TestHook, Workload};

use crate::kernel::arch::{self, TrapFrame};
use crate::kernel::boot::{self, Program};
use crate::kernel::sched::{self, Body, Class};
use crate::kernel::{syscall as sys_table, trap};
use crate::xcall;

use calls::sys;

/// What the kernel runs on top of itself.
pub static PROGRAM: Program = Program { init, bsp, ap };

/// TSC at which the running workload ends (user tasks learn it from their
/// system calls; it moves once per phase, when the phase's clock starts).
static END_TSC: AtomicU64 = AtomicU64::new(0);

fn sys_workload_end(_: &mut TrapFrame) -> u64 {
    phase::end_tsc()
}

/// BSP, at boot: plug in the cross-call layer and the workloads' vectors
/// and system calls, and take their settings.
fn init(control: &Control) {
    xcall::init(control);
    // SAFETY: Program::init runs on the BSP at boot, before StartAps and
    // before any task or interrupt source exists.
    unsafe {
        checker::install();
        trap::set_handler(vector::FLOOR, floor::on_ipi);
        sys_table::register(syscall::CALIBRATION, calibrate::sys_calibration);
        sys_table::register(syscall::WORKLOAD_END, sys_workload_end);
        sys_table::register(syscall::SHOOTDOWN, shootdown::sys_shootdown);
        sys_table::register(syscall::ASYNC_CALL, shootdown::sys_async_call);
        sys_table::register(syscall::PING, ping::sys_ping);
        sys_table::register(syscall::TORTURE, torture::sys_torture);
    }
    checker::BROKEN.store(
        control.test_hook == TestHook::BrokenChecker as u32,
        Ordering::Relaxed,
    );
    torture::configure(control);
}

/// BSP, every vCPU online, interrupts off: the experiment.
fn bsp(control: &Control) {
    let workload = Workload::try_from(control.workload).unwrap_or(Workload::None);
    if workload == Workload::Spin {
        spin::run(control, 0);
        spin::wait_all(control.nr_vcpus);
    }
    // SAFETY: the scheduler runs from here on.
    unsafe { arch::irq_enable() };
    let scheduled = !matches!(workload, Workload::None | Workload::Spin);
    if !scheduled && control.test_hook != TestHook::UserFault as u32 {
        return;
    }
    let tick_hz = calibrate::calibrate(control);
    sched::PARAMS.tick_cycles.store(
        control.tsc_khz * 1000 / u64::from(tick_hz),
        Ordering::Relaxed,
    );
    if start_test_hook_task(control) {
        // The hook's task ends the run with its fault: give it the time.
        sched::sleep_us(control.duration_us.max(1_000_000));
    }
    match workload {
        Workload::Floor => floor::run(control),
        Workload::Ping => {
            floor::run(control); // the floor first, in the same VM
            phase::run_designs(control, workload);
        }
        Workload::None | Workload::Spin => {}
        w if w.per_design() => phase::run_designs(control, w),
        w => phase::run_timed(control, w),
    }
}

/// Each AP, online, interrupts off: the `spin` loop once every vCPU is up.
fn ap(control: &Control, index: u32) {
    if control.workload == Workload::Spin as u32 {
        while !boot::all_online(control.nr_vcpus) {
            arch::pause();
        }
        spin::run(control, index);
    }
}

/// Starts the user task of the `user-fault` test hook, if asked for.
fn start_test_hook_task(control: &Control) -> bool {
    let hooked = control.test_hook == TestHook::UserFault as u32;
    if hooked {
        sched::spawn(
            "faulty",
            Class::Normal,
            Body::User(faulty, 0),
            control.test_hook_vcpu,
            true,
        )
        .expect("faulty task");
    }
    hooked
}

/// What the `user-fault` hook's task reads: just above the VMM's 4 GiB
/// identity map, so unmapped in every guest mode (kernel memory is
/// user-readable in the PVM host's native mode).
const UNMAPPED: u64 = (4 << 30) + 0x10;

/// The `user-fault` hook's task: reads an unmapped address; the page fault
/// must be reported with its vector, RIP and address.
extern "C" fn faulty(_: usize) -> ! {
    // SAFETY: deliberately invalid: UNMAPPED is outside every mapping, so
    // this user-mode read raises #PF (the point of the hook).
    let v = unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
    sys(syscall::EXIT, v);
    unreachable!("EXIT returned")
}
