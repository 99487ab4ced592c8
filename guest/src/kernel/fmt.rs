//! Integer formatting that is safe at CPL0 on hosts that emulate guest
//! kernel code: `core`'s own integer `Display`/`LowerHex` use SSE
//! instructions (movd, pinsrw, pshufd...) that KVM's emulator does not
//! implement, so `{}` on an integer of four or more digits would stop the
//! vCPU with KVM_EXIT_INTERNAL_ERROR. Write `Dec(n)` / `Hex(n)` instead,
//! and never use a width or precision (they route through `Formatter::pad`,
//! which counts chars with SSE).

use core::fmt;

/// `n` in decimal.
pub struct Dec<T>(pub T);
/// `n` in hexadecimal with a `0x` prefix.
pub struct Hex<T>(pub T);

fn write_digits(f: &mut fmt::Formatter<'_>, mut n: u64, radix: u64, prefix: &str) -> fmt::Result {
    let mut buf = [0u8; 24];
    let mut i = buf.len();
    loop {
        i -= 1;
        let d = (n % radix) as u8;
        buf[i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        n /= radix;
        if n == 0 {
            break;
        }
    }
    f.write_str(prefix)?;
    // The digits are ASCII.
    f.write_str(core::str::from_utf8(&buf[i..]).unwrap_or("?"))
}

macro_rules! impl_unsigned {
    ($($t:ty),*) => {$(
        impl fmt::Display for Dec<$t> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_digits(f, self.0 as u64, 10, "")
            }
        }
        impl fmt::Display for Hex<$t> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_digits(f, self.0 as u64, 16, "0x")
            }
        }
    )*};
}
impl_unsigned!(u8, u16, u32, u64, usize);

impl fmt::Display for Dec<i64> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 0 {
            f.write_str("-")?;
        }
        write_digits(f, self.0.unsigned_abs(), 10, "")
    }
}
