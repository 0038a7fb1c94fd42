//! The original Perl deploy's wire protocol ("v1"), byte-compatible with unmodified Perl
//! agents, proxies and clients.
//!
//! One TCP connection carries exactly one request and one response; the server closes the
//! connection after answering. There is no negotiation: both ends are configured for
//! "plain" or "ssl" mode. A server can still tell them apart by peeking at the first
//! bytes of a buffered reader before calling [`http::read_request`] or
//! [`ssl::read_ssl_request`]: a v1 ssl request starts with `aes:` (or the never-used
//! `WHO` line), a v1 plain request with a method name, and our own v2 protocol with a
//! 0x00 byte, which no v1 peer sends.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`http`] | plain requests and responses: readers, in-memory parsers, encoders, forms |
//! | [`auth`] | `auth_key` generation and checking |
//! | [`ssl`] | the "ssl" envelope: passphrase wrapping, sealing, framing |
//!
//! All readers take an [`AsyncBufRead`](tokio::io::AsyncBufRead), run under one total
//! deadline and size [`Limits`], and fail with [`LegacyError`]; nothing here panics on
//! any input.
//!
//! # Plain mode
//!
//! The request is an HTTP/1.1-looking POST whose form values are *not* URL-encoded by the
//! original client (see [`http::encode_request`] and [`http::encode_request_escaped`]):
//!
//! ```text
//! POST /agent/<order> HTTP/1.1\r\n
//! Connection: close\r\n
//! Content-Length: <N>\r\n
//! \r\n
//! auth_key=<K>&options=<O>&args=<A>&api_key=<P>          (N bytes, no trailing CRLF)
//! ```
//!
//! The response ([`http::encode_response`]):
//!
//! ```text
//! HTTP/1.1 <code> <reason>\r\n                  403's reason is "Permission Denied"
//! Content-Type: <application/json|text/plain>; charset=utf-8\r\n
//! Content-Length: <N>\r\n
//! Connection: close\r\n
//! \r\n
//! <N bytes>
//! ```
//!
//! Agent JSON bodies use the original's layout, with string values:
//!
//! ```text
//! {\n"return": "true",\n"process": [\n"123",\n"456"\n]\n}        empty array: [\n\n]
//! ```
//!
//! Readers ([`http::read_request`], [`http::read_response`]) follow the original's
//! lenient line parser: bare LF is accepted, the request line is searched for anywhere in
//! any line (`WORD TOKEN HTTP/d.d`), other lines with a `:` are headers (trimmed, names
//! lower-cased, last duplicate wins), others are ignored; the body is `Content-Length`
//! bytes. Unlike the original, every read has a total deadline and size limits
//! ([`Limits`]).
//!
//! That leniency is for compatibility with v1 peers only: a header line shaped like a
//! request line redefines the method and URL, so this parser must never front anything
//! but the v1 wire. The proxy's HTTP/JSON API is served by hyper (deploy-proxy's `api`
//! module).
//!
//! # `auth_key`
//!
//! ```text
//! auth_key = hex(MD5(key_cipher)) ‖ reverse(each decimal digit of unix time XOR 1)
//! d937582a467737061ca43eefc649e21e 1307124860    → time 1795306120, valid for |now−t| < 60 s
//! ```
//!
//! See [`auth`].
//!
//! # "ssl" mode (not TLS)
//!
//! ```text
//! client → server:  aes:<base64 RSA-OAEP-SHA1(passphrase)>\r\n
//!                   ssl-length:<L>\r\n
//!                   \r\n
//!                   <L bytes: seal(passphrase, complete plain request)>
//! server → client:  ssl-length:<L>\r\n
//!                   \r\n
//!                   <L bytes: seal(passphrase, complete plain response)>
//!
//! seal(p, m) = "Salted__" ‖ salt(8) ‖ AES-256-CBC-PKCS7(key, iv, m)
//!              key ‖ iv = (D1 ‖ D2 ‖ D3)[..48],  D1 = MD5(p ‖ salt),  Di = MD5(Di−1 ‖ p ‖ salt)
//! ```
//!
//! The passphrase is 16 random bytes chosen by the client; the same passphrase protects
//! the response, each message with a fresh salt. Decrypted payloads are split at the first
//! `\r\n\r\n`; the body is everything after it ([`http::parse_request_bytes`],
//! [`http::parse_response_bytes`]). A header-block line `WHO` asks the server for the
//! banner `DEPLOY-SSL\r\n` (no known peer sends it). There is no MAC: this mode is only as
//! good as the original's and exists for compatibility. See [`ssl`].

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::future::Future;
use std::time::Duration;

pub mod auth;
pub mod http;
pub mod ssl;

#[cfg(test)]
mod tests;

/// Bounds on what a reader accepts from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Deadline for reading one whole request or response (headers and body), measured
    /// from the call. The original waited up to `socket_timeout` (default 5 s) *per line*,
    /// which let a slow peer hold a worker forever.
    pub timeout: Duration,
    /// Longest header line, terminator included.
    pub max_line: usize,
    /// Most header lines (request or status line included) before the blank line.
    pub max_headers: usize,
    /// Largest `Content-Length` accepted. The ssl envelope's `ssl-length` may exceed it by
    /// [`ssl::SSL_OVERHEAD`] (the encrypted header block and padding).
    pub max_body: usize,
}

impl Default for Limits {
    /// 5 s (the original's `socket_timeout` default), 8 KiB lines, 100 headers, 1 MiB body.
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(5),
            max_line: 8 * 1024,
            max_headers: 100,
            max_body: 1024 * 1024,
        }
    }
}

/// Errors of the legacy codec.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// The peer did not deliver a complete message within [`Limits::timeout`].
    #[error("timed out reading from the peer")]
    Timeout,
    /// A line, the header block, a body or an ssl payload exceeded its [`Limits`].
    #[error("{0} too large")]
    TooLarge(&'static str),
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a message of this protocol (or the peer is in the other mode).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Decryption or key unwrapping failed. Deliberately without detail: every failure
    /// (bad base64, RSA, header, length, padding) looks the same.
    #[error("decryption failed")]
    Crypto,
}

/// Runs `fut` under the total deadline of `limits`.
async fn with_deadline<T>(
    limits: &Limits,
    fut: impl Future<Output = Result<T, LegacyError>>,
) -> Result<T, LegacyError> {
    tokio::time::timeout(limits.timeout, fut)
        .await
        .unwrap_or(Err(LegacyError::Timeout))
}
