//! The v2 message codec (the JSON inside every sealed record).
//!
//! Invariants checked:
//! * `Message::decode` never panics on any bytes;
//! * round trip: a decoded message encodes to JSON that decodes to an equal message,
//!   and encoding is a fixed point after one round (`encode(decode(encode(m)))` equals
//!   `encode(m)`).

#![no_main]

use deploy_common::wire::message::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::decode(data) else {
        return;
    };
    let encoded = message.encode();
    let decoded = Message::decode(&encoded).unwrap_or_else(|e| {
        panic!(
            "re-encoded message does not decode: {e}\nmessage: {message:?}\njson: {}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(
        decoded,
        message,
        "round trip changed the message; json: {}",
        String::from_utf8_lossy(&encoded)
    );
    assert_eq!(decoded.encode(), encoded, "encoding is not stable");
});
