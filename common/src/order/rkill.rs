//! The `rkill` order's parameters and result.
