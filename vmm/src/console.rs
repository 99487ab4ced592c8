//! The guest console: bytes written to [`abi::Port::Console`], gathered per
//! vCPU into lines and printed with a `[vcpu N]` prefix. A guest that never
//! writes a newline cannot grow a buffer without bound: lines are cut at
//! [`MAX_LINE`] bytes. A guest that floods the console cannot flood the
//! terminal or slow the run: after [`MAX_OUTPUT`] bytes in a run, one note
//! says so and the rest is counted and dropped (constant work per exit).

use std::io::Write;
use std::sync::Mutex;

/// Longest line kept before it is printed anyway.
pub const MAX_LINE: usize = 1024;
/// Console bytes a run may print; the rest is dropped after one note.
pub const MAX_OUTPUT: u64 = 256 << 10;
/// Lines remembered for error messages.
const TAIL_LINES: usize = 32;

/// Where console lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleMode {
    /// Print to stderr (and keep the tail).
    Stderr,
    /// Only keep the tail (library users, benches, tests).
    Capture,
}

/// Per-vCPU line assembly plus a short tail of recent lines.
pub struct Console {
    /// Guest memory, for [`Console::write_from_guest`].
    memory: std::sync::OnceLock<vm_memory::GuestMemoryMmap>,
    mode: ConsoleMode,
    limit: u64,
    state: Mutex<State>,
    tail: Mutex<std::collections::VecDeque<String>>,
}

struct State {
    /// Per-vCPU line being assembled.
    partial: Vec<Vec<u8>>,
    /// Bytes the guest wrote in this run (saturating).
    total: u64,
    /// The suppression note was printed.
    noted: bool,
}

impl Console {
    /// A console for `vcpus` vCPUs.
    pub fn new(vcpus: u32, mode: ConsoleMode) -> Self {
        Self::with_limit(vcpus, mode, MAX_OUTPUT)
    }

    /// A console that prints at most `limit` bytes of guest output.
    pub fn with_limit(vcpus: u32, mode: ConsoleMode, limit: u64) -> Self {
        Console {
            memory: std::sync::OnceLock::new(),
            mode,
            limit,
            state: Mutex::new(State {
                partial: vec![Vec::new(); vcpus as usize],
                total: 0,
                noted: false,
            }),
            tail: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Bytes the guest wrote to the console so far (printed or not).
    pub fn total_bytes(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Gives the console the guest's memory, where
    /// [`abi::Port::ConsoleBuffer`] writes come from (once).
    pub fn attach_memory(&self, mem: vm_memory::GuestMemoryMmap) {
        let _ = self.memory.set(mem);
    }

    /// A [`abi::Port::ConsoleBuffer`] write: `len` bytes from `vcpu`'s
    /// console buffer. A length over the buffer, a vCPU out of range or no
    /// memory attached is the guest's (or the caller's) error.
    pub fn write_from_guest(&self, vcpu: u32, len: u32) -> Result<(), String> {
        use vm_memory::{Bytes, GuestAddress};
        if u64::from(len) > abi::layout::CONSOLE_BUFFER_SIZE || vcpu as usize >= abi::MAX_VCPUS {
            return Err(format!(
                "console buffer write of {len} bytes from vCPU {vcpu} (at most {})",
                abi::layout::CONSOLE_BUFFER_SIZE
            ));
        }
        let mem = self.memory.get().ok_or("no guest memory for the console")?;
        let mut bytes = vec![0u8; len as usize];
        mem.read_slice(&mut bytes, GuestAddress(abi::layout::console_buffer(vcpu)))
            .map_err(|e| format!("console buffer of vCPU {vcpu}: {e}"))?;
        self.write(vcpu, &bytes);
        Ok(())
    }

    /// Adds bytes that vCPU `vcpu` wrote.
    pub fn write(&self, vcpu: u32, bytes: &[u8]) {
        let mut done = Vec::new();
        let mut suppressed = false;
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let room = self.limit.saturating_sub(state.total);
            state.total = state.total.saturating_add(bytes.len() as u64);
            if room < bytes.len() as u64 && !state.noted {
                state.noted = true;
                suppressed = true;
            }
            let Some(buf) = state.partial.get_mut(vcpu as usize) else {
                return;
            };
            let kept = &bytes[..bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
            for &b in kept {
                if b == b'\n' || buf.len() >= MAX_LINE {
                    done.push(std::mem::take(buf));
                }
                if b != b'\n' {
                    buf.push(b);
                }
            }
            if suppressed && !buf.is_empty() {
                done.push(std::mem::take(buf));
            }
        }
        for line in done {
            self.emit(vcpu, &line);
        }
        if suppressed {
            self.emit_text(format!(
                "ipivirt: console output suppressed after {} bytes (the guest wrote more; \
                 the rest of this run's console is dropped)",
                self.limit
            ));
        }
    }

    /// Prints what is left in every buffer (end of run).
    pub fn flush(&self) {
        let rest: Vec<(u32, Vec<u8>)> = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state
                .partial
                .iter_mut()
                .enumerate()
                .filter(|(_, b)| !b.is_empty())
                .map(|(i, b)| (i as u32, std::mem::take(b)))
                .collect()
        };
        for (vcpu, line) in rest {
            self.emit(vcpu, &line);
        }
    }

    fn emit(&self, vcpu: u32, line: &[u8]) {
        // Control characters from the guest are not passed to the terminal.
        let text: String = String::from_utf8_lossy(line)
            .chars()
            .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
            .collect();
        self.emit_text(format!("[vcpu {vcpu}] {text}"));
    }

    fn emit_text(&self, text: String) {
        if self.mode == ConsoleMode::Stderr {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
    }

    /// The most recent lines, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_console_lines_per_vcpu() {
        let c = Console::new(2, ConsoleMode::Capture);
        c.write(0, b"hel");
        c.write(1, b"other\n");
        c.write(0, b"lo\nrest");
        c.flush();
        assert_eq!(
            c.tail(),
            ["[vcpu 1] other", "[vcpu 0] hello", "[vcpu 0] rest"]
        );
    }

    #[test]
    fn test_console_bounds_lines_and_ignores_bad_vcpu() {
        let c = Console::new(1, ConsoleMode::Capture);
        c.write(0, &vec![b'x'; MAX_LINE * 3 + 5]);
        c.write(7, b"ignored\n");
        c.write(0, b"\x1b[2J\n");
        c.flush();
        let t = c.tail();
        assert_eq!(t.len(), 4);
        assert!(t[..3]
            .iter()
            .all(|l| l.len() == MAX_LINE + "[vcpu 0] ".len()));
        assert_eq!(t[3], "[vcpu 0] xxxxx?[2J");
    }

    #[test]
    fn test_console_volume_cap_single_note() {
        let c = Console::with_limit(2, ConsoleMode::Capture, 3000);
        c.write(0, b"first\n");
        for _ in 0..1000 {
            c.write(1, &[b'#'; 4096]);
        }
        c.write(0, b"late\n");
        c.flush();
        let t = c.tail();
        let notes = t
            .iter()
            .filter(|l| l.contains("suppressed after 3000 bytes"))
            .count();
        assert_eq!(notes, 1, "{t:?}");
        assert!(!t.iter().any(|l| l.contains("late")), "{t:?}");
        let printed: usize = t
            .iter()
            .filter(|l| l.starts_with("[vcpu 1]"))
            .map(|l| l.len() - "[vcpu 1] ".len())
            .sum();
        assert_eq!(printed, 3000 - "first\n".len());
        assert_eq!(c.total_bytes(), 6 + 1000 * 4096 + 5);
    }
}
