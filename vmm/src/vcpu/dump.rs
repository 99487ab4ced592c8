//! A vCPU's registers when its thread stopped, written for a human.

use std::fmt;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

/// A vCPU's registers when its thread stopped.
#[derive(Debug, Clone)]
pub struct RegisterDump {
    /// vCPU index.
    pub vcpu: u32,
    /// General-purpose registers, if KVM returned them.
    pub regs: Option<kvm_regs>,
    /// Special registers, if KVM returned them.
    pub sregs: Option<kvm_sregs>,
    /// KVM_MP_STATE_* value.
    pub mp_state: Option<u32>,
    /// In the PVM host's native mode, the vCPU's virtual interrupt flag and
    /// its pending bit (VIF page bytes 0 and 1): the interrupt state KVM's
    /// registers do not show there.
    pub vif: Option<(u8, u8)>,
}

impl RegisterDump {
    pub(super) fn capture(fd: &VcpuFd, vcpu: u32) -> Self {
        RegisterDump {
            vcpu,
            regs: fd.get_regs().ok(),
            sregs: fd.get_sregs().ok(),
            mp_state: fd.get_mp_state().ok().map(|m| m.mp_state),
            vif: None,
        }
    }
}

fn mp_state_name(state: u32) -> &'static str {
    match state {
        kvm_bindings::KVM_MP_STATE_RUNNABLE => "runnable",
        kvm_bindings::KVM_MP_STATE_UNINITIALIZED => "uninitialized",
        kvm_bindings::KVM_MP_STATE_INIT_RECEIVED => "init-received",
        kvm_bindings::KVM_MP_STATE_HALTED => "halted",
        kvm_bindings::KVM_MP_STATE_SIPI_RECEIVED => "sipi-received",
        _ => "other",
    }
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vcpu {}:", self.vcpu)?;
        if let Some(m) = self.mp_state {
            write!(f, " mp_state={}", mp_state_name(m))?;
        }
        if let Some(r) = &self.regs {
            write!(
                f,
                " rip={:#x} rsp={:#x} rflags={:#x}",
                r.rip, r.rsp, r.rflags
            )?;
        }
        if let Some(s) = &self.sregs {
            write!(
                f,
                " cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                s.cs.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
            )?;
        }
        if let Some((if_, pending)) = self.vif {
            write!(f, " vif={if_}/{pending}")?;
        }
        if let Some(r) = &self.regs {
            write!(
                f,
                "\n    rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}\n    \
                 r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
                r.rax,
                r.rbx,
                r.rcx,
                r.rdx,
                r.rsi,
                r.rdi,
                r.rbp,
                r.r8,
                r.r9,
                r.r10,
                r.r11,
                r.r12,
                r.r13,
                r.r14,
                r.r15
            )?;
        }
        if self.regs.is_none() && self.sregs.is_none() {
            write!(f, " (registers unavailable)")?;
        }
        Ok(())
    }
}

/// Writes `dumps` for a human. Up to 16 vCPUs: all in full. Beyond: the
/// vCPUs named in `focus` and up to 16 that are not halted in full, the
/// rest grouped by RIP, one line per group (a 1024-vCPU guest stays
/// readable).
pub fn write_dumps(
    out: &mut dyn std::io::Write,
    dumps: &[RegisterDump],
    focus: &[u32],
) -> std::io::Result<()> {
    const FULL_LIMIT: usize = 16;
    let halted = |d: &RegisterDump| d.mp_state == Some(kvm_bindings::KVM_MP_STATE_HALTED);
    let mut full = 0;
    let mut groups: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
    for d in dumps {
        if dumps.len() <= FULL_LIMIT || focus.contains(&d.vcpu) || (!halted(d) && full < FULL_LIMIT)
        {
            writeln!(out, "  {d}")?;
            full += usize::from(!focus.contains(&d.vcpu));
        } else {
            groups
                .entry(d.regs.map_or(0, |r| r.rip))
                .or_default()
                .push(d.vcpu);
        }
    }
    for (rip, vcpus) in groups {
        writeln!(
            out,
            "  {} more vCPUs at rip={rip:#x} (first: {:?})",
            vcpus.len(),
            &vcpus[..vcpus.len().min(8)]
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn test_write_dumps_groups_halted_vcpus() {
        let halted = |vcpu| RegisterDump {
            vcpu,
            regs: Some(kvm_regs {
                rip: 0x200512,
                ..Default::default()
            }),
            sregs: None,
            mp_state: Some(kvm_bindings::KVM_MP_STATE_HALTED),
            vif: None,
        };
        let dumps: Vec<_> = (0..100).map(halted).collect();
        let mut out = Vec::new();
        write_dumps(&mut out, &dumps, &[7]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(
            text.starts_with("  vcpu 7: mp_state=halted rip=0x200512"),
            "{text}"
        );
        assert!(text.contains("99 more vCPUs at rip=0x200512"), "{text}");
    }

    #[test]
    fn test_register_dump_display_without_registers() {
        let d = RegisterDump {
            vcpu: 3,
            regs: None,
            sregs: None,
            mp_state: Some(kvm_bindings::KVM_MP_STATE_HALTED),
            vif: None,
        };
        assert_eq!(
            d.to_string(),
            "vcpu 3: mp_state=halted (registers unavailable)"
        );
        let native = RegisterDump {
            vif: Some((1, 0)),
            ..d
        };
        assert!(native.to_string().contains(" vif=1/0"), "{native}");
    }
}
