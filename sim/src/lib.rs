//! Deterministic simulation of blobcache (see SIMULATION.md).
