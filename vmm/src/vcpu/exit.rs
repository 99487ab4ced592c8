//! What one `KVM_RUN` exit means: the guest's ports (console, status,
//! phase markers, the PV hypercall) and the faults that stop a vCPU.

use std::fmt;

use abi::{GuestStatus, Port};
use kvm_bindings::KVM_INTERNAL_ERROR_EMULATION;
use kvm_ioctls::VcpuExit;

use crate::console::Console;
use crate::pv::PvHost;

/// Why a vCPU cannot go on: the guest did something outside the contract,
/// or KVM failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuFault {
    /// Triple fault (KVM_EXIT_SHUTDOWN).
    Shutdown,
    /// KVM_EXIT_INTERNAL_ERROR, most often an instruction KVM's emulator
    /// does not implement.
    InternalError {
        /// KVM_INTERNAL_ERROR_* code.
        suberror: u32,
        /// Extra data KVM supplied (instruction bytes, exit reasons).
        data: Vec<u64>,
    },
    /// VM entry failed.
    FailEntry(u64),
    /// An access to a port that is not in [`abi::Port`].
    UnknownPort {
        /// Port number.
        port: u16,
        /// `out` (true) or `in`.
        write: bool,
    },
    /// A status port write of the wrong size or an unknown code.
    BadStatus(Vec<u8>),
    /// A write to the phase port that is not 32 bits.
    BadPhase(Vec<u8>),
    /// A console-buffer write the VMM refused (size, length).
    BadConsole(String),
    /// A PV hypercall the VMM refused (see [`crate::pv::HypercallError`]).
    BadHypercall(String),
    /// An access to unbacked guest-physical memory.
    Mmio(u64),
    /// Any other exit the guest should never cause.
    UnexpectedExit(String),
    /// `KVM_RUN` itself failed.
    Ioctl(i32),
}

impl fmt::Display for VcpuFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VcpuFault::Shutdown => write!(f, "triple fault (KVM_EXIT_SHUTDOWN)"),
            VcpuFault::InternalError {
                suberror: KVM_INTERNAL_ERROR_EMULATION,
                data,
            } => write!(
                f,
                "emulation failure (KVM_EXIT_INTERNAL_ERROR): KVM's instruction emulator cannot execute the \
                 instruction at RIP (hosts that emulate guest kernel code, such as nested ones, support only a \
                 subset of x86; SSE beyond plain moves is the usual culprit); data {data:x?}"
            ),
            VcpuFault::InternalError { suberror, data } => {
                write!(
                    f,
                    "KVM internal error (KVM_EXIT_INTERNAL_ERROR), suberror {suberror}, data {data:x?}"
                )
            }
            VcpuFault::FailEntry(r) => write!(f, "VM entry failed, hardware reason {r:#x}"),
            VcpuFault::UnknownPort { port, write } => {
                write!(
                    f,
                    "{} of unknown I/O port {port:#x}",
                    if *write { "write" } else { "read" }
                )
            }
            VcpuFault::BadStatus(data) => write!(f, "bad write to the status port: {data:02x?}"),
            VcpuFault::BadPhase(data) => write!(f, "bad write to the phase port: {data:02x?}"),
            VcpuFault::BadConsole(why) => write!(f, "bad write to the console-buffer port: {why}"),
            VcpuFault::BadHypercall(why) => write!(f, "bad PV hypercall: {why}"),
            VcpuFault::Mmio(addr) => write!(f, "access to unbacked guest-physical address {addr:#x}"),
            VcpuFault::UnexpectedExit(e) => write!(f, "unexpected exit {e}"),
            VcpuFault::Ioctl(errno) => {
                write!(f, "KVM_RUN failed: {}", std::io::Error::from_raw_os_error(*errno))
            }
        }
    }
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Continue,
    /// Tell the controller, then re-enter.
    Report(GuestStatus),
    /// A design phase started or ended (a trace marker), then re-enter.
    Phase {
        /// The design slot.
        slot: u32,
        /// It ended (else started).
        end: bool,
    },
    /// Stop this vCPU.
    Fault(VcpuFault),
}

/// Decides what one exit means. A free function so it can be tested with
/// made-up exits. `pv` serves the PV hypercall port (None: the run has
/// no PV interface, and the port is unknown).
pub fn handle_exit(
    exit: VcpuExit<'_>,
    vcpu: u32,
    console: &Console,
    pv: Option<&PvHost>,
) -> ExitAction {
    match exit {
        VcpuExit::IoOut(port, data) => handle_out(port, data, vcpu, console),
        VcpuExit::IoIn(port, data) if port == Port::Hypercall as u16 && data.len() == 4 => {
            match pv.map(|pv| pv.hypercall(vcpu)) {
                Some(Ok(ret)) => {
                    data.copy_from_slice(&ret.to_le_bytes());
                    ExitAction::Continue
                }
                Some(Err(e)) => ExitAction::Fault(VcpuFault::BadHypercall(e.to_string())),
                None => ExitAction::Fault(VcpuFault::UnknownPort { port, write: false }),
            }
        }
        VcpuExit::IoIn(port, _) => ExitAction::Fault(VcpuFault::UnknownPort { port, write: false }),
        // With the in-kernel irqchip HLT blocks in KVM; an exit here is harmless.
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => ExitAction::Continue,
        VcpuExit::Shutdown => ExitAction::Fault(VcpuFault::Shutdown),
        // The details live in kvm_run; the run loop fills them in.
        VcpuExit::InternalError => ExitAction::Fault(VcpuFault::InternalError {
            suberror: 0,
            data: Vec::new(),
        }),
        VcpuExit::FailEntry(reason, _) => ExitAction::Fault(VcpuFault::FailEntry(reason)),
        VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _) => {
            ExitAction::Fault(VcpuFault::Mmio(addr))
        }
        other => ExitAction::Fault(VcpuFault::UnexpectedExit(format!("{other:?}"))),
    }
}

fn handle_out(port: u16, data: &[u8], vcpu: u32, console: &Console) -> ExitAction {
    match Port::try_from(port) {
        Ok(Port::Console) => {
            console.write(vcpu, data);
            ExitAction::Continue
        }
        Ok(Port::Status) => match <[u8; 4]>::try_from(data).map(u32::from_le_bytes) {
            Ok(code) => match GuestStatus::try_from(code) {
                Ok(status) => ExitAction::Report(status),
                Err(_) => ExitAction::Fault(VcpuFault::BadStatus(data.to_vec())),
            },
            Err(_) => ExitAction::Fault(VcpuFault::BadStatus(data.to_vec())),
        },
        Ok(Port::Phase) => match <[u8; 4]>::try_from(data).map(u32::from_le_bytes) {
            Ok(code) => ExitAction::Phase {
                slot: code & !abi::PHASE_END,
                end: code & abi::PHASE_END != 0,
            },
            Err(_) => ExitAction::Fault(VcpuFault::BadPhase(data.to_vec())),
        },
        Ok(Port::ConsoleBuffer) => match <[u8; 4]>::try_from(data).map(u32::from_le_bytes) {
            Ok(len) => match console.write_from_guest(vcpu, len) {
                Ok(()) => ExitAction::Continue,
                Err(why) => ExitAction::Fault(VcpuFault::BadConsole(why)),
            },
            Err(_) => ExitAction::Fault(VcpuFault::BadConsole(format!(
                "a {}-byte write (expected 4: the length)",
                data.len()
            ))),
        },
        // The hypercall port is read, never written.
        Ok(Port::Hypercall) => ExitAction::Fault(VcpuFault::UnknownPort { port, write: true }),
        Err(_) => ExitAction::Fault(VcpuFault::UnknownPort { port, write: true }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::ConsoleMode;

    fn console() -> Console {
        Console::new(2, ConsoleMode::Capture)
    }

    #[test]
    fn test_handle_exit_console_and_status() {
        let c = console();
        let text = *b"hi\n";
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, &text), 1, &c, None),
            ExitAction::Continue
        );
        assert_eq!(c.tail(), ["[vcpu 1] hi"]);
        let done = 2u32.to_le_bytes();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0xf4, &done), 0, &c, None),
            ExitAction::Report(GuestStatus::Done)
        );
    }

    #[test]
    fn test_handle_exit_phase_markers() {
        let c = console();
        let start = 1u32.to_le_bytes();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0xf5, &start), 0, &c, None),
            ExitAction::Phase {
                slot: 1,
                end: false
            }
        );
        let end = (abi::PHASE_END | 3).to_le_bytes();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0xf5, &end), 0, &c, None),
            ExitAction::Phase { slot: 3, end: true }
        );
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0xf5, &[1]), 0, &c, None),
            ExitAction::Fault(VcpuFault::BadPhase(vec![1]))
        );
    }

    #[test]
    fn test_handle_exit_rejects_bad_status() {
        let c = console();
        let short = [2u8];
        assert!(matches!(
            handle_exit(VcpuExit::IoOut(0xf4, &short), 0, &c, None),
            ExitAction::Fault(VcpuFault::BadStatus(_))
        ));
        let unknown = 99u32.to_le_bytes();
        assert!(matches!(
            handle_exit(VcpuExit::IoOut(0xf4, &unknown), 0, &c, None),
            ExitAction::Fault(VcpuFault::BadStatus(_))
        ));
    }

    #[test]
    fn test_handle_exit_faults() {
        let c = console();
        let mut b = [0u8; 1];
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x80, &b), 0, &c, None),
            ExitAction::Fault(VcpuFault::UnknownPort {
                port: 0x80,
                write: true
            })
        );
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x3f8, &mut b), 0, &c, None),
            ExitAction::Fault(VcpuFault::UnknownPort {
                port: 0x3f8,
                write: false
            })
        );
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, 0, &c, None),
            ExitAction::Fault(VcpuFault::Shutdown)
        );
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0xfee0_0000, &mut b), 0, &c, None),
            ExitAction::Fault(VcpuFault::Mmio(0xfee0_0000))
        );
        assert_eq!(
            handle_exit(VcpuExit::Hlt, 0, &c, None),
            ExitAction::Continue
        );
    }
}
