//! Node sets (`web[01-20]`, `!x`): arbitrary text as a host list.
//!
//! Invariants checked:
//! * `parse_list` never panics, whatever the text, and never exceeds its cap;
//! * every name it yields is non-empty and has no separator (comma outside brackets,
//!   blank) left in it, and a list of names without brackets expands to itself.

#![no_main]

use deploy_common::nodeset::{parse_list, split};
use libfuzzer_sys::fuzz_target;

/// A small cap, so that the fuzzer explores syntax rather than allocation.
const LIMIT: usize = 1000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(set) = parse_list(text, LIMIT) {
        assert!(set.include.len() + set.exclude.len() <= LIMIT);
        for name in set.include.iter().chain(&set.exclude) {
            assert!(!name.is_empty());
            assert!(!name.contains(char::is_whitespace), "{name:?}");
        }
        if !text.contains(['[', ']', '!']) {
            let items: Vec<&str> = split(text);
            assert_eq!(set.include, items);
        }
    }
});
