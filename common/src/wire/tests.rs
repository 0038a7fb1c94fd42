//! Handshake and record tests over in-memory pipes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::connection::SecureConnection;
use super::handshake::{client, server, ClientParams, ServerParams};
use super::message::Message;
use super::WireError;
use crate::crypto::keys::{RsaPrivateKey, RsaPublicKey};
use crate::order::Request;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/spec/legacy-vectors"
);

fn keys() -> (RsaPrivateKey, RsaPublicKey) {
    (
        RsaPrivateKey::load(format!("{VECTORS}/agent_private.pem").as_ref()).unwrap(),
        RsaPublicKey::load(format!("{VECTORS}/agent_public.pem").as_ref()).unwrap(),
    )
}

type Pair = (
    Result<SecureConnection<DuplexStream>, WireError>,
    Result<SecureConnection<DuplexStream>, WireError>,
);

async fn pair(
    client_key: &str,
    server_key: &str,
    pin: Option<&RsaPublicKey>,
    private: Option<&RsaPrivateKey>,
    client_now: u64,
) -> Pair {
    let (a, b) = duplex(1 << 16);
    let c = client(
        a,
        ClientParams {
            key_cipher: client_key,
            pinned: pin,
            now: client_now,
        },
    );
    let s = server(
        b,
        ServerParams {
            key_cipher: server_key,
            private_key: private,
            now: 1_000_000,
        },
    );
    tokio::join!(c, s)
}

fn request(id: u64) -> Message {
    Message::Request {
        id,
        request: Request {
            order: "status".into(),
            options: "web".into(),
            ..Request::default()
        },
    }
}

#[tokio::test]
async fn psk_only_round_trip() {
    let (c, s) = pair("secret", "secret", None, None, 1_000_000).await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    c.send(&request(1)).await.unwrap();
    assert_eq!(s.recv().await.unwrap(), Some(request(1)));
    s.send(&request(2)).await.unwrap();
    assert_eq!(c.recv().await.unwrap(), Some(request(2)));
}

#[tokio::test]
async fn pinned_rsa_round_trip() {
    let (private, public) = keys();
    let (c, s) = pair("k", "k", Some(&public), Some(&private), 1_000_030).await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    c.send(&request(7)).await.unwrap();
    assert_eq!(s.recv().await.unwrap(), Some(request(7)));
}

#[tokio::test]
async fn wrong_key_cipher_is_refused_on_both_sides() {
    let (c, s) = pair("wrong", "right", None, None, 1_000_000).await;
    assert!(
        matches!(c, Err(WireError::Refused { code: 401, .. })),
        "{:?}",
        c.err()
    );
    assert!(s.is_err());
}

#[tokio::test]
async fn pin_without_agent_key_is_refused() {
    let (_, public) = keys();
    let (c, _s) = pair("k", "k", Some(&public), None, 1_000_000).await;
    assert!(matches!(c, Err(WireError::Refused { code: 400, .. })));
}

#[tokio::test]
async fn clock_skew_is_refused() {
    let (c, _s) = pair("k", "k", None, None, 1_000_061).await;
    match c {
        Err(WireError::Refused { code: 401, message }) => assert!(message.contains("skew")),
        other => panic!("{:?}", other.err()),
    }
}

/// A man in the middle that pretends to be the agent without its private key cannot
/// complete a handshake with a pinning client.
#[tokio::test]
async fn impostor_without_private_key_fails_pinned_client() {
    let (_, public) = keys();
    let other = RsaPrivateKey::load(format!("{VECTORS}/proxy_private.pem").as_ref()).unwrap();
    let (c, _s) = pair("k", "k", Some(&public), Some(&other), 1_000_000).await;
    assert!(matches!(c, Err(WireError::Refused { code: 401, .. })));
}

/// Captures the raw records one side sends.
async fn sealed_records(messages: &[Message]) -> Vec<Vec<u8>> {
    let (a, mut raw) = duplex(1 << 20);
    let mut sender = SecureConnection::new(a, &[1; 32], &[2; 32]).unwrap();
    let mut out = Vec::new();
    for m in messages {
        sender.send(m).await.unwrap();
        let mut head = [0u8; 4];
        raw.read_exact(&mut head).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
        raw.read_exact(&mut body).await.unwrap();
        let mut record = head.to_vec();
        record.extend_from_slice(&body);
        out.push(record);
    }
    out
}

/// Delivers raw bytes to a receiver and returns what it makes of each record.
async fn deliver(records: &[&[u8]]) -> Vec<Result<Option<Message>, WireError>> {
    let (mut raw, b) = duplex(1 << 20);
    let mut receiver = SecureConnection::new(b, &[2; 32], &[1; 32]).unwrap();
    for r in records {
        raw.write_all(r).await.unwrap();
    }
    drop(raw);
    let mut results = Vec::new();
    for _ in records {
        let r = receiver.recv().await;
        let stop = r.is_err();
        results.push(r);
        if stop {
            break;
        }
    }
    results
}

/// Records replayed, reordered or altered on the wire are rejected.
#[tokio::test]
async fn replayed_reordered_and_tampered_records_fail() {
    let recs = sealed_records(&[request(1), request(2)]).await;
    let ok = deliver(&[&recs[0], &recs[1]]).await;
    assert_eq!(ok[0].as_ref().unwrap(), &Some(request(1)));
    assert_eq!(ok[1].as_ref().unwrap(), &Some(request(2)));

    let replay = deliver(&[&recs[0], &recs[0]]).await;
    assert!(replay[0].is_ok());
    assert!(matches!(replay[1], Err(WireError::BadRecord)));

    let reorder = deliver(&[&recs[1]]).await;
    assert!(matches!(reorder[0], Err(WireError::BadRecord)));

    let mut tampered = recs[0].clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 1;
    assert!(matches!(
        deliver(&[&tampered]).await[0],
        Err(WireError::BadRecord)
    ));

    // A record sealed for one direction is useless in the other.
    let (mut raw, b) = duplex(1 << 20);
    let mut same_side = SecureConnection::new(b, &[1; 32], &[2; 32]).unwrap();
    raw.write_all(&recs[0]).await.unwrap();
    assert!(matches!(same_side.recv().await, Err(WireError::BadRecord)));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The vectors printed in docs/protocol.md: fixed inputs to the key schedule and one
/// sealed record. Any change to the derivation or the record format breaks this test.
#[tokio::test]
async fn documented_vectors() {
    use super::handshake::{confirm, schedule};
    let th = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"transcript");
    let keys = schedule("agentsecret", &[1u8; 32], &[2u8; 32], th.as_ref()).unwrap();
    let got = [
        hex(th.as_ref()),
        hex(&keys.c2s),
        hex(&keys.s2c),
        hex(&keys.confirm),
        hex(confirm(&keys, b"server", th.as_ref()).as_ref()),
        hex(confirm(&keys, b"client", th.as_ref()).as_ref()),
    ];
    let record = {
        let (a, mut raw) = duplex(1 << 16);
        let mut conn = SecureConnection::new(a, &keys.c2s, &keys.s2c).unwrap();
        conn.send(&Message::Request {
            id: 1,
            request: Request {
                order: "exec".into(),
                options: "service:echo,hello".into(),
                ..Request::default()
            },
        })
        .await
        .unwrap();
        drop(conn);
        let mut out = Vec::new();
        raw.read_to_end(&mut out).await.unwrap();
        hex(&out)
    };
    println!("{got:#?}\n{record}");
    let expected = include_str!("../../../docs/protocol-vectors.txt");
    let mut lines = expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty());
    for value in got.iter().chain(std::iter::once(&record)) {
        let line = lines.next().unwrap_or_default();
        let want = line
            .split_once('=')
            .map(|(_, v)| v.trim())
            .unwrap_or_default();
        assert_eq!(value, want, "vector {line}");
    }
}
