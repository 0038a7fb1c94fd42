//! The `exec` order's parameters and result.
