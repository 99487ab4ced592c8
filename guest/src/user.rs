//! User mode: user stacks (slots of the user window, which the VMM maps
//! user-accessible), entering CPL3 with `iretq`, the `syscall` stub user
//! code calls, and the user-mode task bodies.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::layout::{USER_WINDOW_ADDR, USER_WINDOW_SIZE};
use abi::syscall;

use crate::percpu::selector;
use crate::sync::IrqSpinLock;

/// Size of one user stack.
pub const USER_STACK_SIZE: u64 = 16 << 10;
const SLOTS: usize = (USER_WINDOW_SIZE / USER_STACK_SIZE) as usize;

static SLOT_BITMAP: IrqSpinLock<[u64; SLOTS / 64]> = IrqSpinLock::new([0; SLOTS / 64]);

/// A user stack slot, owned by one task.
pub struct UserStack(usize);

impl UserStack {
    /// Takes a free slot.
    pub fn alloc() -> Option<Self> {
        let mut map = SLOT_BITMAP.lock();
        for (w, word) in map.iter_mut().enumerate() {
            if *word != u64::MAX {
                let bit = (!*word).trailing_zeros() as usize;
                *word |= 1 << bit;
                return Some(UserStack(w * 64 + bit));
            }
        }
        None
    }

    /// Returns the slot.
    pub fn free(self) {
        SLOT_BITMAP.lock()[self.0 / 64] &= !(1 << (self.0 % 64));
    }

    /// Initial user RSP (16-byte aligned minus 8, as after a call).
    pub fn top(&self) -> u64 {
        USER_WINDOW_ADDR + (self.0 as u64 + 1) * USER_STACK_SIZE - 8
    }
}

/// Drops to CPL3 at `f(arg)` on `stack`, interrupts on.
pub fn enter(f: extern "C" fn(usize) -> !, arg: usize, stack: u64) -> ! {
    // SAFETY: builds an iretq frame for a 64-bit user code segment and
    // user data segment of this CPU's GDT; `f` is in the guest image and
    // `stack` in the user window, both mapped user-accessible by the VMM.
    // The kernel stack is abandoned: traps from user mode start at
    // TSS.RSP0 (this task's kernel stack top).
    unsafe {
        asm!(
            "push {ss}",
            "push {rsp}",
            "push {rflags}",
            "push {cs}",
            "push {rip}",
            "xor ebp, ebp",
            "iretq",
            ss = in(reg) u64::from(selector::USER_DATA),
            rsp = in(reg) stack,
            rflags = in(reg) 0x202u64,
            cs = in(reg) u64::from(selector::USER_CODE),
            rip = in(reg) f as *const () as u64,
            in("rdi") arg,
            options(noreturn)
        )
    }
}

/// A system call from user mode: `ud2` with the number in rax and the
/// argument in rdi (see crate::trap for why not `syscall`).
#[inline(always)]
pub fn sys(nr: u64, a0: u64) -> u64 {
    let ret: u64;
    // SAFETY: the kernel's #UD handler recognises a user `ud2`, runs the
    // call, steps over the instruction and restores every register but rax
    // (the result).
    unsafe { asm!("ud2", inlateout("rax") nr => ret, in("rdi") a0, options(nostack)) };
    ret
}

/// Per-task progress of the hog workload, indexed by task slot.
pub static HOG_ITERATIONS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
/// CPUs each hog task was seen on (bit per CPU < 64).
pub static HOG_CPUS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

/// CPL3 calibration: times 1024 x `dec; jnz` many times, reports the best.
pub extern "C" fn calibrate(_: usize) -> ! {
    let mut best = u64::MAX;
    for _ in 0..64 {
        let t0 = crate::cpu::rdtsc();
        // SAFETY: a register-only loop.
        unsafe {
            asm!("2:", "dec {n}", "jnz 2b", n = inout(reg) 1024u64 => _, options(nomem, nostack))
        };
        best = best.min(crate::cpu::rdtsc() - t0);
    }
    sys(syscall::CALIBRATION, best);
    sys(syscall::EXIT, 0);
    unreachable!()
}

/// A CPU-bound user task: spins at CPL3 until the workload ends, counting
/// iterations and noting each CPU it finds itself on (a GETCPU syscall
/// every 4096 iterations).
pub extern "C" fn hog(slot: usize) -> ! {
    let end = sys(syscall::WORKLOAD_END, 0);
    let slot = slot % 64;
    let mut n = 0u64;
    loop {
        n += 1;
        if n.is_multiple_of(4096) {
            let cpu = sys(syscall::GETCPU, 0);
            if cpu < 64 {
                HOG_CPUS[slot].fetch_or(1 << cpu, Ordering::Relaxed);
            }
            HOG_ITERATIONS[slot].store(n, Ordering::Relaxed);
            if crate::cpu::rdtsc() >= end {
                break;
            }
        }
    }
    sys(syscall::EXIT, 0);
    unreachable!()
}

/// A user task that dereferences an unmapped address (test hook): the
/// page fault must be reported with its vector and RIP.
pub extern "C" fn fault(_: usize) -> ! {
    // SAFETY: deliberately invalid: 0x10 is kernel-only memory, so this
    // user-mode read raises #PF (the point of the hook).
    let v = unsafe { core::ptr::read_volatile(0x10 as *const u64) };
    sys(syscall::EXIT, v);
    unreachable!()
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^ (x << 17)
}

/// Native think time between calls: a user-mode spin of `cycles`.
fn think(cycles: u64) {
    let t0 = crate::cpu::rdtsc();
    while crate::cpu::rdtsc().wrapping_sub(t0) < cycles {
        core::hint::spin_loop();
    }
}

/// The shootdown workload task: random think time at CPL3, then a cross
/// call to a random subset of vCPUs (every eighth one asynchronous, to a
/// single target), until the workload ends.
pub extern "C" fn shooter(seed: usize) -> ! {
    let mut x = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut n = 0u64;
    let mut end = u64::MAX;
    while crate::cpu::rdtsc() < end {
        x = xorshift(x);
        think(10_000 + x % 190_000);
        // Each call returns the end of the phase (it may move once, when
        // the phase's clock starts).
        end = if n.is_multiple_of(8) && n > 0 {
            sys(syscall::ASYNC_CALL, x)
        } else {
            sys(syscall::SHOOTDOWN, x)
        };
        n += 1;
    }
    sys(syscall::EXIT, 0);
    unreachable!()
}

/// The torture workload task: one weighted primitive per call.
pub extern "C" fn torturer(seed: usize) -> ! {
    let mut x = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut end = u64::MAX;
    while crate::cpu::rdtsc() < end {
        x = xorshift(x);
        think(2_000 + x % 20_000);
        end = sys(syscall::TORTURE, x);
    }
    sys(syscall::EXIT, 0);
    unreachable!()
}

/// The ping workload task: synchronous calls to the next vCPU.
pub extern "C" fn pinger(_: usize) -> ! {
    let mut end = u64::MAX;
    while crate::cpu::rdtsc() < end {
        end = sys(syscall::PING, 0);
        think(5_000);
    }
    sys(syscall::EXIT, 0);
    unreachable!()
}
