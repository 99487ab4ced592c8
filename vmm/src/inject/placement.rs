//! Host CPU lists, the placement of vCPU threads on host CPUs, and the
//! thread-level Linux calls injection needs (affinity, scheduling class,
//! where a thread last ran, how long it waited to run).

use std::collections::BTreeSet;

/// A host CPU list is invalid or not usable by this process.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// The text is not a CPU list.
    #[error("--host-cpus '{0}' is not a CPU list (give e.g. 0, 0-1, 0,2)")]
    Syntax(String),
    /// The list names CPUs this process may not run on.
    #[error(
        "--host-cpus {list}: CPU(s) {bad:?} are not in this process's affinity mask {allowed:?}"
    )]
    NotAllowed {
        /// The list as given.
        list: String,
        /// The CPUs that are not allowed.
        bad: Vec<usize>,
        /// What the process may use.
        allowed: Vec<usize>,
    },
}

/// Parses a CPU list such as `0`, `0-1`, `0,2-3` (sorted, deduplicated).
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, PlacementError> {
    let bad = || PlacementError::Syntax(text.to_string());
    let mut cpus = BTreeSet::new();
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo.parse().map_err(|_| bad())?;
        let hi: usize = hi.parse().map_err(|_| bad())?;
        if lo > hi || hi >= libc::CPU_SETSIZE as usize {
            return Err(bad());
        }
        cpus.extend(lo..=hi);
    }
    Ok(cpus.into_iter().collect())
}

/// A list as the command line spells it (`0,1,1,1`).
pub fn list_text<T: ToString>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

/// Parses a vCPU -> host CPU map such as `0,1,1,1` (one host CPU per
/// vCPU, in vCPU order; order and repeats kept, unlike a CPU list).
pub fn parse_placement(text: &str) -> Result<Vec<usize>, String> {
    text.split(',')
        .map(|p| {
            let p = p.trim();
            p.parse::<usize>()
                .ok()
                .filter(|&c| c < libc::CPU_SETSIZE as usize)
                .ok_or_else(|| {
                    format!(
                        "--placement '{text}' is not a vCPU -> host CPU map: give one host CPU \
                         number per vCPU, vCPU 0 first (e.g. 0,1,1,1)"
                    )
                })
        })
        .collect()
}

/// Checks `cpus` against the CPUs `allowed` for this process.
pub fn check_allowed(list: &str, cpus: &[usize], allowed: &[usize]) -> Result<(), PlacementError> {
    let bad: Vec<usize> = cpus
        .iter()
        .copied()
        .filter(|c| !allowed.contains(c))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(PlacementError::NotAllowed {
            list: list.to_string(),
            bad,
            allowed: allowed.to_vec(),
        })
    }
}

/// Spreads `vcpus` vCPUs evenly over `slots` host CPUs, round robin: vCPU
/// `v` goes to slot `v % slots`. Deterministic.
pub fn spread(vcpus: u32, slots: usize) -> Vec<usize> {
    (0..vcpus as usize).map(|v| v % slots.max(1)).collect()
}

/// An affinity mask (a set of CPU numbers).
pub type CpuMask = Vec<usize>;

fn to_cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c < libc::CPU_SETSIZE as usize {
            // SAFETY: `c` is below CPU_SETSIZE, so the bit is inside `set`.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    set
}

/// The affinity mask of thread `tid` (0: the calling thread).
pub fn get_affinity(tid: libc::pid_t) -> std::io::Result<CpuMask> {
    // SAFETY: cpu_set_t is a plain bit array; all zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(tid, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: every `c` is below CPU_SETSIZE, inside `set`.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Sets the affinity of thread `tid` (0: the calling thread) to `cpus`.
pub fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    let set = to_cpu_set(cpus);
    // SAFETY: `set` is a valid cpu_set_t of the size passed; the call only
    // reads it.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The CPUs this process may run on (the main thread's mask as inherited).
pub fn process_cpus() -> std::io::Result<CpuMask> {
    // The main thread's tid is the pid; its mask is never changed by ipivirt.
    // SAFETY: getpid has no preconditions.
    get_affinity(unsafe { libc::getpid() })
}

/// The calling thread's kernel thread id.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Puts the calling thread into `SCHED_FIFO` at `priority`.
pub fn set_fifo(priority: i32) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param; 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Puts the calling thread back into `SCHED_OTHER`.
pub fn set_normal() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param; 0 is the calling thread.
    // Failing to lower one's own policy cannot happen for SCHED_OTHER.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
}

/// Sets the nice value of the calling thread (best effort: lowering it
/// needs privileges, and failing is harmless).
pub fn set_nice(nice: i32) {
    // SAFETY: setpriority on the calling thread (who = its tid) has no
    // memory effects.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, gettid() as libc::id_t, nice) };
}

/// Whether this process may use `SCHED_FIFO`, tried on a short-lived
/// thread so that no thread of the caller changes class. `Err` says why not.
pub fn fifo_permitted() -> Result<(), String> {
    std::thread::Builder::new()
        .name("inj-probe".into())
        .spawn(|| {
            let r = set_fifo(1).map_err(|e| e.to_string());
            set_normal();
            r
        })
        .map_err(|e| e.to_string())?
        .join()
        .unwrap_or_else(|_| Err("probe thread panicked".into()))
}

/// Field 39 (`processor`, the CPU it last ran on) and the scheduling
/// policy (field 41) of `/proc/self/task/<tid>/stat`.
pub fn task_cpu(tid: libc::pid_t) -> Option<usize> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    stat_field(&stat, 39)?.parse().ok()
}

/// Field `n` (1-based, as in proc(5)) of a `stat` line; the command name
/// (field 2) may contain spaces and parentheses, so counting starts after
/// its closing parenthesis.
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

/// Time thread `tid` spent runnable but waiting for a CPU, in ns
/// (`/proc/self/task/<tid>/schedstat`, second field): what KVM turns into
/// steal time for a vCPU thread.
pub fn run_delay_ns(tid: libc::pid_t) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_cpu_list_forms() {
        assert_eq!(parse_cpu_list("0").unwrap(), [0]);
        assert_eq!(parse_cpu_list("0-1").unwrap(), [0, 1]);
        assert_eq!(parse_cpu_list("0,2").unwrap(), [0, 2]);
        assert_eq!(parse_cpu_list("3,0-1,1").unwrap(), [0, 1, 3]);
        for bad in ["", "a", "1-0", "0,,1", "-1", "99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_parse_placement_keeps_order_and_repeats() {
        assert_eq!(parse_placement("0,1,1,1").unwrap(), [0, 1, 1, 1]);
        assert_eq!(parse_placement(" 1 , 0").unwrap(), [1, 0]);
        for bad in ["", "a", "0,,1", "-1", "0-1", "99999"] {
            assert!(parse_placement(bad).is_err(), "{bad}");
        }
        assert_eq!(list_text(&[0, 1, 1]), "0,1,1");
    }

    #[test]
    fn test_check_allowed_names_bad_cpus() {
        assert!(check_allowed("0-1", &[0, 1], &[0, 1]).is_ok());
        let e = check_allowed("0,7", &[0, 7], &[0, 1]).unwrap_err();
        assert!(e.to_string().contains("[7]"), "{e}");
    }

    #[test]
    fn test_spread_round_robin() {
        assert_eq!(spread(5, 2), [0, 1, 0, 1, 0]);
        assert_eq!(spread(2, 4), [0, 1]);
        assert_eq!(spread(3, 1), [0, 0, 0]);
    }

    #[test]
    fn test_stat_field_with_odd_comm() {
        let line =
            "42 (a) b (c)) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 \
                    25 26 27 28 29 30 31 32 33 34 35 36 1 38";
        assert_eq!(stat_field(line, 3), Some("R"));
        assert_eq!(stat_field(line, 39), Some("36"));
    }

    #[test]
    fn test_task_cpu_and_affinity_of_self() {
        let tid = gettid();
        let mask = get_affinity(0).unwrap();
        assert!(!mask.is_empty());
        assert!(mask.contains(&task_cpu(tid).unwrap()));
        assert!(run_delay_ns(tid).is_some());
    }
}
