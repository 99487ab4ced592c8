//! KVM's own per-vCPU statistics, read from the binary stats fd
//! (`KVM_GET_STATS_FD` on a vCPU fd): a header, descriptors with names, and
//! a data block of u64 values.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

/// The per-vCPU statistics ipivirt reports beside the injected counts.
pub const WANTED: [&str; 7] = [
    "preemption_reported",
    "preemption_other",
    "halt_exits",
    "signal_exits",
    "exits",
    "directed_yield_attempted",
    "directed_yield_successful",
];

/// `KVM_GET_STATS_FD` = `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xAECE;

/// Reading KVM statistics failed.
#[derive(Debug, thiserror::Error)]
pub enum KvmStatsError {
    /// The ioctl failed (KVM without binary stats).
    #[error("KVM_GET_STATS_FD failed: {0}")]
    Ioctl(std::io::Error),
    /// Reading the stats fd failed.
    #[error("reading KVM statistics: {0}")]
    Read(std::io::Error),
    /// The header or a descriptor is out of bounds.
    #[error("KVM statistics are malformed: {0}")]
    Malformed(&'static str),
}

/// Opens the binary stats fd of a vCPU (or VM) fd.
pub fn open(fd: &impl AsRawFd) -> Result<File, KvmStatsError> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1;
    // `fd` is a live KVM fd.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
    if rc < 0 {
        return Err(KvmStatsError::Ioctl(std::io::Error::last_os_error()));
    }
    // SAFETY: `rc` is a fresh fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(rc) })
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

/// Reads the `wanted` statistics (first u64 of each) from a stats fd.
pub fn read(file: &File, wanted: &[&str]) -> Result<BTreeMap<String, u64>, KvmStatsError> {
    let mut header = [0u8; 24];
    file.read_exact_at(&mut header, 0)
        .map_err(KvmStatsError::Read)?;
    let field = |i: usize| u32_at(&header, i * 4).unwrap_or(0) as u64;
    let (name_size, num_desc, desc_offset, data_offset) = (field(1), field(2), field(4), field(5));
    if name_size > 4096 || num_desc > 4096 {
        return Err(KvmStatsError::Malformed("header sizes"));
    }
    let desc_size = 16 + name_size as usize;
    let mut descs = vec![0u8; desc_size * num_desc as usize];
    file.read_exact_at(&mut descs, desc_offset)
        .map_err(KvmStatsError::Read)?;
    let mut out = BTreeMap::new();
    for d in descs.chunks_exact(desc_size) {
        let name_bytes = &d[16..];
        let end = name_bytes
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(name_bytes.len());
        let name = String::from_utf8_lossy(&name_bytes[..end]);
        if !wanted.contains(&name.as_ref()) {
            continue;
        }
        let size = u16_at(d, 6).ok_or(KvmStatsError::Malformed("descriptor"))?;
        let offset = u32_at(d, 8).ok_or(KvmStatsError::Malformed("descriptor"))?;
        if size == 0 {
            continue;
        }
        let mut v = [0u8; 8];
        file.read_exact_at(&mut v, data_offset + u64::from(offset))
            .map_err(KvmStatsError::Read)?;
        out.insert(name.into_owned(), u64::from_le_bytes(v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_read_parses_a_synthetic_stats_file() {
        // Header, two descriptors (name_size 32), data block.
        let name_size = 32u32;
        let mut b = Vec::new();
        for v in [0, name_size, 2, 24, 24, 24 + 2 * (16 + name_size)] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for (name, offset) in [("halt_exits", 8u32), ("other", 0)] {
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&0i16.to_le_bytes());
            b.extend_from_slice(&1u16.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize(name_size as usize, 0);
            b.extend_from_slice(&n);
        }
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(&42u64.to_le_bytes());
        let path = std::env::temp_dir().join(format!("ipivirt-stats-{}", std::process::id()));
        std::fs::write(&path, &b).unwrap();
        let f = File::open(&path).unwrap();
        let m = read(&f, &["halt_exits", "exits"]).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(m.len(), 1);
        assert_eq!(m["halt_exits"], 42);
    }
}
