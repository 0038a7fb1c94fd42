//! Node sets in ClusterShell's syntax: `web[01-20]`, `db[1,3,5-7]`, several ranges in one
//! name, and exclusion with a leading `!`.
//!
//! ```text
//! web[01-03]          → web01 web02 web03      (a zero-padded bound pads every number)
//! db[1,3,5-7]         → db1 db3 db5 db6 db7
//! n[1-2]-r[1-2]       → n1-r1 n1-r2 n2-r1 n2-r2  (ranges multiply, left to right)
//! h[1-9/4]            → h1 h5 h9               (a step)
//! web[01-20] !web05   → web01 … web20 but web05 (`!` excludes, wherever it is in the list)
//! [::1]:22, ssh://u@[fe80::1]                 (brackets holding anything but digits,
//!                                              `,`, `-` and `/` are kept as written)
//! ```
//!
//! Lists ([`parse_list`]) are separated by commas (outside brackets), blanks or lines;
//! `#` starts a comment. Used for the client's `--hosts`, `--exclude`, host files, and the
//! proxy's `[servers]` groups.
//!
//! # Design
//!
//! A name is parsed into literal parts and ranges first; the number of names it makes is
//! computed (with checked arithmetic) and refused above the caller's limit before any
//! name is built, so a hostile `h[0-99999999][0-99999999]` costs nothing. Errors are
//! typed and quote the text at fault. No panics: the parser is a fuzz target
//! (`fuzz/fuzz_targets/nodeset.rs`).

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

/// Default cap on the names one list may expand to.
pub const DEFAULT_LIMIT: usize = 100_000;

/// Largest number a range may hold (18 digits: no overflow anywhere).
const MAX_DIGITS: usize = 18;

/// Why a node set was refused; each names the text at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeSetError {
    /// The syntax is wrong.
    #[error("bad node set {text:?}: {reason}")]
    Syntax {
        /// The name (or list item) as written.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// It would expand to more names than allowed.
    #[error("node set {text:?} expands to more than {limit} names")]
    TooLarge {
        /// The name (or list item) as written.
        text: String,
        /// The cap.
        limit: usize,
    },
}

/// A list once expanded: the names to include (in the order written, repeats kept) and
/// the names excluded with `!`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSet {
    /// Names to include.
    pub include: Vec<String>,
    /// Names to leave out.
    pub exclude: Vec<String>,
}

impl NodeSet {
    /// The included names that are not excluded (compared as written).
    pub fn names(&self) -> Vec<String> {
        self.include
            .iter()
            .filter(|n| !self.exclude.contains(n))
            .cloned()
            .collect()
    }
}

/// One part of a name: literal text, or the numbers of a bracket.
#[derive(Debug)]
enum Part<'a> {
    Text(&'a str),
    Range(Vec<String>),
}

/// Splits a list into items: commas outside brackets, blanks and lines separate them;
/// `#` starts a comment that runs to the end of its line.
pub fn split(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut depth = 0usize;
        let mut start = 0;
        for (i, c) in line.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    items.extend(line.get(start..i));
                    start = i + 1;
                }
                c if c.is_whitespace() => {
                    items.extend(line.get(start..i));
                    start = i + c.len_utf8();
                    depth = 0;
                }
                _ => {}
            }
        }
        items.extend(line.get(start..));
    }
    items.retain(|i| !i.is_empty());
    items
}

/// Expands a list ([`split`] into items; `!item` excludes), at most `limit` names in all.
pub fn parse_list(text: &str, limit: usize) -> Result<NodeSet, NodeSetError> {
    let mut set = NodeSet::default();
    let mut total = 0usize;
    for item in split(text) {
        let (negated, pattern) = match item.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        if pattern.is_empty() {
            return Err(syntax(item, "nothing after '!'"));
        }
        let names = expand(pattern, limit.saturating_sub(total)).map_err(|e| match e {
            NodeSetError::TooLarge { .. } => NodeSetError::TooLarge {
                text: item.to_owned(),
                limit,
            },
            other => other,
        })?;
        total += names.len();
        if negated {
            set.exclude.extend(names);
        } else {
            set.include.extend(names);
        }
    }
    Ok(set)
}

/// Expands one name, refusing more than `limit` results.
pub fn expand(name: &str, limit: usize) -> Result<Vec<String>, NodeSetError> {
    let parts = parse(name)?;
    let mut count: usize = 1;
    for part in &parts {
        if let Part::Range(numbers) = part {
            count = count.saturating_mul(numbers.len());
        }
    }
    if count > limit {
        return Err(NodeSetError::TooLarge {
            text: name.to_owned(),
            limit,
        });
    }
    let mut names = vec![String::with_capacity(name.len())];
    for part in &parts {
        match part {
            Part::Text(text) => names.iter_mut().for_each(|n| n.push_str(text)),
            Part::Range(numbers) => {
                names = names
                    .iter()
                    .flat_map(|n| numbers.iter().map(move |x| format!("{n}{x}")))
                    .collect();
            }
        }
    }
    Ok(names)
}

fn syntax(text: &str, reason: &str) -> NodeSetError {
    NodeSetError::Syntax {
        text: text.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Whether bracket contents are a range set (digits, `,`, `-`, `/`) rather than, say, an
/// IPv6 address.
fn is_range_text(inside: &str) -> bool {
    !inside.is_empty()
        && inside
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b',' | b'-' | b'/'))
}

/// Splits `name` into literal parts and ranges.
fn parse(name: &str) -> Result<Vec<Part<'_>>, NodeSetError> {
    let mut parts = Vec::new();
    let mut rest = name;
    while let Some(open) = rest.find('[') {
        let (before, after) = rest.split_at(open);
        let after = after.get(1..).unwrap_or_default();
        let (inside, tail, closed) = match after.find(']') {
            Some(close) => (
                after.get(..close).unwrap_or_default(),
                after.get(close + 1..).unwrap_or_default(),
                true,
            ),
            None => (after, "", false),
        };
        if !is_range_text(inside) {
            // Not a range (an IPv6 address): literal, up to and with the ']'.
            let keep = if closed {
                open + inside.len() + 2
            } else {
                rest.len()
            };
            parts.push(Part::Text(rest.get(..keep).unwrap_or_default()));
            rest = rest.get(keep..).unwrap_or_default();
            continue;
        }
        if !closed {
            return Err(syntax(name, "missing ']'"));
        }
        if !before.is_empty() {
            parts.push(Part::Text(before));
        }
        parts.push(Part::Range(
            range_set(inside).map_err(|reason| syntax(name, &reason))?,
        ));
        rest = tail;
    }
    if rest.contains(']') {
        return Err(syntax(name, "']' without '['"));
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    Ok(parts)
}

/// `1,3,5-7`, `01-10`, `1-9/2` → the numbers as text (zero-padded like their lower bound).
fn range_set(inside: &str) -> Result<Vec<String>, String> {
    let mut numbers = Vec::new();
    for piece in inside.split(',') {
        let (span, step) = match piece.split_once('/') {
            Some((span, step)) => (span, Some(step)),
            None => (piece, None),
        };
        let (low, high) = span.split_once('-').unwrap_or((span, span));
        let number = |text: &str| -> Result<u64, String> {
            if text.is_empty()
                || text.len() > MAX_DIGITS
                || !text.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(format!("{piece:?} is not a number or a range a-b"));
            }
            text.parse::<u64>()
                .map_err(|_| format!("{piece:?} is not a number or a range a-b"))
        };
        let (from, to) = (number(low)?, number(high)?);
        if from > to {
            return Err(format!("range {piece:?} goes backwards"));
        }
        let step = match step {
            None => 1,
            Some(step) => match number(step)? {
                0 => return Err(format!("step 0 in {piece:?}")),
                step => step,
            },
        };
        let width = if low.len() > 1 && low.starts_with('0') {
            low.len()
        } else {
            0
        };
        if (to - from) / step >= DEFAULT_LIMIT as u64 {
            return Err(format!("range {piece:?} is too large"));
        }
        let mut n = from;
        while n <= to {
            numbers.push(format!("{n:0width$}"));
            match n.checked_add(step) {
                Some(next) => n = next,
                None => break,
            }
        }
    }
    Ok(numbers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        parse_list(text, DEFAULT_LIMIT).unwrap().names()
    }

    #[test]
    fn ranges_lists_padding_and_products() {
        assert_eq!(names("web[01-03]"), ["web01", "web02", "web03"]);
        assert_eq!(names("db[1,3,5-7]"), ["db1", "db3", "db5", "db6", "db7"]);
        assert_eq!(names("n[1-2]-r[1-2]"), ["n1-r1", "n1-r2", "n2-r1", "n2-r2"]);
        assert_eq!(names("h[1-9/4].x"), ["h1.x", "h5.x", "h9.x"]);
        assert_eq!(names("h[8-10]"), ["h8", "h9", "h10"]);
        assert_eq!(names("h[098-100]"), ["h098", "h099", "h100"]);
        assert_eq!(names("[1-2]"), ["1", "2"]);
        assert_eq!(
            names("ssh://root@web[1-2]:2222"),
            ["ssh://root@web1:2222", "ssh://root@web2:2222"]
        );
    }

    #[test]
    fn lists_split_outside_brackets_and_exclude() {
        assert_eq!(
            split("a,db[1,3] c\n# x\n d # y\n[::1]:9,,e"),
            ["a", "db[1,3]", "c", "d", "[::1]:9", "e"]
        );
        assert_eq!(names("web[1-5],!web[2-3] !web5"), ["web1", "web4"]);
        assert_eq!(names("!web2 web[1-3]"), ["web1", "web3"]);
        assert_eq!(names("a a"), ["a", "a"]);
    }

    #[test]
    fn ipv6_brackets_are_literal() {
        assert_eq!(names("[::1]:22"), ["[::1]:22"]);
        assert_eq!(names("ssh://u@[fe80::1]"), ["ssh://u@[fe80::1]"]);
        assert_eq!(names("[::1"), ["[::1"]);
        assert_eq!(names("fe80::1"), ["fe80::1"]);
    }

    #[test]
    fn errors_name_the_text() {
        for (text, reason) in [
            ("web[1-3", "missing ']'"),
            ("web[3-1]", "goes backwards"),
            ("web[1--2]", "not a number"),
            ("web[,1]", "not a number"),
            ("web[1-4/0]", "step 0"),
            ("web[1234567890123456789]", "not a number"),
            ("web1]", "']' without '['"),
            ("!", "nothing after '!'"),
            ("h[0-99999999]", "too large"),
        ] {
            let e = parse_list(text, DEFAULT_LIMIT).unwrap_err().to_string();
            assert!(e.contains(&format!("{text:?}")), "{e}");
            assert!(e.contains(reason), "{text}: {e}");
        }
    }

    /// The fuzz target's invariants over many generated lists (a cheap stand-in when
    /// cargo-fuzz is not at hand): no panic, the cap holds, names have no blanks.
    #[test]
    fn generated_lists_keep_the_invariants() {
        const ALPHABET: &[u8] = b"ab01239[],-/! :#\n.";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let len = (seed % 24) as usize;
            let mut text = String::new();
            for _ in 0..len {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let pick = ALPHABET.get((seed >> 33) as usize % ALPHABET.len());
                text.push(char::from(*pick.unwrap()));
            }
            seed = seed.wrapping_add(0x632b_e59b_d9b4_e019);
            if let Ok(set) = parse_list(&text, 1000) {
                assert!(set.include.len() + set.exclude.len() <= 1000, "{text:?}");
                for name in set.include.iter().chain(&set.exclude) {
                    assert!(
                        !name.is_empty() && !name.contains(char::is_whitespace),
                        "{text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_cap_holds_before_anything_is_built() {
        let e = parse_list("h[0-9999][0-9999]", 1000).unwrap_err();
        assert_eq!(
            e,
            NodeSetError::TooLarge {
                text: "h[0-9999][0-9999]".into(),
                limit: 1000
            }
        );
        // The cap is over the whole list.
        assert!(parse_list("a[1-600] b[1-600]", 1000).is_err());
        assert_eq!(
            parse_list("a[1-500] b[1-500]", 1000).unwrap().include.len(),
            1000
        );
    }
}
