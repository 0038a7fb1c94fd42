//! The `rsync` order's parameters and result.
