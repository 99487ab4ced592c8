//! An allocation failure ends the process cleanly, with exit 6
//! ([`crate::exit_code::HOST_FAILURE`]) and a message, instead of Rust's
//! default abort (SIGABRT, perhaps a core dump) that a low `ulimit -v`
//! otherwise gives. Stable Rust has no allocation-error hook, so the
//! binary installs [`ExitOnOom`] as its global allocator: the system
//! allocator, which on failure writes the message and `_exit`s.

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, exiting with code 6 when an allocation fails.
pub struct ExitOnOom;

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// GlobalAlloc contract; a failed allocation never returns at all.
unsafe impl GlobalAlloc for ExitOnOom {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size).
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            out_of_memory(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            out_of_memory(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with
        // `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `realloc`'s contract for `ptr`,
        // `layout` and `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            out_of_memory(new_size);
        }
        p
    }
}

/// The message for a failed allocation of `size` bytes, built without
/// allocating (the heap is what just failed).
fn message(size: usize, buf: &mut [u8; 256]) -> usize {
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    put(b"ipivirt: error: out of memory: an allocation of ");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = size;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[i..]);
    put(b" bytes failed (raise ulimit -v, or run fewer vCPUs)\n");
    len
}

fn out_of_memory(size: usize) -> ! {
    let mut buf = [0u8; 256];
    let len = message(size, &mut buf);
    // SAFETY: write(2) and _exit(2) allocate nothing and are safe to call
    // from any thread; `buf` is valid for `len` bytes. _exit ends every
    // thread at once, which is what a run that cannot allocate needs.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(i32::from(crate::exit_code::HOST_FAILURE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_message_names_the_size() {
        let mut buf = [0u8; 256];
        let len = message(16, &mut buf);
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(text.starts_with("ipivirt: error: out of memory: an allocation of 16 bytes failed"));
        let len = message(0, &mut buf);
        assert!(std::str::from_utf8(&buf[..len])
            .unwrap()
            .contains(" of 0 bytes"));
    }
}
