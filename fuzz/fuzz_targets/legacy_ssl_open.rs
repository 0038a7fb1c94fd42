//! The legacy "ssl" envelope: decrypt (`open`), then parse (`open_response`).
//!
//! Input layout: the first 16 bytes are the passphrase (fewer if the input is shorter),
//! the rest is the sealed message.
//!
//! Invariants checked:
//! * `open` and `open_response` return `Ok` or `Err` on any bytes, never panic;
//! * `open_response` succeeds exactly when `open` does, and then equals
//!   `parse_response_bytes` of the plaintext;
//! * round trip: `seal` then `open` with the same passphrase gives back the input;
//!   `seal_with_salt` is deterministic and opens too; the sealed length is the header
//!   plus the PKCS#7-padded plaintext;
//! * decrypt-then-parse: `open_response` of a sealed message equals
//!   `parse_response_bytes` of the plaintext.

#![no_main]

use deploy_common::legacy::http::parse_response_bytes;
use deploy_common::legacy::ssl::{
    open, open_response, seal, seal_with_salt, MAGIC, PASSPHRASE_LEN, SALT_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (passphrase, rest) = data.split_at(data.len().min(PASSPHRASE_LEN));

    // Arbitrary ciphertext: must fail cleanly or decrypt.
    let opened = open(passphrase, rest);
    let response = open_response(passphrase, rest);
    match (&opened, &response) {
        (Ok(plain), Ok(resp)) => {
            assert_eq!(resp, &parse_response_bytes(plain).expect("parse"));
        }
        (Err(_), Err(_)) => {}
        _ => panic!("open and open_response disagree: {opened:?} vs {response:?}"),
    }

    // Round trip with a random salt.
    let sealed = seal(passphrase, rest).expect("seal");
    let padded = (rest.len() / 16 + 1) * 16;
    assert_eq!(sealed.len(), MAGIC.len() + SALT_LEN + padded);
    assert!(sealed.starts_with(MAGIC));
    assert_eq!(
        open(passphrase, &sealed).expect("open of a sealed message"),
        rest
    );

    // Deterministic sealing with a salt taken from the input.
    let mut salt = [0u8; SALT_LEN];
    for (s, b) in salt.iter_mut().zip(rest.iter().rev()) {
        *s = *b;
    }
    let fixed = seal_with_salt(passphrase, &salt, rest).expect("seal_with_salt");
    assert_eq!(
        fixed,
        seal_with_salt(passphrase, &salt, rest).expect("again")
    );
    assert_eq!(
        open(passphrase, &fixed).expect("open of a fixed-salt message"),
        rest
    );

    // Decrypt-then-parse on a real envelope.
    let resp = open_response(passphrase, &sealed).expect("open_response of a sealed message");
    assert_eq!(resp, parse_response_bytes(rest).expect("parse"));
});
