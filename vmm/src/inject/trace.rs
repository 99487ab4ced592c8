//! The timeline of injected events and its export as Chrome trace-event
//! JSON (opens in Perfetto or chrome://tracing).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// What was injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A SCHED_FIFO antagonist busy-ran on a host CPU.
    Antagonist,
    /// A vCPU thread was held outside KVM_RUN.
    Pause,
    /// A vCPU thread was moved to another host CPU.
    Migrate,
}

impl EventKind {
    /// Short name, as in the trace.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Antagonist => "antagonist",
            EventKind::Pause => "pause",
            EventKind::Migrate => "migrate",
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

/// Sorts the events by time (ties: kind, then host CPU), in place.
pub fn sort(events: &mut [Event]) {
    events.sort_by_key(|e| (e.at, e.kind as u8, e.host_cpu));
}

/// Writes `events` as Chrome trace-event JSON: one track per host CPU for
/// antagonists and migrations, one per vCPU for pauses (and migrations).
pub fn write_chrome_json(
    out: &mut dyn Write,
    events: &[Event],
    host_cpus: &[usize],
    vcpus: u32,
) -> std::io::Result<()> {
    const PID: u32 = 1;
    const VCPU_TRACK: u64 = 1000;
    let us = |d: Duration| d.as_nanos() as f64 / 1e3;
    writeln!(out, "{{\"displayTimeUnit\":\"ns\",\"traceEvents\":[")?;
    write!(
        out,
        "{{\"ph\":\"M\",\"pid\":{PID},\"name\":\"process_name\",\"args\":{{\"name\":\"ipivirt host injection\"}}}}"
    )?;
    for &c in host_cpus {
        write!(
            out,
            ",\n{{\"ph\":\"M\",\"pid\":{PID},\"tid\":{c},\"name\":\"thread_name\",\"args\":{{\"name\":\"host CPU {c}\"}}}}"
        )?;
    }
    for v in 0..vcpus.min(1024) {
        write!(
            out,
            ",\n{{\"ph\":\"M\",\"pid\":{PID},\"tid\":{},\"name\":\"thread_name\",\"args\":{{\"name\":\"vCPU {v}\"}}}}",
            VCPU_TRACK + u64::from(v)
        )?;
    }
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
        let name = e.kind.name();
        match e.kind {
            EventKind::Antagonist => write!(
                out,
                ",\n{{\"ph\":\"X\",\"pid\":{PID},\"tid\":{},\"name\":\"{name}\",\"cat\":\"preempt\",\"ts\":{:.3},\"dur\":{:.3},\"args\":{args}}}",
                e.host_cpu,
                us(e.at),
                us(e.duration)
            )?,
            EventKind::Pause => write!(
                out,
                ",\n{{\"ph\":\"X\",\"pid\":{PID},\"tid\":{},\"name\":\"{name}\",\"cat\":\"preempt\",\"ts\":{:.3},\"dur\":{:.3},\"args\":{args}}}",
                VCPU_TRACK + u64::from(e.vcpus.first().copied().unwrap_or(0)),
                us(e.at),
                us(e.duration)
            )?,
            EventKind::Migrate => write!(
                out,
                ",\n{{\"ph\":\"X\",\"pid\":{PID},\"tid\":{},\"name\":\"{name}\",\"cat\":\"migrate\",\"ts\":{:.3},\"dur\":{:.3},\"args\":{args}}}",
                VCPU_TRACK + u64::from(e.vcpus.first().copied().unwrap_or(0)),
                us(e.at),
                us(e.duration)
            )?,
        }
    }
    writeln!(out, "\n]}}")
}

/// Writes the trace file at `path` (temporary file and rename: a failed
/// write leaves the previous file, never a truncated one).
pub fn write_file(
    path: &Path,
    events: &[Event],
    host_cpus: &[usize],
    vcpus: u32,
) -> std::io::Result<()> {
    let target = crate::output::check("--trace", path).map_err(std::io::Error::other)?;
    crate::output::write_with(&target, |w| write_chrome_json(w, events, host_cpus, vcpus))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        write_chrome_json(&mut out, &events, &[0, 1], 3).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("{\"displayTimeUnit\""), "{text}");
        assert!(text.contains("\"ph\":\"X\",\"pid\":1,\"tid\":1,\"name\":\"antagonist\""));
        assert!(text.contains("\"ts\":10.000,\"dur\":200.000"));
        assert!(text.contains("\"vcpus\":[0,2]"));
        assert!(text.contains("\"tid\":1001,\"name\":\"migrate\""));
        assert!(text.trim_end().ends_with("]}"));
    }
}
