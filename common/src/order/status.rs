//! The `status` order's parameters and result.
