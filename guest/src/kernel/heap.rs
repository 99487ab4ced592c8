//! The kernel heap: linked_list_allocator's `Heap` over the RAM above the
//! fixed layout, behind an interrupt-disabling spinlock. Tracks bytes in
//! use so tests can check that task exit frees everything.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use linked_list_allocator::Heap;

use crate::kernel::sync::IrqSpinLock;

struct KernelHeap {
    heap: IrqSpinLock<Heap>,
    used: AtomicU64,
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap {
    heap: IrqSpinLock::new(Heap::empty()),
    used: AtomicU64::new(0),
};

// SAFETY: allocation and deallocation go through linked_list_allocator
// under the lock; the heap region is RAM nothing else uses (see init).
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.heap.lock().allocate_first_fit(layout) {
            Ok(p) => {
                self.used.fetch_add(layout.size() as u64, Ordering::Relaxed);
                p.as_ptr()
            }
            Err(()) => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.used.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout (GlobalAlloc
        // contract), so it is non-null and owned by this heap.
        unsafe {
            self.heap
                .lock()
                .deallocate(NonNull::new_unchecked(ptr), layout)
        };
    }
}

/// Hands `[start, end)` to the heap. Called once, by the BSP, before any
/// allocation.
pub fn init(start: u64, end: u64) {
    assert!(end > start, "no memory for the heap");
    // SAFETY: the range is guest RAM above the fixed layout
    // (abi::layout::FREE_MEM_ADDR..mem_size), identity-mapped and unused.
    unsafe {
        HEAP.heap
            .lock()
            .init(start as *mut u8, (end - start) as usize)
    };
}

/// Bytes currently allocated.
pub fn used() -> u64 {
    HEAP.used.load(Ordering::Relaxed)
}

/// The allocator's own count of bytes in use: what it really reserved,
/// its size-class rounding (16-byte minimum, 8-byte steps) included,
/// unlike [`used`] which sums the sizes asked for.
pub fn reserved() -> u64 {
    HEAP.heap.lock().used() as u64
}

/// Allocates like the global allocator and also returns the bytes the
/// allocator reserved for it (its own counter read before and after,
/// under its lock), so that a caller can attribute real memory to itself.
pub fn alloc_measured(layout: Layout) -> Option<(NonNull<u8>, u64)> {
    let (p, bytes) = {
        let mut heap = HEAP.heap.lock();
        let before = heap.used();
        let p = heap.allocate_first_fit(layout).ok()?;
        (p, (heap.used() - before) as u64)
    };
    HEAP.used.fetch_add(layout.size() as u64, Ordering::Relaxed);
    Some((p, bytes))
}

/// Frees what [`alloc_measured`] (or the global allocator) returned and
/// says how many bytes the allocator got back.
///
/// # Safety
/// `p` came from this heap with this `layout` and is not used afterwards.
pub unsafe fn dealloc_measured(p: NonNull<u8>, layout: Layout) -> u64 {
    HEAP.used.fetch_sub(layout.size() as u64, Ordering::Relaxed);
    let mut heap = HEAP.heap.lock();
    let before = heap.used();
    // SAFETY: delegated to the caller (allocated here with this layout).
    unsafe { heap.deallocate(p, layout) };
    (before - heap.used()) as u64
}
