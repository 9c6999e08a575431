//! The sans-IO block cache engine of blobcache.
//!
//! An [`Engine`] owns every caching decision of one mount: open files and
//! handles, the blocks of each file and the fixed pool of buffers that holds
//! them, pins, eviction, dirty tracking, write-back, commits, prefetch and
//! the queue of requests waiting for any of these. It performs no I/O, reads
//! no clock, draws no random numbers and starts no threads; its driver
//! (the shell) feeds it:
//!
//! - requests ([`Engine::handle`]), each named by a [`RequestId`],
//! - completions of the I/O it asked for ([`Engine::complete`]),
//! - the passage of time ([`Engine::tick`], with [`Engine::next_deadline`]),
//!
//! and after each call drains [`Engine::poll_effect`]: I/O commands to run,
//! cancellations, and replies. Buffers travel with the I/O commands that fill
//! or upload them and come back with their completions, so the memory used
//! for blocks never exceeds the pool.
//!
//! See `engine/STATES.md` for the states of a block and their transitions.

mod bytes;
mod engine;
mod error;
pub mod types;

pub use engine::{Engine, EngineStats, Occupancy};
pub use error::EngineError;
pub use types::*;
