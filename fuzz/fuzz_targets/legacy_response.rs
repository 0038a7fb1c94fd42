//! The legacy (v1) response parser (client side, also the decrypted ssl payload) and
//! the response encoder.
//!
//! Invariants checked:
//! * `parse_response_bytes` and `HttpResponse::to_reply` never panic on any bytes;
//! * `to_reply` is `Some` exactly when the status code parses as a `u16`, and keeps it;
//! * round trip: `Reply::error(400, text)` encoded with `encode_response` parses back to
//!   code `400`, reason `Bad Request`, the same body bytes and a matching
//!   `Content-Length`, and `to_reply` gives back the same reply.

#![no_main]

use deploy_common::legacy::http::{encode_response, parse_response_bytes};
use deploy_common::order::{Body, Reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = parse_response_bytes(data) {
        let reply = resp.to_reply();
        let code = resp.code.as_deref().and_then(|c| c.parse::<u16>().ok());
        assert_eq!(reply.as_ref().map(|r| r.code), code);
        let _ = resp.header("content-type");
    }

    let text = String::from_utf8_lossy(data);
    let reply = Reply::error(400, text.clone());
    let encoded = encode_response(&reply);
    let parsed = parse_response_bytes(&encoded).expect("parse of an encoded response");
    assert_eq!(parsed.code.as_deref(), Some("400"));
    assert_eq!(parsed.reason.as_deref(), Some("Bad Request"));
    assert_eq!(
        parsed.body.as_deref(),
        Some(text.as_bytes()),
        "body changed"
    );
    assert_eq!(
        parsed.header("content-length"),
        Some(text.len().to_string().as_str())
    );
    let back = parsed.to_reply().expect("reply from an encoded response");
    let want = if text.is_empty() {
        Reply::empty(400)
    } else {
        Reply {
            code: 400,
            body: Body::Text(text.into_owned()),
        }
    };
    assert_eq!(back, want);
});
