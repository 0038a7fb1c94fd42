//! Golden tests against bytes captured from the original Perl programs
//! (`shared/spec/legacy-vectors`, see its README).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::auth::{decode_time, key_cipher_md5, make_auth_key, verify_auth_key};
use super::http::{
    encode_request, encode_response, parse_request_bytes, parse_response_bytes, read_request,
    read_response, Form, HttpRequest, HttpResponse,
};
use super::ssl::{
    encode_ssl_request, encode_ssl_response, evp_bytes_to_key, open, open_request, open_response,
    read_ssl_request, read_ssl_response, seal_with_salt, unwrap_passphrase, wrap_passphrase,
    SslHead,
};
use super::Limits;
use crate::crypto::{RsaPrivateKey, RsaPublicKey};
use crate::order::{Body, Reply};

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/spec/legacy-vectors"
);

/// The agent's `key_cipher` in every capture.
const AGENT_KEY_CIPHER: &str = "agentsecret";

fn dir() -> &'static Path {
    Path::new(VECTORS)
}

fn read(name: &str) -> Vec<u8> {
    let path: PathBuf = dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn vectors() -> Vec<Value> {
    let index: Value = serde_json::from_slice(&read("vectors.json")).unwrap();
    let list = index["vectors"].as_array().unwrap().clone();
    assert_eq!(list.len(), 18);
    list
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {}", v["id"]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn form_of(v: &Value) -> Form {
    Form {
        auth_key: s(v, "auth_key").to_owned(),
        options: s(v, "options").to_owned(),
        args: s(v, "args").to_owned(),
        api_key: s(v, "api_key").to_owned(),
    }
}

/// Checks a parsed request against the vector's fields, including the auth_key time.
fn check_request(v: &Value, request: &HttpRequest) {
    let id = s(v, "id");
    assert_eq!(request.method, "POST", "{id}");
    assert_eq!(request.url, s(v, "url"), "{id}");
    assert_eq!(request.version, "1.1", "{id}");
    assert!(
        request
            .headers
            .contains(&("connection".to_owned(), "close".to_owned())),
        "{id}"
    );
    assert_eq!(request.path_segments(), ["agent", s(v, "order")], "{id}");
    let form = request.form();
    assert_eq!(form, form_of(v), "{id}");
    assert_eq!(request.body, s(v, "request_body").as_bytes(), "{id}");

    let auth_time = v["auth_time"].as_u64().unwrap();
    assert_eq!(decode_time(&form.auth_key[32..]), Some(auth_time), "{id}");
    assert_eq!(&form.auth_key[..32], s(v, "key_cipher_md5"), "{id}");
    assert_eq!(
        make_auth_key(s(v, "key_cipher"), auth_time),
        form.auth_key,
        "{id}"
    );
    assert!(
        verify_auth_key(s(v, "key_cipher"), &form.auth_key, auth_time + 59),
        "{id}"
    );
    assert!(
        !verify_auth_key(s(v, "key_cipher"), &form.auth_key, auth_time + 60),
        "{id}"
    );
    // What the agent decides: only case 05 used the wrong key.
    if s(v, "server") == "agent" {
        let accepted = verify_auth_key(AGENT_KEY_CIPHER, &form.auth_key, auth_time);
        assert_eq!(accepted, v["case_number"] != 5, "{id}");
    }
}

/// Checks a parsed response against `expected`, and that we re-encode it byte for byte.
fn check_response(v: &Value, response: &HttpResponse, ssl: bool) {
    let id = s(v, "id");
    let expected = &v["expected"];
    let code = expected["code"].as_u64().unwrap();
    assert_eq!(response.version.as_deref(), Some("1.1"), "{id}");
    assert_eq!(response.code, Some(code.to_string()), "{id}");
    assert_eq!(
        response.reason.as_deref(),
        Some(s(expected, "reason")),
        "{id}"
    );
    let headers: Vec<String> = response
        .headers
        .iter()
        .filter(|(n, _)| n != "ssl-length")
        .map(|(n, v)| format!("{n}: {v}"))
        .collect();
    let want: Vec<String> = expected["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_ascii_lowercase())
        .collect();
    let headers_lc: Vec<String> = headers.iter().map(|h| h.to_ascii_lowercase()).collect();
    assert_eq!(headers_lc, want, "{id}");
    assert_eq!(
        response.header("content-type"),
        Some(s(expected, "content_type")),
        "{id}"
    );

    let body = s(expected, "body");
    match (&response.body, body.is_empty(), ssl) {
        // Plain mode: Content-Length 0 leaves the content undefined.
        (None, true, false) => {}
        (Some(got), _, _) => assert_eq!(got, body.as_bytes(), "{id}"),
        other => panic!("{id}: body {other:?}"),
    }

    let reply = response.to_reply().unwrap();
    assert_eq!(u64::from(reply.code), code, "{id}");
    match &expected["body_json"] {
        Value::Object(map) if code == 200 => assert_eq!(reply.body, Body::Json(map.clone())),
        _ if body.is_empty() => assert_eq!(reply.body, Body::Empty, "{id}"),
        _ => assert_eq!(reply.body, Body::Text(body.to_owned()), "{id}"),
    }

    // Our encoder reproduces the original's bytes: agent JSON keeps the captured key
    // order (serde_json preserve_order); the proxy's body is text/plain pretty JSON.
    let to_encode = if s(v, "server") == "proxy" {
        Reply::error(200, body)
    } else {
        reply
    };
    let plain_name = if ssl { "response_plain" } else { "response" };
    let captured = read(s(&v["files"], plain_name));
    assert_eq!(
        String::from_utf8_lossy(&encode_response(&to_encode)),
        String::from_utf8_lossy(&captured),
        "{id}"
    );

    // What deploy-client printed for this response.
    if let Some(result) = v["client_result"].as_object() {
        let printed = &result["127.0.0.1"][s(v, "order")];
        assert_eq!(
            printed["returnCode"],
            Value::String(code.to_string()),
            "{id}"
        );
        assert_eq!(printed["returnString"], expected["reason"], "{id}");
        let content = match (&response.body, code) {
            (None, _) => Value::Null,
            (Some(b), 200) => serde_json::from_slice(b).unwrap(),
            (Some(b), _) => Value::String(String::from_utf8(b.clone()).unwrap()),
        };
        assert_eq!(printed["content"], content, "{id}");
    }
}

fn private_key(v: &Value) -> RsaPrivateKey {
    RsaPrivateKey::load(&dir().join(s(&v["ssl"], "server_private_key"))).unwrap()
}

#[tokio::test]
async fn plain_vectors() {
    let mut seen = 0;
    for v in vectors().iter().filter(|v| v["mode"] == "plain") {
        let id = s(v, "id");
        let request_bytes = read(s(&v["files"], "request"));
        assert_eq!(
            request_bytes.len() as u64,
            v["request_len"].as_u64().unwrap()
        );
        let mut reader = request_bytes.as_slice();
        let request = read_request(&mut reader, &Limits::default())
            .await
            .unwrap()
            .unwrap();
        assert!(reader.is_empty(), "{id}: unread bytes");
        check_request(v, &request);
        assert_eq!(
            parse_request_bytes(&request_bytes).unwrap(),
            request,
            "{id}"
        );
        assert_eq!(
            String::from_utf8_lossy(&encode_request(s(v, "order"), &request.form())),
            String::from_utf8_lossy(&request_bytes),
            "{id}"
        );

        let response_bytes = read(s(&v["files"], "response"));
        let mut reader = response_bytes.as_slice();
        let response = read_response(&mut reader, &Limits::default())
            .await
            .unwrap();
        assert!(reader.is_empty(), "{id}: unread bytes");
        check_response(v, &response, false);
        seen += 1;
    }
    assert_eq!(seen, 9);
}

#[tokio::test]
async fn ssl_vectors() {
    let mut seen = 0;
    for v in vectors().iter().filter(|v| v["mode"] == "ssl") {
        let id = s(v, "id");
        let ssl = &v["ssl"];
        let key = private_key(v);
        let files = &v["files"];

        // Request: frame, unwrap, derive, decrypt, re-encrypt.
        let request_bytes = read(s(files, "request"));
        let mut stream = tokio::io::join(request_bytes.as_slice(), tokio::io::sink());
        let (head, ciphertext) = read_ssl_request(&mut stream, &Limits::default())
            .await
            .unwrap()
            .unwrap();
        let aes = head.aes.clone().unwrap();
        assert_eq!(
            aes.len() as u64,
            ssl["aes_line_b64_len"].as_u64().unwrap(),
            "{id}"
        );
        assert_eq!(
            head,
            SslHead {
                aes: Some(aes.clone()),
                length: ssl["request"]["ssl_length"].as_u64().unwrap() as usize,
                who: false,
            },
            "{id}"
        );
        assert_eq!(encode_ssl_request(&aes, &ciphertext), request_bytes, "{id}");

        let passphrase = unwrap_passphrase(&key, &aes).unwrap();
        assert_eq!(hex(&passphrase), s(ssl, "passphrase_hex"), "{id}");
        let pass16: [u8; 16] = passphrase.clone().try_into().unwrap();

        let request_plain = read(s(files, "request_plain"));
        let salt: [u8; 8] = unhex(s(&ssl["request"], "salt_hex")).try_into().unwrap();
        assert_eq!(ciphertext[8..16], salt, "{id}");
        let (k, iv) = evp_bytes_to_key(&passphrase, &salt);
        assert_eq!(hex(&k), s(&ssl["request"], "key_hex"), "{id}");
        assert_eq!(hex(&iv), s(&ssl["request"], "iv_hex"), "{id}");
        assert_eq!(
            open(&passphrase, &ciphertext).unwrap(),
            request_plain,
            "{id}"
        );
        assert_eq!(
            seal_with_salt(&passphrase, &salt, &request_plain).unwrap(),
            ciphertext,
            "{id}"
        );

        let request = parse_request_bytes(&request_plain).unwrap();
        check_request(v, &request);
        assert_eq!(
            String::from_utf8_lossy(&encode_request(s(v, "order"), &request.form())),
            String::from_utf8_lossy(&request_plain),
            "{id}"
        );
        let (unwrapped, opened) = open_request(&key, &head, &ciphertext).unwrap();
        assert_eq!((unwrapped, opened), (passphrase.clone(), request));

        // Response.
        let response_bytes = read(s(files, "response"));
        let mut reader = response_bytes.as_slice();
        let (head, ciphertext) = read_ssl_response(&mut reader, &Limits::default())
            .await
            .unwrap();
        assert_eq!(
            head,
            SslHead {
                aes: None,
                length: ssl["response"]["ssl_length"].as_u64().unwrap() as usize,
                who: false,
            },
            "{id}"
        );
        assert_eq!(encode_ssl_response(&ciphertext), response_bytes, "{id}");
        let response_plain = read(s(files, "response_plain"));
        let salt: [u8; 8] = unhex(s(&ssl["response"], "salt_hex")).try_into().unwrap();
        let (k, iv) = evp_bytes_to_key(&passphrase, &salt);
        assert_eq!(hex(&k), s(&ssl["response"], "key_hex"), "{id}");
        assert_eq!(hex(&iv), s(&ssl["response"], "iv_hex"), "{id}");
        assert_eq!(
            open(&passphrase, &ciphertext).unwrap(),
            response_plain,
            "{id}"
        );
        assert_eq!(
            seal_with_salt(&passphrase, &salt, &response_plain).unwrap(),
            ciphertext,
            "{id}"
        );
        let response = parse_response_bytes(&response_plain).unwrap();
        check_response(v, &response, true);
        assert_eq!(open_response(&passphrase, &ciphertext).unwrap(), response);

        // A new wrapping of the same passphrase unwraps to it again.
        let public = RsaPublicKey::load(&dir().join(s(ssl, "server_public_key"))).unwrap();
        let rewrapped = wrap_passphrase(&public, &pass16).unwrap();
        assert_eq!(rewrapped.len(), aes.len());
        assert_ne!(rewrapped, aes, "OAEP is randomized");
        assert_eq!(unwrap_passphrase(&key, &rewrapped).unwrap(), passphrase);
        seen += 1;
    }
    assert_eq!(seen, 9);
}

#[test]
fn wrong_key_and_tampering_fail_generically() {
    let list = vectors();
    let v = list
        .iter()
        .find(|v| v["id"] == "08-proxy-exec-web.ssl")
        .unwrap();
    let request_bytes = read(s(&v["files"], "request"));
    let text = String::from_utf8_lossy(&request_bytes);
    let aes = text
        .strip_prefix("aes:")
        .and_then(|rest| rest.split("\r\n").next())
        .unwrap();
    // Encrypted to the proxy: the agent's key cannot unwrap it.
    let agent = RsaPrivateKey::load(&dir().join("agent_private.pem")).unwrap();
    let proxy = RsaPrivateKey::load(&dir().join("proxy_private.pem")).unwrap();
    assert!(unwrap_passphrase(&proxy, aes).is_ok());
    let err = unwrap_passphrase(&agent, aes).unwrap_err();
    assert_eq!(err.to_string(), "decryption failed");
    // Without padding, with line breaks: still fine (MIME::Base64 was lenient too).
    let unpadded = aes.trim_end_matches('=');
    assert!(unwrap_passphrase(&proxy, unpadded).is_ok());
    let folded = format!("{}\n{}", &aes[..100], &aes[100..]);
    assert!(unwrap_passphrase(&proxy, &folded).is_ok());
    // Garbage of every kind.
    for bad in ["", "!!!!", "QUFB", &aes[..aes.len() - 4]] {
        assert_eq!(
            unwrap_passphrase(&proxy, bad).unwrap_err().to_string(),
            "decryption failed"
        );
    }
}

#[tokio::test]
async fn every_truncation_of_every_vector_is_handled() {
    let agent = RsaPrivateKey::load(&dir().join("agent_private.pem")).unwrap();
    for v in vectors() {
        for file in v["files"].as_object().unwrap().values() {
            let bytes = read(file.as_str().unwrap());
            for cut in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
                let part = &bytes[..cut];
                let _ = parse_request_bytes(part);
                let _ = parse_response_bytes(part);
                let mut r = part;
                let _ = read_request(&mut r, &Limits::default()).await;
                let mut r = part;
                let _ = read_response(&mut r, &Limits::default()).await;
                let mut r = tokio::io::join(part, tokio::io::sink());
                if let Ok(Some((head, ct))) = read_ssl_request(&mut r, &Limits::default()).await {
                    let _ = open_request(&agent, &head, &ct);
                }
                let mut r = part;
                let _ = read_ssl_response(&mut r, &Limits::default()).await;
            }
        }
    }
}

#[test]
fn md5_of_the_documented_ciphers() {
    assert_eq!(
        key_cipher_md5("wrongsecret"),
        "9e654a7216035c3ac20cced9290d79fd"
    );
    assert_eq!(
        key_cipher_md5(AGENT_KEY_CIPHER),
        "d937582a467737061ca43eefc649e21e"
    );
}
