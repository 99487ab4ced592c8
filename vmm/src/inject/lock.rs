//! Two ipivirt runs injecting on the same host CPUs disturb each other's
//! figures (and stack their duty cycles), and neither can tell from its
//! own numbers. Each run takes an advisory lock per host CPU it injects
//! on (`flock` on a file in the temporary directory); one that finds a
//! CPU already held says so. It never waits and never refuses: the user
//! decides.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

/// The lock file of host CPU `cpu`.
fn path(cpu: usize) -> PathBuf {
    std::env::temp_dir().join(format!("ipivirt-cpu{cpu}.lock"))
}

/// Locks held for a run (released when dropped, or when the process ends).
#[derive(Debug, Default)]
pub struct CpuLocks {
    _files: Vec<File>,
}

/// Takes the lock of every CPU in `cpus` that is free; returns the locks
/// and, if another process holds some, a warning naming them.
pub fn claim(cpus: &[usize]) -> (CpuLocks, Option<String>) {
    let mut files = Vec::new();
    let mut busy = Vec::new();
    for &cpu in cpus {
        let p = path(cpu);
        // Read-only is enough for flock, and works on a file another user
        // created.
        let file = OpenOptions::new().read(true).open(&p).or_else(|_| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&p)
        });
        let Ok(file) = file else {
            continue;
        };
        // SAFETY: flock on an fd this function owns; LOCK_NB never blocks.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            files.push(file);
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK) {
            busy.push(cpu);
        }
    }
    let warning = (!busy.is_empty()).then(|| {
        format!(
            "another ipivirt process is injecting on host CPUs {busy:?} at the same time: \
             both runs' figures are disturbed (and their duty cycles add up)"
        )
    });
    (CpuLocks { _files: files }, warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_second_claim_sees_the_first() {
        // A CPU number no real run uses, so real runs do not interfere.
        let cpu = 1_000_000 + std::process::id() as usize;
        let (first, none) = claim(&[cpu]);
        assert!(none.is_none());
        // flock locks belong to the open file: a second open conflicts
        // even in the same process.
        let (_second, warning) = claim(&[cpu]);
        assert!(warning.unwrap().contains(&format!("[{cpu}]")));
        drop(first);
        let (_third, none) = claim(&[cpu]);
        assert!(none.is_none());
        let _ = std::fs::remove_file(path(cpu));
    }
}
