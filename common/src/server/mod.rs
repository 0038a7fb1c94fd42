//! The preforking server core shared by the agent and the proxy.
//!
//! Support modules for the master process, used in this order at start-up: [`log`]
//! (one global tracing subscriber, safe across `fork()`), [`pidfile`], [`privs`]
//! (privilege drop after binding, umask) and [`title`] (process titles as seen by `ps`).

pub mod log;
pub mod pidfile;
pub mod privs;
pub mod title;
