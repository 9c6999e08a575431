//! Deterministic simulation of blobcache (see SIMULATION.md).
//!
//! The world (two mounts of the real shell and engine over one simulated
//! container, concurrent clients, an outside writer, injected faults) only
//! exists in builds with `--cfg madsim`, where `tokio` is the simulator.
//! A normal build keeps the parts that do not need the simulator: the
//! swarm parameters and the trace.

pub mod params;
pub mod trace;

#[cfg(madsim)]
pub mod runner;
#[cfg(madsim)]
pub mod scenarios;
#[cfg(madsim)]
pub mod store;
#[cfg(madsim)]
pub mod world;
