//! The KVM VM: opening KVM, the in-kernel irqchip, guest RAM slots, CPUID
//! and the initial state of every vCPU (64-bit mode from the first
//! instruction).

use std::path::Path;

use abi::layout;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_enable_cap, kvm_mp_state, kvm_segment, kvm_userspace_memory_region,
    CpuId, KVM_CAP_X2APIC_API, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
    KVM_MP_STATE_RUNNABLE, KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK, KVM_X2APIC_API_USE_32BIT_IDS,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::memory::{CODE_SELECTOR, DATA_SELECTOR, GDT_LIMIT};

/// Where KVM may put its real-mode TSS (Intel); outside guest RAM.
const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// Control register and EFER bits for direct 64-bit entry.
const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
/// CR0.WP: supervisor writes honour read-only pages.
const CR0_WP: u64 = 1 << 16;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// `/dev/kvm` cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum KvmUnavailable {
    /// The device node does not exist.
    #[error("{path} does not exist: ipivirt needs a Linux host with KVM (load kvm_intel or kvm_amd; in a VM, enable nested virtualization)")]
    Missing {
        /// Device path tried.
        path: String,
    },
    /// Opening it was refused.
    #[error("{path}: permission denied ({detail})")]
    PermissionDenied {
        /// Device path tried.
        path: String,
        /// The device's owner, group and mode, and the fixes that apply
        /// on this host.
        detail: String,
    },
    /// It opened, but is not KVM (KVM_GET_API_VERSION failed).
    #[error("{path} is not a KVM device (KVM_GET_API_VERSION failed): point {env} at /dev/kvm or unset it", env = "IPIVIRT_KVM_PATH")]
    NotKvm {
        /// Device path tried.
        path: String,
    },
    /// Opening it failed otherwise.
    #[error("cannot open {path}: {source}")]
    Open {
        /// Device path tried.
        path: String,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// The host KVM lacks a capability ipivirt needs.
    #[error("the host KVM lacks {0}")]
    MissingCap(&'static str),
}

/// A KVM call failed while building the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A named KVM ioctl failed.
    #[error("{what} failed: {source}")]
    Ioctl {
        /// The ioctl, e.g. "KVM_CREATE_VM".
        what: &'static str,
        /// errno.
        source: kvm_ioctls::Error,
    },
    /// The process ran out of file descriptors (each vCPU takes one for
    /// itself and one for its KVM statistics).
    #[error(
        "{what} failed: out of file descriptors (ulimit -n is {}): each vCPU needs about 2, \
         plus about 16 for the VMM; raise ulimit -n",
        limit.map_or("unknown".to_string(), |l| l.to_string())
    )]
    FdLimit {
        /// The call that failed.
        what: &'static str,
        /// The soft limit, if readable.
        limit: Option<u64>,
    },
    /// More vCPUs than this host (or the ABI) allows.
    #[error("{requested} vCPUs requested, but this host's KVM supports at most {max}")]
    TooManyVcpus {
        /// Requested.
        requested: u32,
        /// Host maximum.
        max: u32,
    },
}

fn ioctl<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VmError> {
    r.map_err(|source| match source.errno() {
        // Not KVM's fault: the process ran out of file descriptors.
        libc::EMFILE | libc::ENFILE => VmError::FdLimit {
            what,
            limit: fd_limit(),
        },
        _ => VmError::Ioctl { what, source },
    })
}

/// The soft limit on open files (`ulimit -n`; getrlimit needs no fd, so
/// it answers when the process is out of them).
pub fn fd_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `r`, a valid, owned value.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (rc == 0 && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

/// Opens KVM at `path` (normally `/dev/kvm`), mapping failures to a message
/// a user can act on.
pub fn open_kvm(path: &Path) -> Result<Kvm, KvmUnavailable> {
    let shown = path.display().to_string();
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        KvmUnavailable::Missing {
            path: shown.clone(),
        }
    })?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|source| match source.errno() {
        libc::ENOENT => KvmUnavailable::Missing {
            path: shown.clone(),
        },
        libc::EACCES | libc::EPERM => KvmUnavailable::PermissionDenied {
            path: shown.clone(),
            detail: permission_advice(path),
        },
        _ => KvmUnavailable::Open {
            path: shown.clone(),
            source,
        },
    })?;
    if kvm.get_api_version() != KVM_API_VERSION {
        return Err(KvmUnavailable::NotKvm { path: shown });
    }
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmUnavailable::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// The only KVM API version there has ever been.
const KVM_API_VERSION: i32 = 12;

/// The name of group or user `id` in `file` (`/etc/group`, `/etc/passwd`),
/// or the number.
fn id_name(file: &str, id: u32) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2].parse() == Ok(id)).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| id.to_string())
}

/// Who may open the device, and only the fixes that apply here: joining
/// its group when the group may open it, otherwise root or an admin's
/// change (a `kvm` group is suggested only where none exists to be joined).
fn permission_advice(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(path) else {
        return "run as root".into();
    };
    let (owner, group) = (
        id_name("/etc/passwd", m.uid()),
        id_name("/etc/group", m.gid()),
    );
    let mode = m.mode() & 0o7777;
    let shown = format!("{owner}:{group} {mode:04o}");
    if m.gid() != 0 && mode & 0o060 == 0o060 {
        return format!(
            "{shown}: add your user to the '{group}' group and log in again, or run as root"
        );
    }
    let kvm_group = std::fs::read_to_string("/etc/group")
        .is_ok_and(|t| t.lines().any(|l| l.starts_with("kvm:")));
    let grant = if kvm_group {
        format!(
            "chgrp kvm {0} && chmod 0660 {0}, then add your user to 'kvm'",
            path.display()
        )
    } else {
        format!(
            "groupadd kvm && chgrp kvm {0} && chmod 0660 {0} (there is no kvm group yet), then add your user to it",
            path.display()
        )
    };
    format!(
        "{shown}: only {owner} may open it; run as {owner}, or have an administrator run {grant}"
    )
}

/// Most vCPUs one VM may have on this host (and in the ABI).
pub fn max_vcpus(kvm: &Kvm) -> u32 {
    let host = kvm.get_max_vcpus().min(kvm.get_max_vcpu_id());
    u32::try_from(host).unwrap_or(0).min(abi::MAX_VCPUS as u32)
}

/// Creates the VM: in-kernel irqchip, 32-bit x2APIC ids, guest RAM.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap, vcpus: u32) -> Result<VmFd, VmError> {
    let max = max_vcpus(kvm);
    if vcpus > max {
        return Err(VmError::TooManyVcpus {
            requested: vcpus,
            max,
        });
    }
    let vm = ioctl("KVM_CREATE_VM", kvm.create_vm())?;
    ioctl("KVM_SET_TSS_ADDR", vm.set_tss_address(KVM_TSS_ADDR))?;
    ioctl("KVM_CREATE_IRQCHIP", vm.create_irq_chip())?;
    // 32-bit x2APIC ids in MSIs and interrupt routing, so vCPUs >= 255 are
    // addressable; no xAPIC broadcast quirk for id 0xff.
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X2APIC_API,
        args: [
            u64::from(KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK),
            0,
            0,
            0,
        ],
        ..Default::default()
    };
    ioctl("KVM_ENABLE_CAP(KVM_CAP_X2APIC_API)", vm.enable_cap(&cap))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .expect("region start is inside guest memory");
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is backed by `mem`'s mmap, which the caller
        // keeps alive for as long as the VM (both live in `Machine`).
        ioctl("KVM_SET_USER_MEMORY_REGION", unsafe {
            vm.set_user_memory_region(region)
        })?;
    }
    Ok(vm)
}

/// The CPUID table KVM supports, the base for every vCPU's table.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VmError> {
    ioctl(
        "KVM_GET_SUPPORTED_CPUID",
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
    )
}

/// KVM's paravirtual CPUID leaf (KVM_CPUID_FEATURES) and its feature bits.
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// MSR_KVM_STEAL_TIME works.
pub const KVM_FEATURE_STEAL_TIME: u32 = 5;

/// The KVM_FEATURE_* bits `cpuid` advertises (0 without KVM's leaf).
pub fn kvm_pv_features(cpuid: &CpuId) -> u32 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == KVM_CPUID_FEATURES)
        .map_or(0, |e| e.eax)
}

/// vCPU `id`'s CPUID: initial APIC id in leaf 1, x2APIC topology in leaf
/// 0xB (one thread per core, `nr_vcpus` cores, x2APIC id = vCPU id), KVM's
/// paravirt leaves as KVM offers them.
pub fn vcpu_cpuid(base: &CpuId, id: u32, nr_vcpus: u32) -> CpuId {
    let mut entries: Vec<kvm_cpuid_entry2> = base
        .as_slice()
        .iter()
        .copied()
        .filter(|e| e.function != 0xb && e.function != 0x1f)
        .collect();
    for e in entries.iter_mut().filter(|e| e.function == 1) {
        e.ebx = (e.ebx & 0x00ff_ffff) | (id.min(255) << 24);
        e.ecx |= 1 << 21; // x2APIC
    }
    let core_bits = 32 - (nr_vcpus.max(1) - 1).leading_zeros();
    let level = |index: u32, eax: u32, ebx: u32, kind: u32| kvm_cpuid_entry2 {
        function: 0xb,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (kind << 8) | index,
        edx: id,
        ..Default::default()
    };
    entries.push(level(0, 0, 1, 1)); // SMT level: 1 thread per core
    entries.push(level(1, core_bits, nr_vcpus.min(0xffff), 2)); // core level
    entries.push(level(2, 0, 0, 0)); // end of levels
    CpuId::from_entries(&entries).expect("fewer entries than KVM_MAX_CPUID_ENTRIES")
}

/// Creates vCPU `id` and puts it in 64-bit mode at `entry` with its boot
/// stack, `rdi` = `id`, interrupts off, runnable (APs too: with the
/// in-kernel irqchip they would otherwise wait for INIT/SIPI).
pub fn create_vcpu(
    vm: &VmFd,
    cpuid: &CpuId,
    id: u32,
    nr_vcpus: u32,
    entry: GuestAddress,
) -> Result<VcpuFd, VmError> {
    let vcpu = ioctl("KVM_CREATE_VCPU", vm.create_vcpu(u64::from(id)))?;
    ioctl(
        "KVM_SET_CPUID2",
        vcpu.set_cpuid2(&vcpu_cpuid(cpuid, id, nr_vcpus)),
    )?;

    let mut sregs = ioctl("KVM_GET_SREGS", vcpu.get_sregs())?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: CODE_SELECTOR,
        type_: 0xb, // execute/read, accessed
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: DATA_SELECTOR,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr3 = layout::PML4_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    // WP: on the PVM host's native mode a kernel write to a read-only page
    // hangs instead of faulting without it; elsewhere it changes nothing
    // (every page ipivirt maps is writable).
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    ioctl("KVM_SET_SREGS", vcpu.set_sregs(&sregs))?;

    let mut regs = ioctl("KVM_GET_REGS", vcpu.get_regs())?;
    regs.rip = entry.0;
    regs.rsp = layout::boot_stack_top(id);
    regs.rdi = u64::from(id);
    regs.rflags = 0x2; // reserved bit; IF clear
    ioctl("KVM_SET_REGS", vcpu.set_regs(&regs))?;
    ioctl(
        "KVM_SET_MP_STATE",
        vcpu.set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        }),
    )?;
    Ok(vcpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0011_2233,
            ..Default::default()
        }
    }

    #[test]
    fn test_vcpu_cpuid_topology() {
        let base = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1)]).unwrap();
        let c = vcpu_cpuid(&base, 300, 512);
        let leaf1 = c.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx >> 24, 255, "initial APIC id saturates at 255");
        assert_eq!(leaf1.ebx & 0xff_ffff, 0x11_2233);
        let b: Vec<_> = c.as_slice().iter().filter(|e| e.function == 0xb).collect();
        assert_eq!(b.len(), 3);
        assert!(b.iter().all(|e| e.edx == 300));
        assert_eq!((b[1].eax, b[1].ebx), (9, 512));
    }

    #[test]
    fn test_open_kvm_missing_path() {
        let err = open_kvm(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(matches!(err, KvmUnavailable::Missing { .. }), "{err}");
        assert!(err.to_string().contains("does not exist"));
    }
}
