//! Console output. Text is gathered on the stack and sent with one arch
//! console write per buffer, so a line costs one VM exit rather than one per
//! byte. The VMM prefixes each line with the vCPU.

use core::fmt::{self, Write};

use crate::kernel::arch;

const BUF_LEN: usize = 256;

/// A stack buffer that flushes to the console port when full and on drop.
pub struct Console {
    buf: [u8; BUF_LEN],
    len: usize,
}

impl Console {
    /// An empty buffer.
    pub const fn new() -> Self {
        Console {
            buf: [0; BUF_LEN],
            len: 0,
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            // `rep outsb` is interruptible between bytes: a task preempted
            // and moved to another vCPU mid-line would finish the line from
            // there. With interrupts off a line stays on one vCPU.
            let irq = arch::irq_save();
            arch::console_write(&self.buf[..self.len]);
            arch::irq_restore(irq);
            self.len = 0;
        }
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(BUF_LEN) {
            if self.len + chunk.len() > BUF_LEN {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Prints formatted text followed by a newline.
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut c = $crate::kernel::console::Console::new();
        // Writing to the console cannot fail.
        let _ = writeln!(c, $($arg)*);
    }};
}
pub(crate) use println;

/// Formats into a fixed byte buffer, truncating (at a char boundary) what
/// does not fit. Used for the panic record.
pub struct FixedBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> FixedBuf<'a> {
    /// Writes into `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        FixedBuf { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }
}

impl Write for FixedBuf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}
