//! Privileges (temporary).
#![allow(missing_docs)]
use nix::unistd::{Gid, Uid};

#[derive(Debug, thiserror::Error)]
#[error("privs")]
pub struct PrivError;

pub fn drop_privileges(
    _user: Option<&str>,
    _group: Option<&str>,
) -> Result<Option<(Uid, Gid)>, PrivError> {
    Ok(None)
}

pub fn set_umask(mode: u32) {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mode));
}
