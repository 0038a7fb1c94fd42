//! An error and its causes, written for a person, each message once.
//!
//! Many errors of this crate put their source's text in their own message, so that
//! `to_string()` alone (a reply body, a log field) is complete, and also return that
//! source from [`Error::source`], so that callers can inspect it. anyhow's `{:#}` writes
//! every level of the chain, which then repeats the cause:
//!
//! ```text
//! a.ini:2: [jobs] path: cannot read /no/jobs.ini: No such file or directory (os error 2): No such file or directory (os error 2)
//! ```
//!
//! [`chain`] writes the levels joined by `: ` like `{:#}`, but leaves out a cause whose
//! message the level above already ends with. The binaries print their errors with it.

use std::error::Error;
use std::fmt;

/// Displays `error` and its causes (see the module docs).
///
/// ```
/// # use deploy_common::report::chain;
/// #[derive(Debug, thiserror::Error)]
/// #[error("x.ini: cannot read: {source}")]
/// struct Read { source: std::io::Error }
/// let e = Read { source: std::io::Error::from_raw_os_error(2) };
/// assert_eq!(
///     chain(&e).to_string(),
///     "x.ini: cannot read: No such file or directory (os error 2)"
/// );
/// ```
pub fn chain<'a>(error: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(error)
}

/// The [`Display`](fmt::Display) of [`chain`].
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut above = self.0.to_string();
        f.write_str(&above)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let message = cause.to_string();
            if !above.ends_with(&message) {
                write!(f, ": {message}")?;
            }
            above = message;
            next = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("{what}: {source}")]
    struct Repeats {
        what: &'static str,
        source: io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading the configuration")]
    struct Context {
        source: Repeats,
    }

    fn enoent() -> io::Error {
        io::Error::from_raw_os_error(2)
    }

    #[test]
    fn a_cause_already_in_the_message_is_written_once() {
        let e = Context {
            source: Repeats {
                what: "a.ini: cannot read",
                source: enoent(),
            },
        };
        let text = chain(&e).to_string();
        assert_eq!(
            text,
            "loading the configuration: a.ini: cannot read: No such file or directory (os error 2)"
        );
        assert_eq!(text.matches("(os error 2)").count(), 1);
    }

    #[test]
    fn other_causes_are_joined_like_anyhow() {
        #[derive(Debug, thiserror::Error)]
        #[error("start")]
        struct Outer {
            source: Context,
        }
        let e = Outer {
            source: Context {
                source: Repeats {
                    what: "a.ini: cannot read",
                    source: enoent(),
                },
            },
        };
        assert_eq!(
            chain(&e).to_string(),
            "start: loading the configuration: a.ini: cannot read: \
             No such file or directory (os error 2)"
        );
        let plain = io::Error::other("plain");
        assert_eq!(chain(&plain).to_string(), "plain");
    }
}
