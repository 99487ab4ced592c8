//! The panic handler: records the location, then the message, in the
//! shared page (see [`abi::panic_state`]), prints them, tells the VMM
//! through the status port and halts.

use core::fmt::Write;
use core::panic::PanicInfo;
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicBool, Ordering};

use abi::panic_state;

use crate::kernel::arch;
use crate::kernel::console::{println, FixedBuf};
use crate::kernel::fmt::Dec;
use crate::kernel::{percpu, shared};

/// Only the first panicking vCPU writes the record.
static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let vcpu = percpu::cpu_id_anytime();
    let (file, line, column) = info
        .location()
        .map_or(("<unknown>", 0, 0), |l| (l.file(), l.line(), l.column()));
    // The location first, on a line of its own: formatting the message may
    // run core's integer formatting, which an emulating host cannot execute
    // (see crate::fmt); the VMM then still knows where the panic was.
    println!(
        "panic on vCPU {} at {}:{}:{}",
        Dec(vcpu),
        file,
        Dec(line),
        Dec(column)
    );
    let first = !PANICKING.swap(true, Ordering::AcqRel);
    let rec = shared::panic_record();
    if first {
        // SAFETY: the PANICKING flag makes this vCPU the record's only
        // writer; the VMM reads it only after this vCPU stopped or reported.
        unsafe {
            let mut f = FixedBuf::new(&mut *addr_of_mut!((*rec).file));
            let _ = f.write_str(file);
            (*rec).file_len = f.len() as u32;
            (*rec).vcpu = vcpu;
            (*rec).line = line;
            (*rec).column = column;
            shared::atomic_u32(addr_of_mut!((*rec).state))
                .store(panic_state::LOCATION, Ordering::Release);
            let mut msg = FixedBuf::new(&mut *addr_of_mut!((*rec).message));
            let _ = write!(msg, "{}", info.message());
            (*rec).message_len = msg.len() as u32;
            shared::atomic_u32(addr_of_mut!((*rec).state))
                .store(panic_state::COMPLETE, Ordering::Release);
        }
    }
    println!("panic message: {}", info.message());
    if first {
        arch::outl(abi::Port::Status as u16, abi::GuestStatus::Panic as u32);
    }
    arch::halt_forever()
}

/// The prebuilt `core` was compiled for a target that unwinds, so it
/// references the personality routine; with `panic = "abort"` nothing ever
/// unwinds and this is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
