//! The original deploy's INI dialect, parsed by hand so that every error can name
//! `file:line`.
//!
//! ```text
//! # comment                  ; comment lines start with '#' or ';' (after trimming)
//! top = 1                    ; keys before any header belong to section "list"
//! [server]                   ; a header: brackets stripped
//! port = 3440                ; split at the FIRST '=', spaces around it dropped
//! cmd = a ; b                ; the value is verbatim: ' ; b' is NOT a comment
//! [allow::hosts]
//! host[] = 127.0.0.1         ; 'name[] = v' appends to the list 'name'
//! host[] = ::1
//! ```
//!
//! Every line is trimmed (so CRLF files work). There is no quoting, no escaping, no
//! continuation line and no include. A section header may appear more than once; its
//! keys are merged into the first occurrence, in file order.
//!
//! Deviation from the original: it took *any* line without `=` as a section name (so a
//! stray word silently started a new section). We accept only `[name]` headers and
//! reject other lines with a [`ConfigError::Syntax`] naming the line.
//!
//! This module knows nothing of what the keys mean; the typed configs
//! ([`AgentConfig`](super::AgentConfig), [`ProxyConfig`](super::ProxyConfig),
//! [`Jobs`](super::Jobs), [`ApiKeys`](super::ApiKeys)) interpret the sections.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// The name of the implicit section that holds keys written before any header.
pub const IMPLICIT_SECTION: &str = "list";

/// One `key = value` or `key[] = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, without the `[]` suffix of a list entry.
    pub key: String,
    /// The value, verbatim (only the spaces around it are removed).
    pub value: String,
    /// The 1-based line number in the file.
    pub line: usize,
    /// `true` for `key[] = value` (one element of the list `key`).
    pub list: bool,
}

impl Entry {
    /// The key as written in the file: `name[]` for list entries, `name` otherwise.
    pub fn written_key(&self) -> String {
        if self.list {
            format!("{}[]", self.key)
        } else {
            self.key.clone()
        }
    }
}

/// One section: its name and its entries in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    name: String,
    header_line: Option<usize>,
    entries: Vec<Entry>,
}

impl Section {
    /// The section name, brackets stripped (e.g. `rsync::group::web`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The line of the first `[name]` header, or `None` for the implicit
    /// [`IMPLICIT_SECTION`] holding keys written before any header.
    pub fn header_line(&self) -> Option<usize> {
        self.header_line
    }

    /// The line to cite for the section as a whole: its header, or else its first key.
    pub fn line(&self) -> usize {
        self.header_line
            .or_else(|| self.entries.first().map(|e| e.line))
            .unwrap_or(0)
    }

    /// Every entry, scalar and list, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The last scalar (`key = value`) entry for `key`: later lines win.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| !e.list && e.key == key)
    }

    /// The elements of the list `key` (`key[] = …` lines), in file order.
    pub fn list<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.list && e.key == key)
    }
}

/// A parsed INI file: its path (for error messages) and its sections in order of first
/// appearance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ini {
    path: PathBuf,
    sections: Vec<Section>,
}

impl Ini {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Ini, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ini::parse(&text, path)
    }

    /// Parses `text`; `path` is only used in error messages and by [`Ini::path`].
    pub fn parse(text: &str, path: &Path) -> Result<Ini, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut ini = Ini {
            path: path.to_path_buf(),
            sections: Vec::new(),
        };
        // Index into `sections` of the current section; `None` until the first key or
        // header (the implicit section is only created when a key needs it).
        let mut current: Option<usize> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            let syntax = |message: String| ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                message,
            };
            if let Some((key, value)) = trimmed.split_once('=') {
                let key = key.trim_end();
                let value = value.trim_start();
                let (key, list) = match key.strip_suffix("[]") {
                    Some(k) => (k.trim_end(), true),
                    None => (key, false),
                };
                if key.is_empty() {
                    return Err(syntax(format!("empty key in {trimmed:?}")));
                }
                let at = match current {
                    Some(at) => at,
                    None => {
                        let at = ini.section_index(IMPLICIT_SECTION, None);
                        current = Some(at);
                        at
                    }
                };
                if let Some(section) = ini.sections.get_mut(at) {
                    section.entries.push(Entry {
                        key: key.to_owned(),
                        value: value.to_owned(),
                        line,
                        list,
                    });
                }
            } else if let Some(inner) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']'))
            {
                let name = inner.trim();
                if name.is_empty() {
                    return Err(syntax("empty section name []".to_owned()));
                }
                if name.contains(['[', ']']) {
                    return Err(syntax(format!("malformed section header {trimmed:?}")));
                }
                current = Some(ini.section_index(name, Some(line)));
            } else {
                return Err(syntax(format!(
                    "expected `key = value` or `[section]`, found {trimmed:?}"
                )));
            }
        }
        Ok(ini)
    }

    /// Finds the section `name`, creating it (with `header_line`) if it is new.
    fn section_index(&mut self, name: &str, header_line: Option<usize>) -> usize {
        if let Some(at) = self.sections.iter().position(|s| s.name == name) {
            if let Some(section) = self.sections.get_mut(at) {
                section.header_line = section.header_line.or(header_line);
            }
            return at;
        }
        self.sections.push(Section {
            name: name.to_owned(),
            header_line,
            entries: Vec::new(),
        });
        self.sections.len() - 1
    }

    /// The file this was read from (or the name given to [`Ini::parse`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sections in order of first appearance.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The section called `name`, if present.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// Shorthand for the last scalar value of `key` in section `section`.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.section(section)
            .and_then(|s| s.get(key))
            .map(|e| e.value.as_str())
    }

    /// Shorthand for the values of list `key` in section `section` (empty if absent).
    pub fn list(&self, section: &str, key: &str) -> Vec<&str> {
        self.section(section)
            .map(|s| {
                s.entries
                    .iter()
                    .filter(|e| e.list && e.key == key)
                    .map(|e| e.value.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Ini {
        Ini::parse(text, Path::new("t.ini")).unwrap()
    }

    #[test]
    fn dialect() {
        let ini = parse(
            "top = 1\n\
             # comment\n\
             ; another = comment\n\
             \n\
             [server]\n\
             \tport=3440  \r\n\
             cmd = a ; b # c\n\
             eq = x = y\n\
             [allow::hosts]\n\
             host[] = 127.0.0.1\n\
             host [] = ::1\n\
             [server]\n\
             port = 3441\n",
        );
        let names: Vec<_> = ini.sections().iter().map(|s| s.name()).collect();
        assert_eq!(names, ["list", "server", "allow::hosts"]);
        assert_eq!(ini.get("list", "top"), Some("1"));
        assert_eq!(ini.section("list").unwrap().header_line(), None);
        assert_eq!(ini.section("list").unwrap().line(), 1);
        assert_eq!(ini.get("server", "port"), Some("3441"), "later wins");
        assert_eq!(ini.get("server", "cmd"), Some("a ; b # c"));
        assert_eq!(ini.get("server", "eq"), Some("x = y"));
        assert_eq!(ini.list("allow::hosts", "host"), ["127.0.0.1", "::1"]);
        let server = ini.section("server").unwrap();
        assert_eq!(server.header_line(), Some(5));
        let lines: Vec<_> = server.entries().iter().map(|e| e.line).collect();
        assert_eq!(lines, [6, 7, 8, 13]);
        let host = ini
            .section("allow::hosts")
            .unwrap()
            .list("host")
            .next()
            .unwrap();
        assert_eq!(host.written_key(), "host[]");
        assert_eq!(host.line, 10);
    }

    #[test]
    fn list_and_scalar_are_distinct() {
        let ini = parse("[a]\nx = 1\nx[] = 2\n");
        assert_eq!(ini.get("a", "x"), Some("1"));
        assert_eq!(ini.list("a", "x"), ["2"]);
    }

    #[test]
    fn name_may_contain_colons_value_may_be_empty() {
        let ini = parse("[jobs]\nservice:nginx = /usr/sbin/service nginx %s\nempty =\n");
        assert_eq!(
            ini.get("jobs", "service:nginx"),
            Some("/usr/sbin/service nginx %s")
        );
        assert_eq!(ini.get("jobs", "empty"), Some(""));
    }

    #[test]
    fn bom_is_ignored() {
        let ini = parse("\u{feff}[server]\nport = 1\n");
        assert_eq!(ini.get("server", "port"), Some("1"));
    }

    #[test]
    fn errors_name_file_and_line() {
        for (text, want) in [
            (
                "[server]\nport = 1\nstray\n",
                "t.ini:3: expected `key = value` or `[section]`, found \"stray\"",
            ),
            ("\n[]\n", "t.ini:2: empty section name []"),
            ("[a]\n = 1\n", "t.ini:2: empty key in \"= 1\""),
            ("[a]\n[] = 1\n", "t.ini:2: empty key in \"[] = 1\""),
            ("[a]]\n", "t.ini:1: malformed section header \"[a]]\""),
        ] {
            let err = Ini::parse(text, Path::new("t.ini")).unwrap_err();
            assert_eq!(err.to_string(), want, "{text:?}");
        }
    }

    #[test]
    fn missing_file() {
        let err = Ini::load(Path::new("/nonexistent/deploy.ini")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/deploy.ini: cannot read:"),
            "{err}"
        );
    }
}
