//! Loading the embedded guest ELF into guest RAM (linux-loader).

use std::io::Cursor;

use abi::layout::{IMAGE_ADDR, IMAGE_LIMIT};
use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The guest micro-kernel, built by build.rs from guest/.
pub static GUEST_ELF: &[u8] = include_bytes!(env!("IPIVIRT_GUEST_ELF"));

/// Errors loading the guest image.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// linux-loader refused the image.
    #[error("failed to load the guest ELF: {0}")]
    Elf(#[from] linux_loader::loader::Error),
    /// The image lies outside the window the layout reserves for it.
    #[error("guest image spans {start:#x}..{end:#x}, outside the reserved window {IMAGE_ADDR:#x}..{IMAGE_LIMIT:#x}")]
    OutOfWindow {
        /// Entry point.
        start: u64,
        /// End of the last segment.
        end: u64,
    },
}

/// Loads `elf` into `mem` and returns its entry point.
pub fn load(mem: &GuestMemoryMmap, elf: &[u8]) -> Result<GuestAddress, LoaderError> {
    let result = Elf::load(
        mem,
        None,
        &mut Cursor::new(elf),
        Some(GuestAddress(IMAGE_ADDR)),
    )?;
    let (start, end) = (result.kernel_load.0, result.kernel_end);
    if start < IMAGE_ADDR || end > IMAGE_LIMIT {
        return Err(LoaderError::OutOfWindow { start, end });
    }
    Ok(result.kernel_load)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    #[test]
    fn test_load_embedded_guest() {
        let mem = memory::allocate(memory::ram_size(1)).unwrap();
        let entry = load(&mem, GUEST_ELF).unwrap();
        assert_eq!(entry.0, IMAGE_ADDR);
    }

    #[test]
    fn test_load_garbage_is_an_error() {
        let mem = memory::allocate(memory::ram_size(1)).unwrap();
        assert!(matches!(
            load(&mem, b"not an elf"),
            Err(LoaderError::Elf(_))
        ));
    }
}
