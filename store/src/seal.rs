//! Authenticated values for a store the proxies share but do not trust (the NATS
//! bucket): every value a proxy writes carries an HMAC-SHA256 tag under `[store] key`,
//! a secret every proxy of the fleet holds, bound to the bucket and the key it is
//! written under.
//!
//! ```text
//! value  = "d1." tag "." payload          tag: 64 lowercase hex digits
//! tag    = HMAC-SHA256(K, "deploy-store/1" 0x00 bucket 0x00 key 0x00 payload)
//! K      = the bytes of `[store] key`
//! ```
//!
//! Binding the bucket and the key name means a genuine value copied to another key
//! (another scenario's slot, another lease, the head hint) or to another fleet's bucket
//! sharing the secret does not verify. The payload stays readable (JSON) for an
//! operator's `nats kv get`; it is authenticated, not encrypted: the bucket's readers
//! see scenario versions and leases as before.
//!
//! What a tag does not stop: a writer to the bucket may delete or purge a key, or put
//! back the value a key held earlier (history is 1, so nothing remembers it was
//! replaced). A replayed lease is one that expired or was released (its expiry is in the
//! value, so an expired one is free again), a replayed version slot one that a `forget`
//! purged. Hiding values from the bucket's readers is NATS's own permissions' job.

use aws_lc_rs::hmac;

/// The domain of the tag, so that a tag made here is never valid anywhere else that
/// signs with the same secret.
const DOMAIN: &[u8] = b"deploy-store/1";

/// The prefix of a sealed value (format 1).
const MAGIC: &[u8] = b"d1.";

/// Hex digits of the tag.
const TAG_HEX: usize = 64;

/// The key every proxy of a fleet seals the shared store's values with.
#[derive(Clone)]
pub struct StoreKey(hmac::Key);

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(…)")
    }
}

/// Why a value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not in the sealed format at all (written by something that has no key).
    #[error("not a sealed value")]
    Unsealed,
    /// Sealed, but the tag does not match (another secret, another key name, altered).
    #[error("its tag does not verify under [store] key")]
    BadTag,
}

impl StoreKey {
    /// The key from `[store] key`; `None` for an empty secret (which would authenticate
    /// nothing).
    pub fn new(secret: &str) -> Option<StoreKey> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| StoreKey(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())))
    }

    fn tag(&self, bucket: &str, key: &str, payload: &[u8]) -> hmac::Tag {
        let mut cx = hmac::Context::with_key(&self.0);
        for part in [DOMAIN, bucket.as_bytes(), key.as_bytes()] {
            cx.update(part);
            cx.update(&[0]);
        }
        cx.update(payload);
        cx.sign()
    }

    /// `payload` sealed for `key` of `bucket`.
    pub fn seal(&self, bucket: &str, key: &str, payload: &[u8]) -> Vec<u8> {
        let tag = self.tag(bucket, key, payload);
        let mut out = Vec::with_capacity(MAGIC.len() + TAG_HEX + 1 + payload.len());
        out.extend_from_slice(MAGIC);
        for b in tag.as_ref() {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        out.push(b'.');
        out.extend_from_slice(payload);
        out
    }

    /// The payload of `value` read from `key` of `bucket`, if this key sealed it there.
    pub fn open<'v>(&self, bucket: &str, key: &str, value: &'v [u8]) -> Result<&'v [u8], Refused> {
        let rest = value.strip_prefix(MAGIC).ok_or(Refused::Unsealed)?;
        let (tag_hex, rest) = rest.split_at_checked(TAG_HEX).ok_or(Refused::Unsealed)?;
        let payload = rest.strip_prefix(b".").ok_or(Refused::Unsealed)?;
        let presented = unhex(tag_hex).ok_or(Refused::Unsealed)?;
        let expected = self.tag(bucket, key, payload);
        aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_ref(), &presented)
            .map_err(|_| Refused::BadTag)?;
        Ok(payload)
    }
}

/// Lowercase or uppercase hex to bytes; `None` if not hex of even length.
fn unhex(hex: &[u8]) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    hex.chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_where_it_was_written() {
        let k = StoreKey::new("fleet secret").unwrap();
        let v = k.seal("b", "v.73.0", b"{\"x\":1}");
        assert!(v.starts_with(b"d1."));
        assert_eq!(k.open("b", "v.73.0", &v), Ok(&b"{\"x\":1}"[..]));
        assert_eq!(k.open("b", "v.73.1", &v), Err(Refused::BadTag));
        assert_eq!(k.open("c", "v.73.0", &v), Err(Refused::BadTag));
        let other = StoreKey::new("another").unwrap();
        assert_eq!(other.open("b", "v.73.0", &v), Err(Refused::BadTag));
        let mut altered = v.clone();
        if let Some(last) = altered.last_mut() {
            *last = b'2';
        }
        assert_eq!(k.open("b", "v.73.0", &altered), Err(Refused::BadTag));
        for junk in [&b""[..], b"{\"x\":1}", b"d1.", b"d1.zz", &v[..v.len() - 8]] {
            assert!(k.open("b", "v.73.0", junk).is_err(), "{junk:?}");
        }
        assert!(StoreKey::new("  ").is_none());
    }
}
