//! Guest RAM (vm-memory) and what the VMM writes into it before the first
//! instruction: the identity page tables, the boot GDT and the control
//! block. Addresses come from [`abi::layout`].

use abi::layout::{GDT_ADDR, IDENTITY_MAP_SIZE, PDPT_ADDR, PD_ADDR, PML4_ADDR, SHARED_ADDR};
use abi::{Control, Pod, SharedPage, VcpuResults};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Page-table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_HUGE: u64 = 1 << 7;
const TWO_MIB: u64 = 2 << 20;

/// Boot GDT selectors (see [`write_gdt`]).
pub const CODE_SELECTOR: u16 = 0x08;
/// Data selector of the boot GDT.
pub const DATA_SELECTOR: u16 = 0x10;
/// Limit of the boot GDT (3 descriptors).
pub const GDT_LIMIT: u16 = 3 * 8 - 1;

/// The boot GDT: null, 64-bit code (DPL0), data (DPL0).
const GDT: [u64; 3] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff];

/// Errors setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of guest RAM failed.
    #[error("failed to allocate {size} bytes of guest memory: {source}")]
    Allocate {
        /// Requested size.
        size: u64,
        /// Cause.
        source: vm_memory::mmap::FromRangesError,
    },
    /// Too little address space left for the VMM's threads.
    #[error(
        "not enough address space left for the VMM's threads ({size} bytes): the \
         address-space limit (ulimit -v) is too low"
    )]
    NoRoomForThreads {
        /// The room asked for.
        size: u64,
    },
    /// A write into guest RAM failed (address outside RAM).
    #[error("failed to write {what} at guest address {addr:#x}: {source}")]
    Write {
        /// What was being written.
        what: &'static str,
        /// Where.
        addr: u64,
        /// Cause.
        source: vm_memory::GuestMemoryError,
    },
    /// A read of guest RAM failed.
    #[error("failed to read {what} at guest address {addr:#x}: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// Where.
        addr: u64,
        /// Cause.
        source: vm_memory::GuestMemoryError,
    },
}

/// Guest RAM size for `vcpus` vCPUs: the fixed layout plus room for the
/// guest heap (task stacks, run queues, per-task masks).
pub fn ram_size(vcpus: u32) -> u64 {
    abi::layout::FREE_MEM_ADDR + (64 << 20) + u64::from(vcpus) * (512 << 10)
}

/// Allocates `size` bytes of guest RAM at guest-physical 0.
pub fn allocate(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let len = usize::try_from(size).expect("guest RAM size fits usize on x86_64");
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)])
        .map_err(|source| MemoryError::Allocate { size, source })
}

/// Checks that `size` bytes of address space are still free, by mapping and
/// unmapping them. A thread whose stack or signal stack cannot be mapped
/// aborts the process inside Rust's runtime (before any code of ours runs),
/// so the VMM asks for its threads' room up front, while a failure can
/// still end the run with a message.
pub fn check_room(size: u64) -> Result<(), MemoryError> {
    let len = usize::try_from(size).map_err(|_| MemoryError::NoRoomForThreads { size })?;
    // SAFETY: a fresh anonymous PROT_NONE mapping that nothing uses, unmapped
    // at once; it counts against RLIMIT_AS like the thread stacks will.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(MemoryError::NoRoomForThreads { size });
        }
        libc::munmap(p, len);
    }
    Ok(())
}

/// Writes `bytes` at guest-physical `addr` (`what` names it in errors).
pub fn write_bytes(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), MemoryError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| MemoryError::Write { what, addr, source })
}

/// Whether the 2 MiB page at `phys` is user-accessible: the guest image
/// (user tasks run its code and read its constants) and the user window
/// (user stacks). The rest is kernel-only.
fn is_user_page(phys: u64) -> bool {
    use abi::layout::{IMAGE_ADDR, IMAGE_LIMIT, USER_WINDOW_ADDR, USER_WINDOW_SIZE};
    (IMAGE_ADDR..IMAGE_LIMIT).contains(&phys)
        || (USER_WINDOW_ADDR..USER_WINDOW_ADDR + USER_WINDOW_SIZE).contains(&phys)
}

/// Identity-maps the first 4 GiB with 2 MiB pages: one PML4 entry (slot 0:
/// the PVM host's native mode refuses slot 256), one PDPT with four
/// entries, four page directories. The upper levels allow user access; the
/// 2 MiB entries decide: the guest image and the user window, and with
/// `all_user` every page, as the PVM host's native mode needs (its kernel
/// runs at hardware CPL3: a kernel page without the U bit is a page-fault
/// livelock). With `all_user` the guest has no kernel/user isolation.
pub fn write_page_tables(mem: &GuestMemoryMmap, all_user: bool) -> Result<(), MemoryError> {
    let table_bits = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
    write_bytes(
        mem,
        "PML4",
        PML4_ADDR,
        &(PDPT_ADDR | table_bits).to_le_bytes(),
    )?;
    let gibs = IDENTITY_MAP_SIZE >> 30;
    for gib in 0..gibs {
        let pd = PD_ADDR + gib * 4096;
        write_bytes(
            mem,
            "PDPT",
            PDPT_ADDR + gib * 8,
            &(pd | table_bits).to_le_bytes(),
        )?;
        let mut table = [0u8; 4096];
        for (i, entry) in table.chunks_exact_mut(8).enumerate() {
            let phys = (gib << 30) + i as u64 * TWO_MIB;
            let user = if all_user || is_user_page(phys) {
                PTE_USER
            } else {
                0
            };
            entry.copy_from_slice(
                &(phys | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE | user).to_le_bytes(),
            );
        }
        write_bytes(mem, "page directory", pd, &table)?;
    }
    Ok(())
}

/// Writes the boot GDT at [`GDT_ADDR`].
pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    let bytes: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    write_bytes(mem, "GDT", GDT_ADDR, &bytes)
}

/// Writes the control block at the start of the shared page.
pub fn write_control(mem: &GuestMemoryMmap, control: &Control) -> Result<(), MemoryError> {
    write_bytes(mem, "control block", SHARED_ADDR, control.as_bytes())
}

/// An all-zero `T` made on the heap, never on the stack: the shared page is
/// megabytes, and a stack temporary overflows a 2 MiB test thread in a
/// debug build.
pub fn boxed_zeroed<T: Pod>() -> Box<T> {
    let layout = std::alloc::Layout::new::<T>();
    assert!(layout.size() > 0, "a Pod record is never zero-sized");
    // SAFETY: the layout has a non-zero size (asserted); a null return is
    // handled; the zeroed block is a valid `T` (Pod: every bit pattern is),
    // allocated by the global allocator with `T`'s layout, as
    // `Box::from_raw` requires.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<T>();
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(p)
    }
}

/// A `T` copied from the front of `bytes` straight into a heap box (no
/// stack copy); None if `bytes` is too short.
pub fn boxed_from_bytes<T: Pod>(bytes: &[u8]) -> Option<Box<T>> {
    let size = std::mem::size_of::<T>();
    if bytes.len() < size {
        return None;
    }
    let mut b = boxed_zeroed::<T>();
    // SAFETY: the box holds `size` writable bytes, `bytes` has at least
    // that many, the two do not overlap, and every bit pattern is a valid
    // `T` (Pod).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut *b as *mut T).cast::<u8>(), size);
    }
    Some(b)
}

/// Copies the whole shared page out of guest memory. The copy is untrusted
/// data: validate before use (see [`crate::results`]).
pub fn read_shared(mem: &GuestMemoryMmap) -> Result<Box<SharedPage>, MemoryError> {
    let mut bytes = vec![0u8; std::mem::size_of::<SharedPage>()];
    mem.read_slice(&mut bytes, GuestAddress(SHARED_ADDR))
        .map_err(|source| MemoryError::Read {
            what: "shared page",
            addr: SHARED_ADDR,
            source,
        })?;
    Ok(boxed_from_bytes(&bytes).expect("buffer has the size of SharedPage"))
}

/// Copies the per-vCPU results of `vcpus` vCPUs out (untrusted data).
pub fn read_vcpu_results(
    mem: &GuestMemoryMmap,
    vcpus: u32,
) -> Result<Vec<VcpuResults>, MemoryError> {
    let size = std::mem::size_of::<VcpuResults>();
    let mut bytes = vec![0u8; size * vcpus as usize];
    let addr = abi::layout::VCPU_RESULTS_ADDR;
    mem.read_slice(&mut bytes, GuestAddress(addr))
        .map_err(|source| MemoryError::Read {
            what: "per-vCPU results",
            addr,
            source,
        })?;
    Ok(bytes
        .chunks_exact(size)
        .map(|c| VcpuResults::read_from(c).expect("chunk has the size"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_page_tables_identity_map() {
        let mem = allocate(ram_size(1)).unwrap();
        write_page_tables(&mem, false).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_ADDR);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 24)).unwrap();
        assert_eq!(pdpt3 & !0xfff, PD_ADDR + 3 * 4096);
        // The 2 MiB page that holds 3 GiB + 6 MiB.
        let pde: u64 = mem
            .read_obj(GuestAddress(PD_ADDR + 3 * 4096 + 3 * 8))
            .unwrap();
        assert_eq!(pde & !0xfff, (3 << 30) + 3 * TWO_MIB);
        assert_ne!(pde & PTE_HUGE, 0);
        assert_eq!(pde & PTE_USER, 0, "kernel memory is not user-accessible");
        let image: u64 = mem
            .read_obj(GuestAddress(
                PD_ADDR + abi::layout::IMAGE_ADDR / TWO_MIB * 8,
            ))
            .unwrap();
        assert_ne!(image & PTE_USER, 0, "the image is user-accessible");
        let window = abi::layout::USER_WINDOW_ADDR;
        let pde: u64 = mem
            .read_obj(GuestAddress(PD_ADDR + window / TWO_MIB * 8))
            .unwrap();
        assert_ne!(pde & PTE_USER, 0, "the user window is user-accessible");
    }

    #[test]
    fn test_page_tables_for_native_mode_are_all_user_in_pml4_slot_0() {
        let mem = allocate(ram_size(4)).unwrap();
        write_page_tables(&mem, true).unwrap();
        for gib in 0..IDENTITY_MAP_SIZE >> 30 {
            for i in 0..512 {
                let pde: u64 = mem
                    .read_obj(GuestAddress(PD_ADDR + gib * 4096 + i * 8))
                    .unwrap();
                assert_ne!(pde & PTE_USER, 0, "PDE {gib}:{i} lacks the U bit");
            }
        }
        for slot in 1..512u64 {
            let e: u64 = mem.read_obj(GuestAddress(PML4_ADDR + slot * 8)).unwrap();
            assert_eq!(e, 0, "PML4 slot {slot} is used");
        }
    }

    #[test]
    fn test_control_roundtrip() {
        let mem = allocate(ram_size(4)).unwrap();
        write_control(&mem, &Control::new(4)).unwrap();
        let page = read_shared(&mem).unwrap();
        assert!(page.control.validate().is_ok());
        assert_eq!(page.control.nr_vcpus, 4);
    }
}
