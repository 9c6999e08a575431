//! The sans-IO block cache engine.
