//! The legacy (v1) plain request parser and form decoder, as reached from the network
//! (a plain request, or a decrypted ssl payload).
//!
//! Invariants checked:
//! * `parse_request_bytes`, `HttpRequest::form`, `HttpRequest::path_segments` and
//!   `Form::parse` never panic on any bytes;
//! * path segments are non-empty and contain neither `/` nor `?`;
//! * header names are lower-cased and trimmed of Perl's ASCII `\s` (not of Unicode
//!   spaces, which the original kept);
//! * round trip: the form decoded from the input, re-encoded with
//!   `encode_request_escaped`, parses back to the same method, URL and form.

#![no_main]

use deploy_common::legacy::http::{encode_request_escaped, parse_request_bytes, Form};
use libfuzzer_sys::fuzz_target;

/// Perl's `\s` on a byte string, without Unicode semantics.
const PERL_SPACE: [char; 6] = [' ', '\t', '\n', '\x0b', '\x0c', '\r'];

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_request_bytes(data) {
        let _ = req.form();
        for segment in req.path_segments() {
            assert!(!segment.is_empty(), "empty path segment from {:?}", req.url);
            assert!(
                !segment.contains(['/', '?']),
                "segment {segment:?} from {:?}",
                req.url
            );
        }
        for (name, _) in &req.headers {
            assert_eq!(
                name,
                &name.to_ascii_lowercase(),
                "header name not lower-cased"
            );
            // Trimmed of Perl's `\s` on bytes (ASCII space, \t, \n, \v, \f, \r) only, as
            // the original: `str::trim` would also strip Unicode spaces such as U+00A0,
            // which the original keeps (regressions/legacy_request/header-name-nbsp).
            assert_eq!(
                name.as_str(),
                name.trim_matches(PERL_SPACE),
                "header name not trimmed"
            );
        }
    }

    let form = Form::parse(data);
    let encoded = encode_request_escaped("exec", &form);
    let reparsed = parse_request_bytes(&encoded).expect("parse of an encoded request");
    assert_eq!(reparsed.method, "POST");
    assert_eq!(reparsed.url, "/agent/exec");
    assert_eq!(reparsed.path_segments(), ["agent", "exec"]);
    assert_eq!(reparsed.form(), form, "escaped form does not round-trip");
});
