//! The `rlist` order's parameters and result.
