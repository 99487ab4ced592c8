//! Guest-physical memory layout. Everything below 4 GiB is identity-mapped
//! with 2 MiB pages by the VMM before the first instruction runs.

use core::mem::size_of;

use crate::{Histogram, PvVcpuState, SharedPage, VcpuResults, MAX_VCPUS};

/// The boot GDT the VMM builds (null, 64-bit code, data).
pub const GDT_ADDR: u64 = 0x1000;
/// PML4 of the identity map.
pub const PML4_ADDR: u64 = 0x2000;
/// The single PDPT of the identity map.
pub const PDPT_ADDR: u64 = 0x3000;
/// Four page directories (one per GiB), 2 MiB pages.
pub const PD_ADDR: u64 = 0x4000;
/// How much the identity map covers.
pub const IDENTITY_MAP_SIZE: u64 = 4 << 30;
/// The shared control/results area ([`SharedPage`]).
pub const SHARED_ADDR: u64 = 0x10_0000;
/// Size of [`SharedPage`].
pub const SHARED_SIZE: u64 = size_of::<SharedPage>() as u64;
/// Where the guest image is linked (2 MiB aligned, see guest/link.ld):
/// above the 3 MiB the shared page may take (eight designs' histograms of
/// 1% buckets and their per-vCPU preempt-off figures).
pub const IMAGE_ADDR: u64 = 0x40_0000;
/// The guest image must end below this address.
pub const IMAGE_LIMIT: u64 = BOOT_STACKS_ADDR;
/// Per-vCPU boot stacks: vCPU `i` starts with `rsp = boot_stack_top(i)`
/// (at 16 MiB: the image's largest tables, the preempt-off tracer's window
/// histograms, live in their own area, [`PREEMPT_OFF_ADDR`], not in .bss).
pub const BOOT_STACKS_ADDR: u64 = 0x100_0000;
/// Size of one boot stack.
pub const BOOT_STACK_SIZE: u64 = 0x4000;
/// Per-vCPU results ([`VcpuResults`]), vCPU `i` at
/// `VCPU_RESULTS_ADDR + i * size_of::<VcpuResults>()`.
pub const VCPU_RESULTS_ADDR: u64 = BOOT_STACKS_ADDR + MAX_VCPUS as u64 * BOOT_STACK_SIZE;
/// Room reserved for the per-vCPU results: four histograms of 1% buckets
/// (17 KiB each) per vCPU.
pub const VCPU_RESULTS_SIZE: u64 = 80 << 20;
/// The user window: 2 MiB pages the VMM maps user-accessible (with the
/// guest image, whose code user tasks run), for user-mode task stacks.
pub const USER_WINDOW_ADDR: u64 = VCPU_RESULTS_ADDR + VCPU_RESULTS_SIZE;
/// Size of the user window.
pub const USER_WINDOW_SIZE: u64 = 32 << 20;
/// Per-CPU areas: each vCPU's interrupt stacks and boot task live at
/// fixed addresses, so bringing up a vCPU takes no lock (1024 vCPUs
/// contending for the heap lock on 2 host CPUs made boot crawl).
pub const PERCPU_AREA_ADDR: u64 = USER_WINDOW_ADDR + USER_WINDOW_SIZE;
/// Size of one vCPU's area.
pub const PERCPU_AREA_SIZE: u64 = 32 << 10;
/// The ipivirt PV state area: one [`PvVcpuState`]
/// per vCPU, written by the VMM while the guest runs (see [`crate::pv`]).
pub const PV_STATE_ADDR: u64 = PERCPU_AREA_ADDR + MAX_VCPUS as u64 * PERCPU_AREA_SIZE;
/// Room reserved for the PV state area.
pub const PV_STATE_SIZE: u64 = 2 << 20;
/// The preempt-off tracer's per-vCPU figures (guest-private: each vCPU's
/// histogram of window maxima at 1% buckets, its section counts and
/// causes; the BSP copies them into the results): vCPU `i`'s at
/// [`preempt_off_addr`]. A reserved area rather than the image's .bss,
/// where 1024 of them (34 MiB) pushed the boot stacks and everything
/// above them up; the VMM only sizes guest RAM to cover it (zeroed, as
/// all guest RAM starts).
pub const PREEMPT_OFF_ADDR: u64 = CONSOLE_BUFFERS_ADDR + MAX_VCPUS as u64 * CONSOLE_BUFFER_SIZE;
/// Room for one vCPU's preempt-off figures: two [`Histogram`]s (the
/// window maxima as measured and less the host's steal time) plus the
/// guest's few counters beside them (the guest asserts its record fits).
pub const PREEMPT_OFF_SIZE: u64 = 40 << 10;
/// First byte after the fixed layout: the guest heap starts here.
pub const FREE_MEM_ADDR: u64 = PREEMPT_OFF_ADDR + MAX_VCPUS as u64 * PREEMPT_OFF_SIZE;
/// Per-vCPU console buffers ([`Port::ConsoleBuffer`](crate::Port::ConsoleBuffer)).
pub const CONSOLE_BUFFERS_ADDR: u64 = PV_STATE_ADDR + PV_STATE_SIZE;
/// Size of one console buffer: the most one console write sends.
pub const CONSOLE_BUFFER_SIZE: u64 = 0x1000;

/// Guest-physical address of vCPU `index`'s console buffer.
pub const fn console_buffer(index: u32) -> u64 {
    CONSOLE_BUFFERS_ADDR + index as u64 * CONSOLE_BUFFER_SIZE
}

/// Guest-physical address of vCPU `index`'s preempt-off figures.
pub const fn preempt_off_addr(index: u32) -> u64 {
    PREEMPT_OFF_ADDR + index as u64 * PREEMPT_OFF_SIZE
}

// The two histograms and at least 1 KiB of counters fit one vCPU's slot,
// and every slot is page-aligned.
const _: () = assert!(2 * size_of::<Histogram>() as u64 + 1024 <= PREEMPT_OFF_SIZE);
const _: () = assert!(PREEMPT_OFF_ADDR % 0x1000 == 0 && PREEMPT_OFF_SIZE % 0x1000 == 0);

/// Guest-physical address of vCPU `index`'s PV state.
pub const fn pv_state_addr(index: u32) -> u64 {
    PV_STATE_ADDR + index as u64 * size_of::<PvVcpuState>() as u64
}

const _: () = assert!(MAX_VCPUS as u64 * size_of::<PvVcpuState>() as u64 <= PV_STATE_SIZE);

/// vCPU `index`'s per-CPU area.
pub const fn percpu_area(index: u32) -> u64 {
    PERCPU_AREA_ADDR + index as u64 * PERCPU_AREA_SIZE
}

/// Offset of the VIF page in a per-CPU area: its last page.
pub const VIF_PAGE_OFFSET: u64 = PERCPU_AREA_SIZE - 0x1000;

/// vCPU `index`'s VIF page: the virtual interrupt flag (byte 0), its
/// pending bit (byte 1) and the page-fault address (+8) of the PVM host's
/// native mode (see [`crate::guest_mode`]). Page-aligned, private to that
/// vCPU; the VMM reads it for its register dumps.
pub const fn vif_page(index: u32) -> u64 {
    percpu_area(index) + VIF_PAGE_OFFSET
}

const _: () = assert!(PERCPU_AREA_ADDR % 0x1000 == 0 && PERCPU_AREA_SIZE % 0x1000 == 0);

/// Guest-physical address of vCPU `index`'s results.
pub const fn vcpu_results_addr(index: u32) -> u64 {
    VCPU_RESULTS_ADDR + index as u64 * size_of::<VcpuResults>() as u64
}

const _: () = assert!(MAX_VCPUS as u64 * size_of::<VcpuResults>() as u64 <= VCPU_RESULTS_SIZE);

/// Initial stack pointer of vCPU `index` (16-byte aligned).
pub const fn boot_stack_top(index: u32) -> u64 {
    BOOT_STACKS_ADDR + (index as u64 + 1) * BOOT_STACK_SIZE
}

const _: () = assert!(SHARED_ADDR + SHARED_SIZE <= IMAGE_ADDR);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_layout_shared_page_fits_below_image() {
        assert_eq!(SHARED_ADDR % 4096, 0);
        assert_eq!(boot_stack_top(0) % 16, 0);
        assert_eq!(boot_stack_top(MAX_VCPUS as u32 - 1), VCPU_RESULTS_ADDR);
        assert_eq!(USER_WINDOW_ADDR % (2 << 20), 0);
        assert_eq!(FREE_MEM_ADDR % (2 << 20), 0);
        // The fixed areas follow each other without overlap.
        assert_eq!(PREEMPT_OFF_ADDR, console_buffer(MAX_VCPUS as u32));
        assert_eq!(preempt_off_addr(MAX_VCPUS as u32), FREE_MEM_ADDR);
    }
}
