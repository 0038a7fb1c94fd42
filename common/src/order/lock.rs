//! The `lock` and `unlock` orders: a named lock with a lease, held on every host of a
//! cluster by one locker at a time (orgalorg's cluster lock, without `flock(1)` and
//! without a session that must stay open: peers spec §1.4, §7).
//!
//! ```text
//! request  {"order":"lock","options":"web","lease":30,"holder":"alice@build1:4242","token":"<32 hex>"}
//! 200      {"return":"true","lock":"web","holder":"alice@build1:4242","token":"…","lease":"30","expires":"1700000030","renewed":"false"}
//! 423      {"return":"false","lock":"web","holder":"bob@build2:77","expires":"1700000012"}
//!
//! request  {"order":"unlock","options":"web","token":"…"}
//! 200      {"return":"true","lock":"web","released":"true"}      ("false": it was not held)
//! 403      "lock web is held by bob@build2:77 until 1700000012 (unix time); the token does not match"
//! ```
//!
//! * `options` is the lock's name ([`LockName`]); empty means [`DEFAULT_NAME`].
//! * `lease` is in seconds, 1 to [`MAX_LEASE`], default [`DEFAULT_LEASE`]. A lease that is
//!   not renewed before it runs out expires, and the next locker takes the lock over.
//! * `token` ([`Token`]) is the proof of ownership. The locker chooses it (deploy-client
//!   draws 128 random bits and uses the same token on every host, so one request serves
//!   the whole cluster); an agent given none draws one and returns it. `lock` with the
//!   token of the live lease renews it (the heartbeat) and answers `renewed: "true"`;
//!   `renewed: "false"` means the lock was free (or had expired) and was taken afresh, so
//!   a heartbeat that gets it knows the lock was not held continuously.
//! * `holder` is a label for people (`user@host:pid`), shown to whoever is refused. It is
//!   not part of the proof: a locker that knows the token (a resumed session) may renew
//!   or release under another label.
//! * `unlock` needs the token of the live lease; without it the agent answers 403 naming
//!   the holder. There is no forced release over the wire: a lease runs out by itself.
//!
//! The token travels in [`Request::token`](super::Request::token), not in `options`, so
//! that it is never written to an access log.

use super::{flag, object};
use serde_json::{Map, Value};
use std::fmt;

/// The lock taken when `options` is empty.
pub const DEFAULT_NAME: &str = "deploy";
/// Lease in seconds when the request gives none.
pub const DEFAULT_LEASE: u64 = 30;
/// The longest lease an agent grants, in seconds.
pub const MAX_LEASE: u64 = 3600;
/// The longest holder label, in bytes.
pub const MAX_HOLDER: usize = 256;
/// The longest lock name.
const MAX_NAME: usize = 64;
/// Token length bounds (characters).
const TOKEN_LEN: std::ops::RangeInclusive<usize> = 16..=128;

/// Why a `lock`/`unlock` request is malformed (a 400 reply).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockArgError {
    /// The name is not 1–64 of `A-Z a-z 0-9 . _ -`, or starts with a dot.
    #[error("bad lock name {0:?}: 1 to 64 of A-Z a-z 0-9 . _ - (not starting with '.')")]
    Name(String),
    /// The token is not 16–128 of `A-Z a-z 0-9 _ -`.
    #[error("bad lock token: 16 to 128 of A-Z a-z 0-9 _ -")]
    Token,
    /// The lease is 0 or above [`MAX_LEASE`].
    #[error("lease must be 1 to {MAX_LEASE} seconds, not {0}")]
    Lease(u64),
    /// The holder label is too long or has control characters.
    #[error("bad holder: at most {MAX_HOLDER} bytes without control characters")]
    Holder,
    /// No randomness for a fresh token.
    #[error("cannot draw a random lock token")]
    Random,
}

/// A validated lock name: 1–64 of `A-Z a-z 0-9 . _ -`, not starting with `.` (so it is
/// a plain file name, never `.`, `..` or one of the store's hidden files).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(String);

impl LockName {
    /// Validates `options` as a name; empty means [`DEFAULT_NAME`].
    pub fn parse(options: &str) -> Result<LockName, LockArgError> {
        if options.is_empty() {
            return Ok(LockName(DEFAULT_NAME.to_owned()));
        }
        let valid = options.len() <= MAX_NAME
            && !options.starts_with('.')
            && options
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(LockName(options.to_owned()))
        } else {
            Err(LockArgError::Name(options.to_owned()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lock token: 16–128 of `A-Z a-z 0-9 _ -`. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Validates a token sent by a locker.
    pub fn parse(text: &str) -> Result<Token, LockArgError> {
        let valid = TOKEN_LEN.contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if valid {
            Ok(Token(text.to_owned()))
        } else {
            Err(LockArgError::Token)
        }
    }

    /// 128 random bits from the operating system, as 32 lowercase hex digits.
    pub fn generate() -> Result<Token, LockArgError> {
        let mut bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| LockArgError::Random)?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares in constant time (tokens are secrets).
    pub fn matches(&self, other: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(self.0.as_bytes(), other.as_bytes())
            .is_ok()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Validates a requested lease: `None` is [`DEFAULT_LEASE`].
pub fn lease(requested: Option<u64>) -> Result<u64, LockArgError> {
    match requested.unwrap_or(DEFAULT_LEASE) {
        lease @ 1..=MAX_LEASE => Ok(lease),
        other => Err(LockArgError::Lease(other)),
    }
}

/// Validates a holder label (at most [`MAX_HOLDER`] bytes, no control characters).
pub fn check_holder(holder: &str) -> Result<(), LockArgError> {
    if holder.len() <= MAX_HOLDER && !holder.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(LockArgError::Holder)
    }
}

/// What a locker gets with a 200: the lock is theirs until `expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The lock.
    pub lock: String,
    /// The holder label recorded.
    pub holder: String,
    /// The token that proves ownership.
    pub token: String,
    /// The lease granted, in seconds.
    pub lease: u64,
    /// When the lease runs out, Unix time in seconds (the agent's clock).
    pub expires: u64,
    /// True if this extended a live lease of the same token; false if the lock was free.
    pub renewed: bool,
}

impl Grant {
    /// The 200 body.
    pub fn to_body(&self) -> Map<String, Value> {
        object([
            ("return", flag(true)),
            ("lock", Value::String(self.lock.clone())),
            ("holder", Value::String(self.holder.clone())),
            ("token", Value::String(self.token.clone())),
            ("lease", Value::String(self.lease.to_string())),
            ("expires", Value::String(self.expires.to_string())),
            ("renewed", flag(self.renewed)),
        ])
    }

    /// Reads a 200 body; `None` if it is not a grant (e.g. a proxy's document).
    pub fn from_body(body: &Map<String, Value>) -> Option<Grant> {
        if text(body, "return")? != "true" {
            return None;
        }
        Some(Grant {
            lock: text(body, "lock")?.to_owned(),
            holder: text(body, "holder")?.to_owned(),
            token: text(body, "token")?.to_owned(),
            lease: text(body, "lease")?.parse().ok()?,
            expires: text(body, "expires")?.parse().ok()?,
            renewed: text(body, "renewed")? == "true",
        })
    }
}

/// Who holds a lock, as a refused locker is told (423).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBy {
    /// The lock.
    pub lock: String,
    /// The holder label.
    pub holder: String,
    /// When its lease runs out unless renewed, Unix time in seconds; 0 for a lock held
    /// by an SSH session (no lease: it lasts as long as the session).
    pub expires: u64,
}

impl HeldBy {
    /// The 423 body.
    pub fn to_body(&self) -> Map<String, Value> {
        object([
            ("return", flag(false)),
            ("lock", Value::String(self.lock.clone())),
            ("holder", Value::String(self.holder.clone())),
            ("expires", Value::String(self.expires.to_string())),
        ])
    }

    /// Reads a 423 body.
    pub fn from_body(body: &Map<String, Value>) -> Option<HeldBy> {
        Some(HeldBy {
            lock: text(body, "lock")?.to_owned(),
            holder: text(body, "holder")?.to_owned(),
            expires: text(body, "expires")?.parse().ok()?,
        })
    }

    /// The 423 reply naming the holder.
    pub fn into_reply(self) -> crate::order::Reply {
        crate::order::Reply {
            code: 423,
            body: crate::order::Body::Json(self.to_body()),
        }
    }

    /// The 403 text of an `unlock` without the right token.
    pub fn wrong_token(&self) -> String {
        format!("{self}; the token does not match")
    }
}

impl fmt::Display for HeldBy {
    /// `lock web is held by bob@build2:77 until 1700000012 (unix time)`; with `expires`
    /// 0 (a lock held by an SSH session, which has no lease) `… held by bob@build2:77
    /// (for as long as its session lasts)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.expires == 0 {
            return write!(
                f,
                "lock {} is held by {} (for as long as its session lasts)",
                self.lock, self.holder
            );
        }
        write!(
            f,
            "lock {} is held by {} until {} (unix time)",
            self.lock, self.holder, self.expires
        )
    }
}

/// The 200 body of `unlock`: `released` is false if the lock was not held.
pub fn released(lock: &str, released: bool) -> Map<String, Value> {
    object([
        ("return", flag(true)),
        ("lock", Value::String(lock.to_owned())),
        ("released", flag(released)),
    ])
}

fn text<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(LockName::parse("").unwrap().as_str(), "deploy");
        assert_eq!(
            LockName::parse("web-1.db_x").unwrap().as_str(),
            "web-1.db_x"
        );
        assert!(LockName::parse(&"a".repeat(64)).is_ok());
        for bad in ["..", ".hidden", "a/b", "a b", "x,y", "é", &"a".repeat(65)] {
            assert_eq!(
                LockName::parse(bad),
                Err(LockArgError::Name(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn tokens() {
        let t = Token::generate().unwrap();
        assert_eq!(t.as_str().len(), 32);
        assert_eq!(Token::parse(t.as_str()).unwrap(), t);
        assert_ne!(Token::generate().unwrap(), t);
        assert!(t.matches(t.as_str()));
        assert!(!t.matches("0123456789abcdef0123456789abcdef"));
        assert!(!t.matches(""));
        assert_eq!(format!("{t:?}"), "Token(…)");
        for bad in [
            "short",
            "has space in it 123",
            &"a".repeat(129),
            "abcdefghijklmnop/",
        ] {
            assert_eq!(Token::parse(bad), Err(LockArgError::Token), "{bad}");
        }
    }

    #[test]
    fn leases_and_holders() {
        assert_eq!(lease(None), Ok(DEFAULT_LEASE));
        assert_eq!(lease(Some(1)), Ok(1));
        assert_eq!(lease(Some(MAX_LEASE)), Ok(MAX_LEASE));
        assert_eq!(lease(Some(0)), Err(LockArgError::Lease(0)));
        assert_eq!(lease(Some(3601)), Err(LockArgError::Lease(3601)));
        assert!(check_holder("alice@build1:4242").is_ok());
        assert!(check_holder("a\nb").is_err());
        assert!(check_holder(&"x".repeat(257)).is_err());
    }

    #[test]
    fn bodies_round_trip() {
        let grant = Grant {
            lock: "web".into(),
            holder: "alice@b:1".into(),
            token: "t".repeat(32),
            lease: 30,
            expires: 1_700_000_030,
            renewed: false,
        };
        let body = grant.to_body();
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            format!(
                r#"{{"return":"true","lock":"web","holder":"alice@b:1","token":"{}","lease":"30","expires":"1700000030","renewed":"false"}}"#,
                "t".repeat(32)
            )
        );
        assert_eq!(Grant::from_body(&body), Some(grant));
        let held = HeldBy {
            lock: "web".into(),
            holder: "bob@c:2".into(),
            expires: 1_700_000_012,
        };
        assert_eq!(HeldBy::from_body(&held.to_body()), Some(held.clone()));
        assert_eq!(Grant::from_body(&held.to_body()), None);
        assert_eq!(
            held.wrong_token(),
            "lock web is held by bob@c:2 until 1700000012 (unix time); the token does not match"
        );
        assert_eq!(
            serde_json::to_string(&released("web", true)).unwrap(),
            r#"{"return":"true","lock":"web","released":"true"}"#
        );
    }
}
