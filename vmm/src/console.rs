//! The guest console: bytes written to [`abi::Port::Console`], gathered per
//! vCPU into lines and printed with a `[vcpu N]` prefix. A guest that never
//! writes a newline cannot grow a buffer without bound: lines are cut at
//! [`MAX_LINE`] bytes.

use std::io::Write;
use std::sync::Mutex;

/// Longest line kept before it is printed anyway.
pub const MAX_LINE: usize = 1024;
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
    mode: ConsoleMode,
    partial: Mutex<Vec<Vec<u8>>>,
    tail: Mutex<std::collections::VecDeque<String>>,
}

impl Console {
    /// A console for `vcpus` vCPUs.
    pub fn new(vcpus: u32, mode: ConsoleMode) -> Self {
        Console {
            mode,
            partial: Mutex::new(vec![Vec::new(); vcpus as usize]),
            tail: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Adds bytes that vCPU `vcpu` wrote.
    pub fn write(&self, vcpu: u32, bytes: &[u8]) {
        let mut done = Vec::new();
        {
            let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
            let Some(buf) = partial.get_mut(vcpu as usize) else {
                return;
            };
            for &b in bytes {
                if b == b'\n' || buf.len() >= MAX_LINE {
                    done.push(std::mem::take(buf));
                }
                if b != b'\n' {
                    buf.push(b);
                }
            }
        }
        for line in done {
            self.emit(vcpu, &line);
        }
    }

    /// Prints what is left in every buffer (end of run).
    pub fn flush(&self) {
        let rest: Vec<(u32, Vec<u8>)> = {
            let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
            partial
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
        let text = format!("[vcpu {vcpu}] {text}");
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
}
