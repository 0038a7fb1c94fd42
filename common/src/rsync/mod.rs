//! rsync
