//! The event trace of one run: every event is folded into a hash (the
//! determinism check compares hashes of two runs of one seed) and, when
//! asked for, kept as text for `cargo sim replay --trace`.

use std::sync::{Arc, Mutex};

#[derive(Default)]
struct TraceState {
    hash: u64,
    events: u64,
    lines: Option<Vec<String>>,
}

/// Shared by every task of one run.
#[derive(Clone, Default)]
pub struct Trace {
    state: Arc<Mutex<TraceState>>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Trace {
    pub fn new(keep_lines: bool) -> Trace {
        let state = TraceState {
            hash: FNV_OFFSET,
            events: 0,
            lines: keep_lines.then(Vec::new),
        };
        Trace {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Records one event; `at_ms` is simulated time.
    pub fn event(&self, at_ms: u64, text: impl FnOnce() -> String) {
        let line = text();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut hash = state.hash;
        for byte in at_ms.to_le_bytes().iter().chain(line.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
        state.hash = hash;
        state.events = state.events.wrapping_add(1);
        if let Some(lines) = state.lines.as_mut() {
            lines.push(format!("{:>10}.{:03} {line}", at_ms / 1000, at_ms % 1000));
        }
    }

    pub fn hash(&self) -> u64 {
        self.state.lock().map(|s| s.hash).unwrap_or(0)
    }

    pub fn events(&self) -> u64 {
        self.state.lock().map(|s| s.events).unwrap_or(0)
    }

    pub fn take_lines(&self) -> Vec<String> {
        self.state
            .lock()
            .ok()
            .and_then(|mut s| s.lines.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }
}
