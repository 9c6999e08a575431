//! Fuzz harnesses of blobcache. Each public function takes the raw bytes
//! of one fuzz input, runs one target on them and panics on a failed check;
//! the cargo-fuzz targets in `fuzz/` and the bolero tests in `tests/` call
//! the same functions, so that a crash found by one is replayed by the other.
//!
//! Inputs are bounded here (lengths, counts, sizes), not by the caller, so
//! that random inputs cannot exhaust memory whichever engine drives them.

pub mod block_list;
pub mod config;
pub mod engine_ops;
pub mod parsers;
pub mod shell_ops;

/// Longest input any harness looks at; the rest is ignored.
pub const MAX_INPUT: usize = 64 * 1024;

fn bounded(data: &[u8]) -> &[u8] {
    data.get(..MAX_INPUT).unwrap_or(data)
}
