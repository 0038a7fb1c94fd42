//! The v2 handshake and key schedule.
//!
//! Handshake frames (plaintext, each inside a [`super::frame`]):
//!
//! ```text
//! ClientHello    = 0x01 | version (0x02) | flags | x25519_pub[32] | nonce[32] | time u64 BE
//!                  | wrapped_len u16 BE | wrapped[wrapped_len]
//!                  flags bit 0: `wrapped` holds RSA-OAEP-SHA256(secret[32]) for the agent's key
//! ServerHello    = 0x02 | version (0x02) | flags | x25519_pub[32] | nonce[32] | confirm_s[32]
//!                  flags bit 0: the agent unwrapped `secret` with its RSA key
//! ClientFinished = 0x03 | confirm_c[32]
//! Error          = 0x7F | code u16 BE | UTF-8 message
//! ```
//!
//! Key schedule (HKDF-SHA256, HMAC-SHA256):
//!
//! ```text
//! psk       = SHA-256("deploy v2 psk" | key_cipher)
//! th        = SHA-256(ClientHello | ServerHello without confirm_s)
//! prk       = HKDF-Extract(salt = psk, ikm = X25519(eph_c, eph_s) | secret)   (secret = 32 zero bytes if not wrapped)
//! k_c2s     = HKDF-Expand(prk, "deploy v2 c2s" | th, 32)
//! k_s2c     = HKDF-Expand(prk, "deploy v2 s2c" | th, 32)
//! k_confirm = HKDF-Expand(prk, "deploy v2 confirm" | th, 32)
//! confirm_s = HMAC(k_confirm, "server" | th)
//! confirm_c = HMAC(k_confirm, "client" | th)
//! ```

use super::connection::SecureConnection;
use super::frame::{read_frame, write_frame, MAX_HANDSHAKE_FRAME};
use super::{WireError, MAGIC};
use crate::crypto::keys::{RsaPrivateKey, RsaPublicKey};
use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::{digest, hkdf, hmac, rand};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest accepted difference between the client's and the agent's clocks.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

const VERSION: u8 = 2;
const T_CLIENT_HELLO: u8 = 0x01;
const T_SERVER_HELLO: u8 = 0x02;
const T_CLIENT_FINISHED: u8 = 0x03;
const T_ERROR: u8 = 0x7F;
const FLAG_WRAPPED: u8 = 1;
/// Length of a ServerHello up to (not including) `confirm_s`.
const SERVER_HELLO_PREFIX: usize = 3 + 32 + 32;

/// What the client brings to a handshake.
pub struct ClientParams<'a> {
    /// The agent's shared secret.
    pub key_cipher: &'a str,
    /// The agent's RSA public key, if the client pins it.
    pub pinned: Option<&'a RsaPublicKey>,
    /// The client's clock, Unix seconds.
    pub now: u64,
}

/// What the agent brings to a handshake.
pub struct ServerParams<'a> {
    /// The shared secret clients must know.
    pub key_cipher: &'a str,
    /// The agent's RSA private key, if it has one.
    pub private_key: Option<&'a RsaPrivateKey>,
    /// The agent's clock, Unix seconds.
    pub now: u64,
}

/// Session keys derived by both sides.
pub(crate) struct Keys {
    pub(crate) c2s: [u8; 32],
    pub(crate) s2c: [u8; 32],
    pub(crate) confirm: [u8; 32],
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn random<const N: usize>() -> Result<[u8; N], WireError> {
    let mut out = [0u8; N];
    rand::fill(&mut out).map_err(|_| WireError::Handshake("no randomness".into()))?;
    Ok(out)
}

fn psk(key_cipher: &str) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"deploy v2 psk");
    ctx.update(key_cipher.as_bytes());
    ctx.finish()
}

pub(crate) fn schedule(
    key_cipher: &str,
    dh: &[u8],
    secret: &[u8; 32],
    th: &[u8],
) -> Result<Keys, WireError> {
    let psk = psk(key_cipher);
    let mut ikm = Vec::with_capacity(dh.len() + 32);
    ikm.extend_from_slice(dh);
    ikm.extend_from_slice(secret);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, psk.as_ref()).extract(&ikm);
    let expand = |label: &[u8]| -> Result<[u8; 32], WireError> {
        let mut out = [0u8; 32];
        prk.expand(&[label, th], Len32)
            .and_then(|okm| okm.fill(&mut out))
            .map_err(|_| WireError::Handshake("key derivation".into()))?;
        Ok(out)
    };
    Ok(Keys {
        c2s: expand(b"deploy v2 c2s")?,
        s2c: expand(b"deploy v2 s2c")?,
        confirm: expand(b"deploy v2 confirm")?,
    })
}

pub(crate) fn confirm(keys: &Keys, role: &[u8], th: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &keys.confirm);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(role);
    ctx.update(th);
    ctx.sign()
}

fn verify_confirm(keys: &Keys, role: &[u8], th: &[u8], tag: &[u8]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &keys.confirm);
    let mut msg = Vec::with_capacity(role.len() + th.len());
    msg.extend_from_slice(role);
    msg.extend_from_slice(th);
    hmac::verify(&key, &msg, tag).is_ok()
}

fn transcript(client_hello: &[u8], server_prefix: &[u8]) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(client_hello);
    ctx.update(server_prefix);
    ctx.finish()
}

fn agree(private: EphemeralPrivateKey, peer: &[u8]) -> Result<Vec<u8>, WireError> {
    agreement::agree_ephemeral(
        private,
        UnparsedPublicKey::new(&X25519, peer),
        WireError::Handshake("bad key share".into()),
        |dh| Ok(dh.to_vec()),
    )
}

/// A small cursor over a handshake payload that never panics.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed("handshake message too short".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn byte(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

/// Parses an Error frame into [`WireError::Refused`].
fn refused(payload: &[u8]) -> WireError {
    let mut c = Cursor(payload);
    let _ = c.byte();
    match c.array::<2>() {
        Ok(code) => WireError::Refused {
            code: u16::from_be_bytes(code),
            message: String::from_utf8_lossy(c.0).into_owned(),
        },
        Err(e) => e,
    }
}

/// Writes an Error frame and flushes; used by the agent to refuse a handshake.
pub async fn send_error<S: AsyncWrite + Unpin>(
    stream: &mut S,
    code: u16,
    message: &str,
) -> Result<(), WireError> {
    let mut payload = vec![T_ERROR];
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(message.as_bytes());
    write_frame(stream, &payload).await?;
    stream.flush().await?;
    Ok(())
}

async fn expect_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    kind: u8,
) -> Result<Vec<u8>, WireError> {
    let (_, payload) = read_frame(stream, MAX_HANDSHAKE_FRAME)
        .await?
        .ok_or(WireError::Closed)?;
    match payload.first() {
        Some(&t) if t == kind => Ok(payload),
        Some(&T_ERROR) => Err(refused(&payload)),
        _ => Err(WireError::Malformed(format!(
            "expected handshake message {kind:#04x}"
        ))),
    }
}

/// Runs the client side of the handshake on a fresh connection.
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    params: ClientParams<'_>,
) -> Result<SecureConnection<S>, WireError> {
    let rng_fail = |_| WireError::Handshake("no randomness".into());
    let eph =
        EphemeralPrivateKey::generate(&X25519, &rand::SystemRandom::new()).map_err(rng_fail)?;
    let eph_pub = eph.compute_public_key().map_err(rng_fail)?;
    let nonce: [u8; 32] = random()?;
    let secret: [u8; 32] = match params.pinned {
        Some(_) => random()?,
        None => [0u8; 32],
    };

    let mut hello = vec![T_CLIENT_HELLO, VERSION, 0];
    hello.extend_from_slice(eph_pub.as_ref());
    hello.extend_from_slice(&nonce);
    hello.extend_from_slice(&params.now.to_be_bytes());
    if let Some(key) = params.pinned {
        let wrapped = key
            .encrypt_oaep_sha256(&secret)
            .map_err(|e| WireError::Handshake(e.to_string()))?;
        let len = u16::try_from(wrapped.len())
            .map_err(|_| WireError::Handshake("RSA key too large".into()))?;
        if let Some(flags) = hello.get_mut(2) {
            *flags |= FLAG_WRAPPED;
        }
        hello.extend_from_slice(&len.to_be_bytes());
        hello.extend_from_slice(&wrapped);
    } else {
        hello.extend_from_slice(&0u16.to_be_bytes());
    }

    let mut first = MAGIC.to_vec();
    first.extend_from_slice(&super::frame::header(hello.len())?);
    first.extend_from_slice(&hello);
    stream.write_all(&first).await?;
    stream.flush().await?;

    let server_hello = expect_frame(&mut stream, T_SERVER_HELLO).await?;
    let mut c = Cursor(&server_hello);
    let prefix = c.take(SERVER_HELLO_PREFIX)?;
    let mut p = Cursor(prefix);
    let _type = p.byte()?;
    if p.byte()? != VERSION {
        return Err(WireError::Malformed("unsupported protocol version".into()));
    }
    let flags = p.byte()?;
    let server_pub: [u8; 32] = p.array()?;
    let tag: [u8; 32] = c.array()?;
    if params.pinned.is_some() && flags & FLAG_WRAPPED == 0 {
        return Err(WireError::Refused {
            code: 401,
            message: "agent did not use its RSA key, but the client pins one".into(),
        });
    }

    let th = transcript(&hello, prefix);
    let dh = agree(eph, &server_pub)?;
    let keys = schedule(params.key_cipher, &dh, &secret, th.as_ref())?;
    if !verify_confirm(&keys, b"server", th.as_ref(), &tag) {
        return Err(WireError::Refused {
            code: 401,
            message: match params.pinned {
                Some(_) => "authentication failed: wrong key_cipher, or the agent does not hold the pinned RSA key".into(),
                None => "authentication failed: wrong key_cipher".into(),
            },
        });
    }
    let mut finished = vec![T_CLIENT_FINISHED];
    finished.extend_from_slice(confirm(&keys, b"client", th.as_ref()).as_ref());
    // Not flushed: it leaves together with the first request.
    write_frame(&mut stream, &finished).await?;
    SecureConnection::new(stream, &keys.c2s, &keys.s2c)
}

/// Runs the agent side of the handshake. The caller has already seen the first byte of
/// [`MAGIC`]; this reads and checks all of it. On failure an Error frame has been sent
/// where the peer deserves one, and the error says why.
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    params: ServerParams<'_>,
) -> Result<SecureConnection<S>, WireError> {
    let mut magic = [0u8; 8];
    stream
        .read_exact(&mut magic)
        .await
        .map_err(super::frame::eof_is_closed)?;
    if &magic != MAGIC {
        send_error(&mut stream, 400, "unsupported protocol").await?;
        return Err(WireError::Malformed("bad magic".into()));
    }
    let hello = expect_frame(&mut stream, T_CLIENT_HELLO).await?;
    match server_keys(&hello, &params) {
        Ok((server_hello, keys, th)) => {
            write_frame(&mut stream, &server_hello).await?;
            stream.flush().await?;
            let finished = expect_frame(&mut stream, T_CLIENT_FINISHED).await?;
            let tag = finished.get(1..).unwrap_or_default();
            if !verify_confirm(&keys, b"client", th.as_ref(), tag) {
                send_error(&mut stream, 401, "authentication failed").await?;
                return Err(WireError::Refused {
                    code: 401,
                    message: "client failed authentication".into(),
                });
            }
            SecureConnection::new(stream, &keys.s2c, &keys.c2s)
        }
        Err((code, message)) => {
            send_error(&mut stream, code, &message).await?;
            Err(WireError::Refused { code, message })
        }
    }
}

type ServerKeys = (Vec<u8>, Keys, digest::Digest);

fn server_keys(hello: &[u8], params: &ServerParams<'_>) -> Result<ServerKeys, (u16, String)> {
    let malformed = |e: WireError| (400, e.to_string());
    let mut c = Cursor(hello);
    let _type = c.byte().map_err(malformed)?;
    if c.byte().map_err(malformed)? != VERSION {
        return Err((400, "unsupported protocol version".into()));
    }
    let flags = c.byte().map_err(malformed)?;
    let client_pub: [u8; 32] = c.array().map_err(malformed)?;
    let _nonce: [u8; 32] = c.array().map_err(malformed)?;
    let time = u64::from_be_bytes(c.array().map_err(malformed)?);
    let wrapped_len = u16::from_be_bytes(c.array().map_err(malformed)?) as usize;
    let wrapped = c.take(wrapped_len).map_err(malformed)?;
    if !c.0.is_empty() {
        return Err((400, "trailing bytes in ClientHello".into()));
    }
    let skew = params.now.abs_diff(time);
    if skew > MAX_SKEW.as_secs() {
        return Err((
            401,
            format!("clock skew of {skew} s between client and agent (limit 60 s)"),
        ));
    }
    let mut secret = [0u8; 32];
    let mut server_flags = 0;
    if flags & FLAG_WRAPPED != 0 {
        let key = params.private_key.ok_or((
            400,
            "this agent has no RSA key (ssl_private_key); do not pin one".to_string(),
        ))?;
        let plain = key
            .decrypt_oaep_sha256(wrapped)
            .map_err(|_| (401, "authentication failed".to_string()))?;
        if plain.len() != 32 {
            return Err((401, "authentication failed".into()));
        }
        secret.copy_from_slice(&plain);
        server_flags |= FLAG_WRAPPED;
    }

    let fail = |_| (500, "key exchange failed".to_string());
    let eph = EphemeralPrivateKey::generate(&X25519, &rand::SystemRandom::new()).map_err(fail)?;
    let eph_pub = eph.compute_public_key().map_err(fail)?;
    let nonce: [u8; 32] = random().map_err(|e| (500, e.to_string()))?;
    let mut server_hello = vec![T_SERVER_HELLO, VERSION, server_flags];
    server_hello.extend_from_slice(eph_pub.as_ref());
    server_hello.extend_from_slice(&nonce);
    let th = transcript(hello, &server_hello);
    let dh = agree(eph, &client_pub).map_err(|e| (400, e.to_string()))?;
    let keys =
        schedule(params.key_cipher, &dh, &secret, th.as_ref()).map_err(|e| (500, e.to_string()))?;
    server_hello.extend_from_slice(confirm(&keys, b"server", th.as_ref()).as_ref());
    Ok((server_hello, keys, th))
}
