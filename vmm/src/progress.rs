//! A progress bar on stderr while a run goes on (indicatif). Shown only
//! when asked for and stderr is a terminal. Its length starts as the
//! scenario's nominal length and is re-estimated from the guest's
//! design-phase markers as phases end, so the estimate follows this
//! platform's measured speed (boot, calibration, an emulated guest).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The running run's phase marks, for the bar (process-wide: one bar).
static MARKS: Mutex<PhaseMarks> = Mutex::new(PhaseMarks {
    first_start: None,
    ended: 0,
    last_end: None,
});

/// When the first phase started and how many have ended, when.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PhaseMarks {
    first_start: Option<Instant>,
    ended: u32,
    last_end: Option<Instant>,
}

/// The machine saw the guest start (`end` false) or end a design phase.
pub fn phase_mark(end: bool, at: Instant) {
    if let Ok(mut m) = MARKS.lock() {
        if end {
            m.ended += 1;
            m.last_end = Some(at);
        } else if m.first_start.is_none() {
            m.first_start = Some(at);
        }
    }
}

/// The run's length estimated from `marks`: the time to the first phase
/// plus the phases' measured mean length for each of `phases` (what
/// follows the last phase, the report, is short). None before a phase
/// ended.
fn estimate(marks: &PhaseMarks, start: Instant, phases: u32) -> Option<Duration> {
    let (first, last) = (marks.first_start?, marks.last_end?);
    if marks.ended == 0 || phases == 0 {
        return None;
    }
    let per_phase = last.saturating_duration_since(first) / marks.ended;
    Some(first.saturating_duration_since(start) + per_phase * phases.max(marks.ended))
}

/// Runs `f`, showing a bar that fills over `expected` (it stops at 99%
/// until `f` returns) when `show` is set and stderr is a terminal; `f`
/// runs `phases` design phases (0: none), which re-estimate the length.
pub fn with_progress<T>(
    show: bool,
    expected: Duration,
    phases: u32,
    label: &str,
    f: impl FnOnce() -> T,
) -> T {
    if !show || !std::io::stderr().is_terminal() {
        return f();
    }
    if let Ok(mut m) = MARKS.lock() {
        *m = PhaseMarks {
            first_start: None,
            ended: 0,
            last_end: None,
        };
    }
    let ms = |d: Duration| d.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
    let mut len = ms(expected);
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg} [{elapsed_precise}] {wide_bar} {percent}% (about {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar.set_message(label.to_string());
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let marks = MARKS.lock().map(|m| *m).ok();
                if let Some(e) = marks.and_then(|m| estimate(&m, start, phases)) {
                    len = ms(e);
                    bar.set_length(len);
                }
                let ms = start.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
                bar.set_position(ms.min(len.saturating_sub(len / 100).max(1)));
                bar.tick();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        out
    });
    bar.finish_and_clear();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_with_progress_hidden_returns_value() {
        assert_eq!(
            with_progress(false, Duration::from_secs(1), 1, "x", || 7),
            7
        );
        // Not a terminal under the test harness (or hidden): still runs f.
        assert_eq!(
            with_progress(true, Duration::from_millis(1), 1, "x", || 8),
            8
        );
    }

    #[test]
    fn test_estimate_follows_the_measured_phases() {
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        let mut m = PhaseMarks {
            first_start: Some(ms(500)),
            ended: 0,
            last_end: None,
        };
        assert_eq!(estimate(&m, start, 4), None);
        // One phase of a nominal 1 s took 3 s here: four take 12 s, after
        // the 0.5 s to the first phase.
        m.ended = 1;
        m.last_end = Some(ms(3500));
        let e = estimate(&m, start, 4).unwrap();
        assert_eq!(e, Duration::from_millis(500 + 12_000));
        // More ends than announced phases never shrink below what ran.
        m.ended = 5;
        m.last_end = Some(ms(5500));
        assert_eq!(estimate(&m, start, 4), Some(ms(5500) - start));
    }
}
