//! The original's "ssl" envelope (not TLS): an RSA-wrapped passphrase and OpenSSL
//! `enc`-style AES-256-CBC messages.
//!
//! ```text
//! request:   aes:<base64 RSA-OAEP-SHA1(passphrase), no line breaks>\r\n
//!            ssl-length:<L>\r\n
//!            \r\n
//!            <L bytes: seal(passphrase, plain request)>
//! response:  ssl-length:<L>\r\n
//!            \r\n
//!            <L bytes: seal(passphrase, plain response)>
//!
//! seal(p, m) = "Salted__" ‖ salt (8 random bytes) ‖ AES-256-CBC(key, iv, m ‖ PKCS#7 padding)
//! D1 = MD5(p ‖ salt), D2 = MD5(D1 ‖ p ‖ salt), D3 = MD5(D2 ‖ p ‖ salt)
//! key = D1 ‖ D2, iv = D3                    (OpenSSL EVP_BytesToKey, MD5, 1 round)
//! ```
//!
//! The passphrase is 16 random bytes from the client; the response reuses it with a fresh
//! salt. This equals `openssl enc -aes-256-cbc -md md5 -pass …`.
//!
//! There is no MAC, so this is malleable and, wherever a peer reacts differently to bad
//! padding, a padding oracle. Kept only for Perl peers; [`open`] at least checks the
//! padding in constant time and reports every failure as the same
//! [`LegacyError::Crypto`].

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use aws_lc_rs::cipher::{
    DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey, AES_256,
};
use aws_lc_rs::iv::FixedLength;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use md5::{Digest, Md5};
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};

use super::http::{self, parse_header, read_body, read_line, HttpRequest, HttpResponse};
use super::{with_deadline, LegacyError, Limits};
use crate::crypto::{RsaPrivateKey, RsaPublicKey};

/// The header OpenSSL and Crypt::CBC put before the salt.
pub const MAGIC: &[u8; 8] = b"Salted__";

/// Salt length.
pub const SALT_LEN: usize = 8;

/// Passphrase length the original client draws.
pub const PASSPHRASE_LEN: usize = 16;

/// How much larger than [`Limits::max_body`] an `ssl-length` may be: room for the
/// encrypted header block, the salt header and padding.
pub const SSL_OVERHEAD: usize = 64 * 1024;

/// The banner a server writes when it sees a `WHO` line.
pub const WHO_BANNER: &[u8] = b"DEPLOY-SSL\r\n";

const BLOCK: usize = 16;

/// OpenSSL's `EVP_BytesToKey` with MD5 and one round: the AES-256 key and the CBC IV for
/// `passphrase` and `salt`.
pub fn evp_bytes_to_key(passphrase: &[u8], salt: &[u8; SALT_LEN]) -> ([u8; 32], [u8; 16]) {
    let round = |previous: &[u8]| -> [u8; 16] {
        let mut md5 = Md5::new();
        md5.update(previous);
        md5.update(passphrase);
        md5.update(salt);
        md5.finalize().into()
    };
    let d1 = round(&[]);
    let d2 = round(&d1);
    let d3 = round(&d2);
    let mut key = [0u8; 32];
    let (first, second) = key.split_at_mut(16);
    first.copy_from_slice(&d1);
    second.copy_from_slice(&d2);
    (key, d3)
}

/// A fresh random passphrase, as the original client drew for each connection.
pub fn new_passphrase() -> Result<[u8; PASSPHRASE_LEN], LegacyError> {
    let mut passphrase = [0u8; PASSPHRASE_LEN];
    aws_lc_rs::rand::fill(&mut passphrase).map_err(|_| LegacyError::Crypto)?;
    Ok(passphrase)
}

/// Encrypts `plaintext` under `passphrase` with a fresh random salt.
pub fn seal(passphrase: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, LegacyError> {
    let mut salt = [0u8; SALT_LEN];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| LegacyError::Crypto)?;
    seal_with_salt(passphrase, &salt, plaintext)
}

/// Encrypts `plaintext` under `passphrase` with the given salt (deterministic; for tests
/// against recorded messages).
pub fn seal_with_salt(
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, LegacyError> {
    let (key, iv) = evp_bytes_to_key(passphrase, salt);
    let pad = BLOCK - plaintext.len() % BLOCK;
    let mut out = Vec::with_capacity(MAGIC.len() + SALT_LEN + plaintext.len() + pad);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(salt);
    let header = out.len();
    out.extend_from_slice(plaintext);
    // pad is 1..=16, so the cast is exact.
    out.resize(out.len() + pad, pad as u8);
    let key = UnboundCipherKey::new(&AES_256, &key)
        .and_then(EncryptingKey::cbc)
        .map_err(|_| LegacyError::Crypto)?;
    let body = out.get_mut(header..).ok_or(LegacyError::Crypto)?;
    key.less_safe_encrypt(body, EncryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| LegacyError::Crypto)?;
    Ok(out)
}

/// Decrypts a sealed message. Every failure (no `Salted__` header, a length that is not
/// a whole number of blocks, bad PKCS#7 padding) is the same [`LegacyError::Crypto`];
/// the padding is checked in constant time. (The original did not check padding at all.)
pub fn open(passphrase: &[u8], data: &[u8]) -> Result<Vec<u8>, LegacyError> {
    let (magic, rest) = data
        .split_at_checked(MAGIC.len())
        .ok_or(LegacyError::Crypto)?;
    let (salt, ciphertext) = rest.split_at_checked(SALT_LEN).ok_or(LegacyError::Crypto)?;
    let salt: &[u8; SALT_LEN] = salt.try_into().map_err(|_| LegacyError::Crypto)?;
    if magic != MAGIC || ciphertext.is_empty() || ciphertext.len() % BLOCK != 0 {
        return Err(LegacyError::Crypto);
    }
    let (key, iv) = evp_bytes_to_key(passphrase, salt);
    let key = UnboundCipherKey::new(&AES_256, &key)
        .and_then(DecryptingKey::cbc)
        .map_err(|_| LegacyError::Crypto)?;
    let mut buf = ciphertext.to_vec();
    let len = key
        .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| LegacyError::Crypto)?
        .len();
    buf.truncate(len);
    let unpadded = pkcs7_unpadded_len(&buf).ok_or(LegacyError::Crypto)?;
    buf.truncate(unpadded);
    Ok(buf)
}

/// The length without PKCS#7 padding, or `None` if the padding is invalid. Runs in time
/// independent of the padding's value and validity (given the length).
fn pkcs7_unpadded_len(buf: &[u8]) -> Option<usize> {
    let tail_start = buf.len().checked_sub(BLOCK)?;
    let tail = buf.get(tail_start..)?;
    let pad = *tail.last()?;
    // bad != 0 iff invalid; all arithmetic branch-free on the secret bytes.
    let mut bad: u8 = ct_is_zero(pad) | ct_less(16, pad);
    for (i, &b) in tail.iter().rev().enumerate() {
        // i < pad: this byte belongs to the padding and must equal pad.
        let in_pad = ct_less(i as u8, pad);
        bad |= in_pad & ct_not_zero(b ^ pad);
    }
    if bad != 0 {
        return None;
    }
    buf.len().checked_sub(usize::from(pad))
}

/// 0xff if `x == 0`, else 0.
fn ct_is_zero(x: u8) -> u8 {
    !ct_not_zero(x)
}

/// 0xff if `x != 0`, else 0.
fn ct_not_zero(x: u8) -> u8 {
    let x = u16::from(x);
    // (x | -x) has its top bit set iff x != 0.
    let top = ((x | x.wrapping_neg()) >> 15) as u8;
    top.wrapping_neg()
}

/// 0xff if `a < b`, else 0.
fn ct_less(a: u8, b: u8) -> u8 {
    let diff = u16::from(a).wrapping_sub(u16::from(b));
    ((diff >> 15) as u8).wrapping_neg()
}

/// Encrypts the passphrase to the server's key (OAEP-SHA1, as Perl's
/// `Crypt::OpenSSL::RSA` default) and base64-encodes it without line breaks, for the
/// `aes:` line.
pub fn wrap_passphrase(
    key: &RsaPublicKey,
    passphrase: &[u8; PASSPHRASE_LEN],
) -> Result<String, LegacyError> {
    let block = key
        .encrypt_oaep_sha1(passphrase)
        .map_err(|_| LegacyError::Crypto)?;
    Ok(STANDARD.encode(block))
}

/// Base64 that ignores whether padding is present, like MIME::Base64 did.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes and decrypts an `aes:` value with the server's private key. Any non-empty
/// passphrase length is accepted (Perl peers send 16 bytes). Every failure is
/// [`LegacyError::Crypto`].
pub fn unwrap_passphrase(key: &RsaPrivateKey, b64: &str) -> Result<Vec<u8>, LegacyError> {
    let compact: Vec<u8> = b64.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let block = LENIENT_BASE64
        .decode(compact)
        .map_err(|_| LegacyError::Crypto)?;
    let passphrase = key
        .decrypt_oaep_sha1(&block)
        .map_err(|_| LegacyError::Crypto)?;
    if passphrase.is_empty() {
        return Err(LegacyError::Crypto);
    }
    Ok(passphrase)
}

/// `aes:<b64>\r\nssl-length:<L>\r\n\r\n<ciphertext>`.
pub fn encode_ssl_request(aes_b64: &str, ciphertext: &[u8]) -> Vec<u8> {
    let mut out = format!("aes:{aes_b64}\r\nssl-length:{}\r\n\r\n", ciphertext.len()).into_bytes();
    out.extend_from_slice(ciphertext);
    out
}

/// `ssl-length:<L>\r\n\r\n<ciphertext>`.
pub fn encode_ssl_response(ciphertext: &[u8]) -> Vec<u8> {
    let mut out = format!("ssl-length:{}\r\n\r\n", ciphertext.len()).into_bytes();
    out.extend_from_slice(ciphertext);
    out
}

/// The plaintext header block of an ssl message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslHead {
    /// The `aes:` value (requests): the wrapped passphrase, base64.
    pub aes: Option<String>,
    /// The `ssl-length:` value: how many ciphertext bytes follow.
    pub length: usize,
    /// Whether a `WHO` line was seen (a request reader has already answered it).
    pub who: bool,
}

/// Reads a header block (lines until an empty one) and then `ssl-length` bytes; `on_who`
/// handles each `WHO` line as it arrives.
async fn read_ssl_message<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limits: &Limits,
    mut on_who: impl AsyncWhoHandler<R>,
) -> Result<Option<(SslHead, Vec<u8>)>, LegacyError> {
    let mut head = SslHead::default();
    let mut length = None;
    let mut lines = 0usize;
    loop {
        let Some(line) = read_line(reader, limits.max_line).await? else {
            if lines == 0 {
                return Ok(None);
            }
            return Err(LegacyError::Malformed(
                "connection closed inside the ssl header".to_owned(),
            ));
        };
        lines += 1;
        if lines > limits.max_headers {
            return Err(LegacyError::TooLarge("ssl header block"));
        }
        if let Some((name, value)) = parse_header(&line) {
            match name.as_str() {
                "aes" => head.aes = Some(value),
                "ssl-length" => length = Some(value),
                _ => {}
            }
        } else if line.is_empty() {
            break;
        } else if line.eq_ignore_ascii_case(b"WHO") {
            head.who = true;
            on_who.answer(reader).await?;
        }
    }
    let Some(length) = length else {
        return Err(LegacyError::Malformed(
            "no ssl-length header (is the peer in plain mode?)".to_owned(),
        ));
    };
    let length: usize = length
        .parse()
        .map_err(|_| LegacyError::Malformed(format!("bad ssl-length {length:?}")))?;
    if length > limits.max_body.saturating_add(SSL_OVERHEAD) {
        return Err(LegacyError::TooLarge("ssl payload"));
    }
    head.length = length;
    let ciphertext = read_body(reader, length).await?;
    Ok(Some((head, ciphertext)))
}

/// What to do on a `WHO` line.
trait AsyncWhoHandler<R> {
    /// Reacts to one `WHO` line.
    async fn answer(&mut self, stream: &mut R) -> Result<(), LegacyError>;
}

/// Writes the banner back on the same stream.
struct SendBanner;

impl<S: AsyncWrite + Unpin> AsyncWhoHandler<S> for SendBanner {
    async fn answer(&mut self, stream: &mut S) -> Result<(), LegacyError> {
        stream.write_all(WHO_BANNER).await?;
        stream.flush().await?;
        Ok(())
    }
}

/// Only records the line.
struct Ignore;

impl<R> AsyncWhoHandler<R> for Ignore {
    async fn answer(&mut self, _stream: &mut R) -> Result<(), LegacyError> {
        Ok(())
    }
}

/// Reads an ssl request (server side) within `limits`: header lines (`aes:`,
/// `ssl-length:`, anything else with a `:` ignored) up to the empty line, answering a
/// `WHO` line with [`WHO_BANNER`] at once, then exactly `ssl-length` bytes.
///
/// `Ok(None)` if the peer closed before sending anything. A header block without
/// `ssl-length` (a plain-mode client) is [`LegacyError::Malformed`]. The stream is
/// typically a `BufReader<TcpStream>`, which also writes.
pub async fn read_ssl_request<S: AsyncBufRead + AsyncWrite + Unpin>(
    stream: &mut S,
    limits: &Limits,
) -> Result<Option<(SslHead, Vec<u8>)>, LegacyError> {
    with_deadline(limits, read_ssl_message(stream, limits, SendBanner)).await
}

/// Reads an ssl response (client side) within `limits`, like [`read_ssl_request`] but a
/// `WHO` line is only recorded. EOF before any byte, or a reply without `ssl-length`
/// (a plain-mode server), is [`LegacyError::Malformed`].
pub async fn read_ssl_response<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limits: &Limits,
) -> Result<(SslHead, Vec<u8>), LegacyError> {
    with_deadline(limits, read_ssl_message(reader, limits, Ignore))
        .await?
        .ok_or_else(|| LegacyError::Malformed("connection closed without a reply".to_owned()))
}

/// Server side: unwraps the passphrase of `head` with `key`, decrypts `ciphertext` and
/// parses the plain request in it. Returns the passphrase too, for sealing the reply.
pub fn open_request(
    key: &RsaPrivateKey,
    head: &SslHead,
    ciphertext: &[u8],
) -> Result<(Vec<u8>, HttpRequest), LegacyError> {
    let aes = head.aes.as_deref().ok_or(LegacyError::Crypto)?;
    let passphrase = unwrap_passphrase(key, aes)?;
    let plain = open(&passphrase, ciphertext)?;
    let request = http::parse_request_bytes(&plain)?;
    Ok((passphrase, request))
}

/// Server side, taking the same steps whatever the bytes: unwraps the passphrase of
/// `head` with `key` (a random one takes its place when that fails), decrypts
/// `ciphertext` with it and parses the plain request in it.
///
/// Returns the passphrase to seal the reply with (the client's, or the random one: the
/// reply is then the same size but nobody can read it) and the request, or
/// [`LegacyError::Crypto`] for every failure alike. The caller must answer every failure
/// the same way (same reply, same length), or bad padding becomes an oracle again. Only a
/// failing random generator is an error of its own.
pub fn open_request_uniform(
    key: &RsaPrivateKey,
    head: &SslHead,
    ciphertext: &[u8],
) -> Result<(Vec<u8>, Result<HttpRequest, LegacyError>), LegacyError> {
    let decoy = new_passphrase()?.to_vec();
    let unwrapped = head
        .aes
        .as_deref()
        .ok_or(LegacyError::Crypto)
        .and_then(|aes| unwrap_passphrase(key, aes));
    let (passphrase, unwrapped) = match unwrapped {
        Ok(passphrase) => (passphrase, true),
        Err(_) => (decoy, false),
    };
    let request = open(&passphrase, ciphertext)
        .and_then(|plain| http::parse_request_bytes(&plain).map_err(|_| LegacyError::Crypto))
        .and_then(|request| match unwrapped {
            true => Ok(request),
            false => Err(LegacyError::Crypto),
        });
    Ok((passphrase, request))
}

/// Client side: decrypts a response with the connection's passphrase and parses it.
pub fn open_response(passphrase: &[u8], ciphertext: &[u8]) -> Result<HttpResponse, LegacyError> {
    let plain = open(passphrase, ciphertext)?;
    http::parse_response_bytes(&plain)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_length() {
        let pass = b"0123456789abcdef";
        for len in 0..70 {
            let msg: Vec<u8> = (0..len as u8).collect();
            let sealed = seal(pass, &msg).unwrap();
            assert_eq!(sealed.len(), 16 + (len / 16 + 1) * 16);
            assert_eq!(&sealed[..8], MAGIC);
            assert_eq!(open(pass, &sealed).unwrap(), msg);
            assert_ne!(sealed, seal(pass, &msg).unwrap(), "fresh salt");
            // A wrong passphrase yields garbage (whose padding is valid now and then).
            assert_ne!(open(b"other", &sealed).ok(), Some(msg));
        }
    }

    #[test]
    fn tampering_and_truncation_fail_cleanly() {
        let pass = b"0123456789abcdef";
        let sealed = seal_with_salt(pass, &[7; 8], b"hello world, this is a test").unwrap();
        for cut in 0..sealed.len() {
            assert!(matches!(
                open(pass, &sealed[..cut]),
                Err(LegacyError::Crypto)
            ));
        }
        // Flipping a bit of the last block's predecessor changes the padding byte.
        let mut bad = sealed.clone();
        let n = bad.len();
        bad[n - 17] ^= 0x01;
        assert!(matches!(open(pass, &bad), Err(LegacyError::Crypto)));
        let mut bad = sealed.clone();
        bad[0] = b's';
        assert!(matches!(open(pass, &bad), Err(LegacyError::Crypto)));
        let mut long = sealed.clone();
        long.push(0);
        assert!(matches!(open(pass, &long), Err(LegacyError::Crypto)));
    }

    #[test]
    fn padding_check() {
        let mut block = [0u8; 16];
        for pad in 0..=255u8 {
            block[15] = pad;
            for b in &mut block[..15] {
                *b = pad;
            }
            let want = (1..=16).contains(&pad).then(|| 16 - usize::from(pad));
            assert_eq!(pkcs7_unpadded_len(&block), want, "pad {pad}");
        }
        let mut block = [4u8; 16];
        block[13] = 3;
        assert_eq!(pkcs7_unpadded_len(&block), None);
        block[13] = 4;
        block[11] = 0;
        assert_eq!(pkcs7_unpadded_len(&block), Some(12));
        assert_eq!(pkcs7_unpadded_len(&[1u8; 15]), None);
        for (a, b) in [
            (0u8, 0u8),
            (0, 1),
            (1, 0),
            (15, 16),
            (16, 16),
            (255, 0),
            (0, 255),
        ] {
            assert_eq!(ct_less(a, b) == 0xff, a < b, "{a} < {b}");
        }
        for x in 0..=255u8 {
            assert_eq!(ct_is_zero(x) == 0xff, x == 0);
        }
    }

    #[test]
    fn framing() {
        assert_eq!(encode_ssl_response(b"xy"), b"ssl-length:2\r\n\r\nxy");
        assert_eq!(
            encode_ssl_request("QQ==", b"xy"),
            b"aes:QQ==\r\nssl-length:2\r\n\r\nxy"
        );
    }

    #[tokio::test]
    async fn reader_answers_who() {
        let (client, server) = tokio::io::duplex(1024);
        let mut server = tokio::io::BufReader::new(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        client_write
            .write_all(b"who\r\naes: QQ==\r\nSSL-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
        let (head, ct) = read_ssl_request(&mut server, &Limits::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            head,
            SslHead {
                aes: Some("QQ==".into()),
                length: 3,
                who: true
            }
        );
        assert_eq!(ct, b"abc");
        let mut banner = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut client_read, &mut banner)
            .await
            .unwrap();
        assert_eq!(&banner, WHO_BANNER);
    }

    #[tokio::test]
    async fn reader_errors() {
        let read = |b: &'static [u8]| async move {
            let mut r = b;
            read_ssl_response(&mut r, &Limits::default()).await
        };
        assert!(matches!(read(b"").await, Err(LegacyError::Malformed(_))));
        let plain = b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(read(plain).await, Err(LegacyError::Malformed(_))));
        assert!(matches!(
            read(b"ssl-length:5\r\n\r\nab").await,
            Err(LegacyError::Malformed(_))
        ));
        assert!(matches!(
            read(b"ssl-length:x\r\n\r\n").await,
            Err(LegacyError::Malformed(_))
        ));
        assert!(matches!(
            read(b"ssl-length:99999999\r\n\r\n").await,
            Err(LegacyError::TooLarge(_))
        ));
        assert!(matches!(
            read(b"ssl-length:1\r\n").await,
            Err(LegacyError::Malformed(_))
        ));
        let (head, ct) = read(b"ssl-length:0\r\n\r\n").await.unwrap();
        assert_eq!((head.length, ct.len()), (0, 0));
    }
}

#[cfg(test)]
mod send_check {
    #[allow(dead_code)]
    fn futures_are_send(
        stream: &mut tokio::io::BufReader<tokio::net::TcpStream>,
        limits: &super::Limits,
    ) {
        fn is_send<T: Send>(_: &T) {}
        is_send(&super::read_ssl_request(stream, limits));
        is_send(&super::read_ssl_response(stream, limits));
        is_send(&super::super::http::read_request(stream, limits));
    }
}
