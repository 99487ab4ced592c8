//! The timeline of injected events and its export as Chrome trace-event
//! JSON (opens in Perfetto or chrome://tracing).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// What was injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A SCHED_FIFO antagonist busy-ran on a host CPU.
    Antagonist,
    /// A vCPU thread was held outside KVM_RUN.
    Pause,
    /// A vCPU thread was moved to another host CPU.
    Migrate,
    /// A vCPU was asked to go offline, and (at the slice's end) back online.
    Hotplug,
}

impl EventKind {
    /// Short name, as in the trace.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Antagonist => "antagonist",
            EventKind::Pause => "pause",
            EventKind::Migrate => "migrate",
            EventKind::Hotplug => "offline",
        }
    }
}

/// One injected event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// From the start of injection.
    pub at: Duration,
    /// What.
    pub kind: EventKind,
    /// The vCPU(s) it hit: the paused or migrated vCPU, or the vCPUs placed
    /// on the antagonist's host CPU at the time.
    pub vcpus: Vec<u32>,
    /// Host CPU: where the antagonist ran, where the paused vCPU was
    /// placed, or where the migrated vCPU went.
    pub host_cpu: usize,
    /// For a migration: the host CPU it left.
    pub from_cpu: Option<usize>,
    /// How long it lasted (for a migration: its sched_setaffinity call).
    pub duration: Duration,
}

/// One design phase as the guest marked it ([`abi::Port::Phase`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseSlice {
    /// The design's name.
    pub design: String,
    /// Its slot (the order the designs ran in).
    pub slot: u32,
    /// From the start of injection.
    pub at: Duration,
    /// Until the phase ended (or the run did).
    pub duration: Duration,
}

impl PhaseSlice {
    /// The slices of `marks` (slot, ended, when), on the time base `t0`:
    /// a start without an end lasts until `run_end`; an end without a
    /// start, or a slot outside `designs`, is ignored (the guest's word).
    pub fn from_marks(
        marks: &[(u32, bool, Instant)],
        designs: &[abi::Design],
        t0: Instant,
        run_end: Instant,
    ) -> Vec<PhaseSlice> {
        let mut out: Vec<PhaseSlice> = Vec::new();
        let mut open: Option<(u32, Instant)> = None;
        let close = |out: &mut Vec<PhaseSlice>, slot: u32, start: Instant, end: Instant| {
            if let Some(d) = designs.get(slot as usize) {
                out.push(PhaseSlice {
                    design: d.name().to_string(),
                    slot,
                    at: start.saturating_duration_since(t0),
                    duration: end.saturating_duration_since(start),
                });
            }
        };
        for &(slot, end, at) in marks {
            match (open, end) {
                (Some((s, start)), true) if s == slot => {
                    close(&mut out, s, start, at);
                    open = None;
                }
                (Some((s, start)), false) => {
                    close(&mut out, s, start, at);
                    open = Some((slot, at));
                }
                (None, false) => open = Some((slot, at)),
                _ => {}
            }
        }
        if let Some((s, start)) = open {
            close(&mut out, s, start, run_end.max(start));
        }
        out
    }
}

/// Sorts the events by time (ties: kind, then host CPU), in place.
pub fn sort(events: &mut [Event]) {
    events.sort_by_key(|e| (e.at, e.kind as u8, e.host_cpu));
}

/// Track ids: host CPU `c` is `c`; vCPU `v`'s pauses `VCPU_TRACK + v`,
/// its migrations `MIGRATE_TRACK + v`; lane `k > 0` of a track (for an
/// event that would overlap the one before it) adds `k * LANE_STRIDE`.
const VCPU_TRACK: u64 = 1000;
const MIGRATE_TRACK: u64 = 1_000_000;
const HOTPLUG_TRACK: u64 = 3_000_000;
const LANE_STRIDE: u64 = 10_000_000;
/// The guest's design phases (one track: phases never overlap).
const PHASE_TRACK: u64 = 2_000_000;

/// Writes `events` as Chrome trace-event JSON: one track per host CPU for
/// antagonists, one per vCPU for its pauses and another for its
/// migrations. No two slices of one track overlap (Perfetto drops such
/// slices): an event that would is put on an extra lane of its track.
pub fn write_chrome_json(
    out: &mut dyn Write,
    events: &[Event],
    phases: &[PhaseSlice],
    host_cpus: &[usize],
    vcpus: u32,
) -> std::io::Result<()> {
    const PID: u32 = 1;
    let us = |d: Duration| d.as_nanos() as f64 / 1e3;
    let meta = |out: &mut dyn Write, tid: u64, name: &str| {
        write!(
            out,
            ",\n{{\"ph\":\"M\",\"pid\":{PID},\"tid\":{tid},\"name\":\"thread_name\",\"args\":{{\"name\":\"{name}\"}}}}"
        )
    };
    writeln!(out, "{{\"displayTimeUnit\":\"ns\",\"traceEvents\":[")?;
    write!(
        out,
        "{{\"ph\":\"M\",\"pid\":{PID},\"name\":\"process_name\",\"args\":{{\"name\":\"ipivirt host injection\"}}}}"
    )?;
    for &c in host_cpus {
        meta(out, c as u64, &format!("host CPU {c}"))?;
    }
    for v in 0..vcpus.min(1024) {
        meta(out, VCPU_TRACK + u64::from(v), &format!("vCPU {v}"))?;
        meta(
            out,
            MIGRATE_TRACK + u64::from(v),
            &format!("vCPU {v} migrations"),
        )?;
    }
    for v in events
        .iter()
        .filter(|e| e.kind == EventKind::Hotplug)
        .filter_map(|e| e.vcpus.first().copied())
        .collect::<std::collections::BTreeSet<u32>>()
    {
        meta(
            out,
            HOTPLUG_TRACK + u64::from(v),
            &format!("vCPU {v} hotplug"),
        )?;
    }
    if !phases.is_empty() {
        meta(out, PHASE_TRACK, "design phases (guest)")?;
    }
    for p in phases {
        write!(
            out,
            ",\n{{\"ph\":\"X\",\"pid\":{PID},\"tid\":{PHASE_TRACK},\"name\":\"{}\",\"cat\":\"phase\",\"ts\":{:.3},\"dur\":{:.3},\"args\":{{\"slot\":{}}}}}",
            p.design,
            us(p.at),
            us(p.duration),
            p.slot
        )?;
    }
    // The end of the last slice on each lane of each track.
    let mut lanes: std::collections::HashMap<u64, Vec<Duration>> = Default::default();
    for e in events {
        let vcpus = e
            .vcpus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let args = match e.from_cpu {
            Some(from) => format!(
                "{{\"vcpus\":[{vcpus}],\"host_cpu\":{},\"from_cpu\":{from}}}",
                e.host_cpu
            ),
            None => format!("{{\"vcpus\":[{vcpus}],\"host_cpu\":{}}}", e.host_cpu),
        };
        let first = u64::from(e.vcpus.first().copied().unwrap_or(0));
        let (track, cat, label) = match e.kind {
            EventKind::Antagonist => (
                e.host_cpu as u64,
                "preempt",
                format!("host CPU {}", e.host_cpu),
            ),
            EventKind::Pause => (VCPU_TRACK + first, "preempt", format!("vCPU {first}")),
            EventKind::Migrate => (
                MIGRATE_TRACK + first,
                "migrate",
                format!("vCPU {first} migrations"),
            ),
            EventKind::Hotplug => (
                HOTPLUG_TRACK + first,
                "hotplug",
                format!("vCPU {first} hotplug"),
            ),
        };
        let ends = lanes.entry(track).or_default();
        let (lane, new_lane) = match ends.iter().position(|&end| end <= e.at) {
            Some(l) => (l, false),
            None => {
                ends.push(Duration::ZERO);
                (ends.len() - 1, true)
            }
        };
        ends[lane] = e.at + e.duration;
        let tid = track + lane as u64 * LANE_STRIDE;
        if new_lane && lane > 0 {
            // Named once, when it first appears.
            meta(out, tid, &format!("{label} (overlap {lane})"))?;
        }
        write!(
            out,
            ",\n{{\"ph\":\"X\",\"pid\":{PID},\"tid\":{tid},\"name\":\"{}\",\"cat\":\"{cat}\",\"ts\":{:.3},\"dur\":{:.3},\"args\":{args}}}",
            e.kind.name(),
            us(e.at),
            us(e.duration)
        )?;
    }
    writeln!(out, "\n]}}")
}

/// Writes the trace file at `path` (temporary file and rename: a failed
/// write leaves the previous file, never a truncated one).
pub fn write_file(
    path: &Path,
    events: &[Event],
    phases: &[PhaseSlice],
    host_cpus: &[usize],
    vcpus: u32,
) -> std::io::Result<()> {
    let target = crate::output::check("--trace", path).map_err(std::io::Error::other)?;
    crate::output::write_with(&target, |w| {
        write_chrome_json(w, events, phases, host_cpus, vcpus)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_phase_slices_from_marks() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let designs = [abi::Design::Upstream, abi::Design::TaskLocal];
        // Slot 0 ends; slot 1 never does; an end without a start and a
        // slot beyond the designs are the guest's noise.
        let marks = [
            (1, true, ms(1)),
            (0, false, ms(2)),
            (0, true, ms(5)),
            (7, false, ms(6)),
            (1, false, ms(8)),
        ];
        let p = PhaseSlice::from_marks(&marks, &designs, t0, ms(20));
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            (p[0].design.as_str(), p[0].at, p[0].duration),
            ("upstream", ms(2) - t0, Duration::from_millis(3))
        );
        assert_eq!(
            (p[1].slot, p[1].at, p[1].duration),
            (1, ms(8) - t0, Duration::from_millis(12))
        );
        let mut out = Vec::new();
        write_chrome_json(&mut out, &[], &p, &[0], 1).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\"name\":\"task-local\",\"cat\":\"phase\""),
            "{text}"
        );
        assert!(text.contains("design phases (guest)"), "{text}");
    }

    #[test]
    fn test_write_chrome_json_shape() {
        let mut events = vec![
            Event {
                at: Duration::from_micros(30),
                kind: EventKind::Migrate,
                vcpus: vec![1],
                host_cpu: 0,
                from_cpu: Some(1),
                duration: Duration::ZERO,
            },
            Event {
                at: Duration::from_micros(10),
                kind: EventKind::Antagonist,
                vcpus: vec![0, 2],
                host_cpu: 1,
                from_cpu: None,
                duration: Duration::from_micros(200),
            },
        ];
        sort(&mut events);
        assert_eq!(events[0].kind, EventKind::Antagonist);
        let mut out = Vec::new();
        write_chrome_json(&mut out, &events, &[], &[0, 1], 3).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("{\"displayTimeUnit\""), "{text}");
        assert!(text.contains("\"ph\":\"X\",\"pid\":1,\"tid\":1,\"name\":\"antagonist\""));
        assert!(text.contains("\"ts\":10.000,\"dur\":200.000"));
        assert!(text.contains("\"vcpus\":[0,2]"));
        assert!(text.contains("\"tid\":1000001,\"name\":\"migrate\""));
        assert!(text.trim_end().ends_with("]}"));
        let hp = [Event {
            at: Duration::from_millis(1),
            kind: EventKind::Hotplug,
            vcpus: vec![2],
            host_cpu: 0,
            from_cpu: None,
            duration: Duration::from_millis(5),
        }];
        let mut out = Vec::new();
        write_chrome_json(&mut out, &hp, &[], &[0], 3).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(r#""tid":3000002,"name":"offline","cat":"hotplug""#),
            "{text}"
        );
        assert!(text.contains(r#""name":"vCPU 2 hotplug""#), "{text}");
    }

    #[test]
    fn test_overlapping_events_of_one_track_go_to_another_lane() {
        let pause = |at_us, len_us| Event {
            at: Duration::from_micros(at_us),
            kind: EventKind::Pause,
            vcpus: vec![2],
            host_cpu: 0,
            from_cpu: None,
            duration: Duration::from_micros(len_us),
        };
        // 0-100 and 50-150 overlap; 100-120 fits after the first.
        let events = [pause(0, 100), pause(50, 100), pause(100, 20)];
        let mut out = Vec::new();
        write_chrome_json(&mut out, &events, &[], &[0], 3).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let tids: Vec<u64> = v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X")
            .map(|e| e["tid"].as_u64().unwrap())
            .collect();
        assert_eq!(tids, [1002, 10_001_002, 1002]);
        let named = v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["tid"] == 10_001_002 && e["args"]["name"] == "vCPU 2 (overlap 1)");
        assert!(named);
    }
}
