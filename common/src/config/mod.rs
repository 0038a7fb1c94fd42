//! Configuration: the original's INI dialect and the typed configs built from it.
//!
//! Placeholder; filled in by the config work.

pub mod agent;
