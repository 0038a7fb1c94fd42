//! The original's `auth_key`: a shared secret's MD5 plus an obfuscated timestamp.
//!
//! ```text
//! auth_key = hex(MD5(key_cipher))                32 lowercase hex digits
//!          ‖ reverse(d XOR 1 for each decimal digit d of the unix time)
//!
//! time 1795306120 → XOR 1 → 0684217031 → reversed → 1307124860
//! ```
//!
//! The agent accepts a key iff its first 32 characters are the MD5 of its own
//! `key_cipher` and the decoded time is within 60 s of its clock (strictly). This is no
//! real authentication (the MD5 is a fixed password-equivalent and replayable for a
//! minute); it is kept for compatibility with Perl peers only.
//!
//! Quirk kept from the original: a `key_cipher` of `""` or `"0"` (false in Perl) makes the
//! MD5 part empty, so such a key cannot authenticate anything.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use md5::{Digest, Md5};

/// How far (in seconds, exclusive) the decoded time may be from the verifier's clock.
pub const AUTH_WINDOW_SECS: u64 = 60;

/// The `key_cipher` every original program used when none was configured.
pub const DEFAULT_KEY_CIPHER: &str = "65535";

/// Length of the MD5 part.
const MD5_HEX_LEN: usize = 32;

/// Whether Perl would consider `key_cipher` false (and so produce no MD5).
fn is_broken_cipher(key_cipher: &str) -> bool {
    key_cipher.is_empty() || key_cipher == "0"
}

/// Lowercase hex MD5 of `key_cipher`, or `""` for the broken ciphers `""` and `"0"`.
pub fn key_cipher_md5(key_cipher: &str) -> String {
    if is_broken_cipher(key_cipher) {
        return String::new();
    }
    Md5::digest(key_cipher.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// XOR 1 on one digit character; anything else decodes as `1` (Perl's `int("x") ^ 1`).
fn flip_digit(c: u8) -> u8 {
    if c.is_ascii_digit() {
        ((c - b'0') ^ 1) + b'0'
    } else {
        b'1'
    }
}

/// The obfuscated form of a unix time: each digit XOR 1, reversed.
pub fn encode_time(unix_time: u64) -> String {
    unix_time
        .to_string()
        .bytes()
        .rev()
        .map(|c| char::from(flip_digit(c)))
        .collect()
}

/// Decodes the part of an `auth_key` after the MD5: reverse, each character XOR 1 (a
/// non-digit counts as `1`). `None` if empty or out of range.
pub fn decode_time(suffix: &str) -> Option<u64> {
    decode_time_bytes(suffix.as_bytes())
}

/// Builds an `auth_key` for `key_cipher` at `unix_time`, as the original client did.
pub fn make_auth_key(key_cipher: &str, unix_time: u64) -> String {
    let mut key = key_cipher_md5(key_cipher);
    key.push_str(&encode_time(unix_time));
    key
}

/// Checks an `auth_key` against `key_cipher` at time `now` (unix seconds).
///
/// The MD5 part is compared in constant time. Always false for the broken ciphers `""`
/// and `"0"`, and for keys shorter than 32 characters.
pub fn verify_auth_key(key_cipher: &str, auth_key: &str, now: u64) -> bool {
    if is_broken_cipher(key_cipher) {
        return false;
    }
    let Some((theirs, suffix)) = auth_key.as_bytes().split_at_checked(MD5_HEX_LEN) else {
        return false;
    };
    let ours = key_cipher_md5(key_cipher);
    let md5_ok = aws_lc_rs::constant_time::verify_slices_are_equal(ours.as_bytes(), theirs).is_ok();
    // Bytes, not characters: a multi-byte character counts per byte, as in Perl.
    let time_ok = decode_time_bytes(suffix).is_some_and(|t| now.abs_diff(t) < AUTH_WINDOW_SECS);
    md5_ok && time_ok
}

/// [`decode_time`] over raw bytes.
fn decode_time_bytes(suffix: &[u8]) -> Option<u64> {
    if suffix.is_empty() {
        return None;
    }
    suffix.iter().rev().try_fold(0u64, |acc, &c| {
        acc.checked_mul(10)?
            .checked_add(u64::from(flip_digit(c) - b'0'))
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    const AGENT_MD5: &str = "d937582a467737061ca43eefc649e21e";

    #[test]
    fn spec_example() {
        assert_eq!(key_cipher_md5("agentsecret"), AGENT_MD5);
        assert_eq!(encode_time(1795306120), "1307124860");
        assert_eq!(decode_time("1307124860"), Some(1795306120));
        assert_eq!(
            make_auth_key("agentsecret", 1795306120),
            format!("{AGENT_MD5}1307124860")
        );
        assert_eq!(
            key_cipher_md5(DEFAULT_KEY_CIPHER),
            "3c9b5f1cd6a030bcb7bed9eac80589fb"
        );
    }

    #[test]
    fn window_is_strictly_under_sixty_seconds() {
        let t = 1_795_306_120;
        let key = make_auth_key("agentsecret", t);
        for offset in [-59i64, 0, 59] {
            assert!(verify_auth_key(
                "agentsecret",
                &key,
                t.saturating_add_signed(offset)
            ));
        }
        for offset in [-61i64, -60, 60, 61] {
            assert!(!verify_auth_key(
                "agentsecret",
                &key,
                t.saturating_add_signed(offset)
            ));
        }
        assert!(!verify_auth_key("wrongsecret", &key, t));
    }

    #[test]
    fn broken_ciphers_never_verify() {
        for broken in ["", "0"] {
            let key = make_auth_key(broken, 1000);
            assert_eq!(key, encode_time(1000));
            assert!(!verify_auth_key(broken, &key, 1000));
            // Not even with a 32-character prefix of anything.
            let padded = format!("{}{}", "0".repeat(32), encode_time(1000));
            assert!(!verify_auth_key(broken, &padded, 1000));
        }
        // "00" is a real cipher in Perl (a true string).
        assert!(verify_auth_key("00", &make_auth_key("00", 5), 5));
    }

    #[test]
    fn odd_suffixes() {
        // A non-digit decodes as 1, like Perl's int("x") ^ 1.
        assert_eq!(decode_time("x"), Some(1));
        assert_eq!(decode_time("1x"), Some(10));
        assert_eq!(decode_time(""), None);
        assert_eq!(decode_time(&"8".repeat(30)), None, "overflow");
        // Leading zeros (encoded as trailing 1s) are harmless.
        assert_eq!(decode_time("13071248601111"), Some(1795306120));
        let key = format!("{AGENT_MD5}13071248601111");
        assert!(verify_auth_key("agentsecret", &key, 1795306120));
        // Short, empty and non-ASCII keys.
        assert!(!verify_auth_key("agentsecret", AGENT_MD5, 0));
        assert!(!verify_auth_key("agentsecret", "", 0));
        assert!(!verify_auth_key("agentsecret", &"é".repeat(40), 0));
        let split = format!("{}é1307124860", &AGENT_MD5[..31]);
        assert!(!verify_auth_key("agentsecret", &split, 1795306120));
    }
}
