//! Stalls of the VMM itself (SIGSTOP, a host too loaded to run it): the
//! controller notices them as gaps in its own clock, a poll loop that
//! meant to wake within 50 ms and woke seconds later. The guest's figures
//! of such a run compare designs across a gap only some of them saw, so
//! the run is marked unreliable, its ratios are not printed, and the
//! watchdog does not count the stopped time against the guest.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Lateness beyond this is a stall (ordinary scheduling delay on a
/// loaded host stays well below it).
pub const STALL_THRESHOLD: Duration = Duration::from_millis(200);

/// The stalls seen in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StallLog {
    /// Stalls seen.
    pub count: u64,
    /// Their total length (lateness beyond what the loop asked for).
    pub total: Duration,
    /// The longest.
    pub longest: Duration,
}

impl StallLog {
    /// Records that a loop step that should have taken at most `expected`
    /// took `took`; returns the stall's length (zero when it was none).
    pub fn observe(&mut self, expected: Duration, took: Duration) -> Duration {
        let late = took.saturating_sub(expected);
        if late <= STALL_THRESHOLD {
            return Duration::ZERO;
        }
        self.count += 1;
        self.total += late;
        self.longest = self.longest.max(late);
        late
    }

    /// Whether the VMM stalled.
    pub fn stalled(&self) -> bool {
        self.count > 0
    }

    /// What happened, in words (for the text and the JSON's `reason`).
    pub fn describe(&self) -> String {
        format!(
            "the VMM itself was stopped or starved {} time(s), {:.0} ms in all (longest {:.0} ms): \
             the designs did not run under the same conditions, so the run is unreliable and its \
             ratios are not printed",
            self.count,
            self.total.as_secs_f64() * 1e3,
            self.longest.as_secs_f64() * 1e3
        )
    }
}

/// The JSON of a [`StallLog`] (`host.vmm_stalls`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StallInfo {
    /// Stalls seen.
    pub count: u64,
    /// Their total length, in ms.
    pub total_ms: f64,
    /// The longest, in ms.
    pub longest_ms: f64,
}

impl From<StallLog> for StallInfo {
    fn from(s: StallLog) -> Self {
        StallInfo {
            count: s.count,
            total_ms: s.total.as_secs_f64() * 1e3,
            longest_ms: s.longest.as_secs_f64() * 1e3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_observe_counts_only_gaps_beyond_the_threshold() {
        let mut s = StallLog::default();
        let ms = Duration::from_millis;
        assert_eq!(s.observe(ms(50), ms(120)), Duration::ZERO);
        assert!(!s.stalled());
        assert_eq!(s.observe(ms(50), ms(2050)), ms(2000));
        assert_eq!(s.observe(ms(50), ms(350)), ms(300));
        assert_eq!((s.count, s.total, s.longest), (2, ms(2300), ms(2000)));
        assert!(s
            .describe()
            .contains("2 time(s), 2300 ms in all (longest 2000 ms)"));
    }
}
