//! The manifest: stretcher's YAML format, rendered first as a template, so a manifest
//! that works with stretcher works here unchanged.
//!
//! ```text
//! src: s3://bucket/app-{{ env "VERSION" "1.0" }}.tar.gz   # no src: commands only
//! checksum: 0f3c…                  # md5/sha1/sha256/sha512 by length, or sha256:<hex>
//! dest: /srv/app
//! dest_mode: 0755
//! excludes: ["*.pid", tmp]         # rsync strategy
//! exclude_from: exclude.txt        # a file inside the archive
//! sync_strategy: rsync             # rsync (default) | mv | release (ours)
//! commands:
//!   pre: [ "echo pre" ]            # each line `sh -c`, in order; the first failure fails
//!   post: [ ... ]
//!   success: [ "cat > /tmp/log" ]  # get the whole deploy log on stdin
//!   failure: [ ... ]
//! keep: 5                          # release strategy: releases kept (ours)
//! releases_dir: /srv/app.releases  # release strategy (ours; default <dest>.releases)
//! ```
//!
//! The template language is the part of Go's `text/template` stretcher documents:
//! `{{ env "X" }}`, `{{ env "X" "default" }}` and `{{ must_env "X" }}` (an error naming
//! `X` when it is unset), with `{{-`/`-}}` trimming. Any other action is an error naming
//! its line, rather than text passed through. Unknown keys are reported (stretcher
//! ignored them silently; a typo in `sync_strategy` would deploy with rsync).

use std::collections::BTreeMap;

use serde::Deserialize;

/// Why a manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// A template action failed.
    #[error("manifest line {line}: {reason}")]
    Template {
        /// 1-based line of the action.
        line: usize,
        /// Why.
        reason: String,
    },
    /// The YAML is invalid.
    #[error("manifest: invalid YAML: {0}")]
    Yaml(String),
    /// A field is invalid.
    #[error("manifest: {0}")]
    Invalid(String),
}

/// The four command lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commands {
    /// Before extraction.
    #[serde(default)]
    pub pre: Vec<String>,
    /// After the sync (or switch).
    #[serde(default)]
    pub post: Vec<String>,
    /// When everything succeeded; the log on stdin.
    #[serde(default)]
    pub success: Vec<String>,
    /// When something failed; the log on stdin.
    #[serde(default)]
    pub failure: Vec<String>,
}

/// How the unpacked tree reaches `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// `rsync -a --delete [excludes] tmp/ dest/` (stretcher's default).
    Rsync,
    /// `rename(2)` of the unpacked tree onto `dest`; fails if `dest` exists.
    Mv,
    /// `<releases_dir>/<id>`, and `dest` a symbolic link switched atomically (ours).
    Release,
}

/// A checksum algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// 32 hex digits.
    Md5,
    /// 40 hex digits.
    Sha1,
    /// 64 hex digits.
    Sha256,
    /// 128 hex digits.
    Sha512,
}

impl Algorithm {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

/// An expected digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Lower-case hex.
    pub hex: String,
}

impl Checksum {
    /// `<hex>` (algorithm by length, case-insensitive) or `<algorithm>:<hex>`.
    pub fn parse(text: &str) -> Result<Checksum, ManifestError> {
        let text = text.trim();
        let (named, hex) = match text.split_once(':') {
            Some((name, hex)) => (Some(name.to_ascii_lowercase()), hex),
            None => (None, text),
        };
        let hex = hex.to_ascii_lowercase();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ManifestError::Invalid(format!(
                "checksum {text:?} is not hexadecimal"
            )));
        }
        let by_len = match hex.len() {
            32 => Some(Algorithm::Md5),
            40 => Some(Algorithm::Sha1),
            64 => Some(Algorithm::Sha256),
            128 => Some(Algorithm::Sha512),
            _ => None,
        };
        let algorithm = match (named.as_deref(), by_len) {
            (None, Some(a)) => a,
            (Some(name), Some(a)) if name == a.as_str() => a,
            (Some(name), _) => {
                return Err(ManifestError::Invalid(format!(
                    "checksum {text:?}: {name} needs {} hex digits",
                    match name {
                        "md5" => "32",
                        "sha1" => "40",
                        "sha256" => "64",
                        "sha512" => "128",
                        _ =>
                            return Err(ManifestError::Invalid(format!(
                        "checksum {text:?}: unknown algorithm {name:?} (md5, sha1, sha256, sha512)"
                    ))),
                    }
                )))
            }
            (None, None) => {
                return Err(ManifestError::Invalid(
                    "checksum must be md5, sha1, sha256, sha512".into(),
                ))
            }
        };
        Ok(Checksum { algorithm, hex })
    }
}

/// The manifest as written (after rendering).
#[derive(Debug, Clone, Default, Deserialize)]
struct Raw {
    #[serde(default)]
    src: Option<String>,
    #[serde(default)]
    checksum: Option<String>,
    #[serde(default)]
    dest: Option<String>,
    #[serde(default)]
    dest_mode: Option<String>,
    #[serde(default)]
    commands: Commands,
    #[serde(default)]
    excludes: Vec<String>,
    #[serde(default)]
    exclude_from: Option<String>,
    #[serde(default)]
    sync_strategy: Option<String>,
    #[serde(default)]
    keep: Option<usize>,
    #[serde(default)]
    releases_dir: Option<String>,
}

const KEYS: [&str; 10] = [
    "src",
    "checksum",
    "dest",
    "dest_mode",
    "commands",
    "excludes",
    "exclude_from",
    "sync_strategy",
    "keep",
    "releases_dir",
];

/// A checked manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Where the artifact is; `None`: commands only.
    pub src: Option<String>,
    /// Its expected digest (required with an archive `src`).
    pub checksum: Option<Checksum>,
    /// Where it goes (required with `src`).
    pub dest: Option<String>,
    /// The mode of the unpacked tree's top directory (default `0o755`).
    pub dest_mode: u32,
    /// The hooks.
    pub commands: Commands,
    /// `rsync --exclude` patterns.
    pub excludes: Vec<String>,
    /// A file inside the archive with more patterns.
    pub exclude_from: Option<String>,
    /// How the tree reaches `dest`.
    pub strategy: Strategy,
    /// Releases kept (release strategy).
    pub keep: usize,
    /// Where releases live (release strategy).
    pub releases_dir: Option<String>,
    /// Keys the manifest has that are not understood (reported, not fatal).
    pub unknown_keys: Vec<String>,
}

impl Manifest {
    /// Renders `text` with `env` (a variable lookup), then parses and checks it.
    pub fn parse(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Manifest, ManifestError> {
        let rendered = render(text, env)?;
        Manifest::parse_rendered(&rendered)
    }

    /// Parses an already rendered manifest.
    pub fn parse_rendered(text: &str) -> Result<Manifest, ManifestError> {
        let keys: BTreeMap<String, serde::de::IgnoredAny> = if text.trim().is_empty() {
            BTreeMap::new()
        } else {
            serde_saphyr::from_str(text).map_err(|e| ManifestError::Yaml(e.to_string()))?
        };
        let unknown_keys: Vec<String> = keys
            .keys()
            .filter(|k| !KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        let raw: Raw = if text.trim().is_empty() {
            Raw::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| ManifestError::Yaml(e.to_string()))?
        };
        let src = raw.src.filter(|s| !s.trim().is_empty());
        let is_tree = src.as_deref().is_some_and(|s| s.starts_with("rsync://"));
        let checksum = match raw.checksum.as_deref().map(str::trim) {
            Some(c) if !c.is_empty() => Some(Checksum::parse(c)?),
            _ if src.is_some() && !is_tree => {
                return Err(ManifestError::Invalid(
                    "checksum must be md5, sha1, sha256, sha512".into(),
                ))
            }
            _ => None,
        };
        if checksum.is_some() && is_tree {
            return Err(ManifestError::Invalid(
                "an rsync:// src is a tree, not an archive: it takes no checksum".into(),
            ));
        }
        let dest = raw.dest.filter(|d| !d.trim().is_empty());
        if src.is_some() && dest.is_none() {
            return Err(ManifestError::Invalid("dest is required with src".into()));
        }
        if let Some(dest) = &dest {
            if !dest.starts_with('/') {
                return Err(ManifestError::Invalid(format!(
                    "dest {dest:?} must be an absolute path"
                )));
            }
        }
        // `0755` as stretcher's YAML 1.1 parser read it (octal); `493`, a number whose
        // digits are not all octal, as a plain number; `0o755` too.
        let dest_mode = match raw.dest_mode.as_deref().map(str::trim) {
            None | Some("") => 0o755,
            Some(t) => {
                let digits = t.strip_prefix("0o").unwrap_or(t);
                u32::from_str_radix(digits, 8)
                    .or_else(|_| t.parse::<u32>())
                    .map_err(|_| ManifestError::Invalid(format!("dest_mode {t:?} is not a mode")))?
            }
        };
        if dest_mode > 0o7777 {
            return Err(ManifestError::Invalid(format!(
                "dest_mode {dest_mode:o} is not a mode"
            )));
        }
        let strategy = match raw.sync_strategy.as_deref().map(str::trim) {
            None | Some("") | Some("rsync") => Strategy::Rsync,
            Some("mv") => Strategy::Mv,
            Some("release") => Strategy::Release,
            Some(other) => {
                return Err(ManifestError::Invalid(format!(
                    "invalid strategy {other:?} (rsync, mv or release)"
                )))
            }
        };
        if let Some(file) = &raw.exclude_from {
            if file.starts_with('/') || file.split('/').any(|p| p == "..") {
                return Err(ManifestError::Invalid(format!(
                    "exclude_from {file:?} must be a path inside the archive"
                )));
            }
        }
        let keep = raw.keep.unwrap_or(5);
        if keep < 2 {
            return Err(ManifestError::Invalid(
                "keep must be at least 2 (the current release and the previous one)".into(),
            ));
        }
        Ok(Manifest {
            src,
            checksum,
            dest,
            dest_mode,
            commands: raw.commands,
            excludes: raw.excludes,
            exclude_from: raw.exclude_from,
            strategy,
            keep,
            releases_dir: raw.releases_dir,
            unknown_keys,
        })
    }
}

/// Renders the template actions of `text`.
pub fn render(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<String, ManifestError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let line_of = |offset: usize| {
        text.get(..offset)
            .map_or(1, |t| t.matches('\n').count() + 1)
    };
    while let Some(start) = rest.find("{{") {
        let offset = text.len() - rest.len() + start;
        let (before, after) = rest.split_at(start);
        let after = after.get(2..).unwrap_or_default();
        let Some(end) = after.find("}}") else {
            return Err(ManifestError::Template {
                line: line_of(offset),
                reason: "`{{` without `}}`".into(),
            });
        };
        let mut action = after.get(..end).unwrap_or_default();
        let mut before = before;
        if let Some(a) = action.strip_prefix('-') {
            action = a;
            before = before.trim_end();
        }
        let mut trim_after = false;
        if let Some(a) = action.strip_suffix('-') {
            action = a;
            trim_after = true;
        }
        out.push_str(before);
        let value =
            action_value(action.trim(), &env).map_err(|reason| ManifestError::Template {
                line: line_of(offset),
                reason,
            })?;
        out.push_str(&value);
        rest = after.get(end + 2..).unwrap_or_default();
        if trim_after {
            rest = rest.trim_start();
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// One action: `env "X" ["default"]` or `must_env "X"`.
fn action_value(action: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let words = words(action)?;
    match words.as_slice() {
        [Word::Bare(f), Word::Quoted(name)] if f == "env" => Ok(env(name).unwrap_or_default()),
        [Word::Bare(f), Word::Quoted(name), Word::Quoted(default)] if f == "env" => {
            Ok(env(name).filter(|v| !v.is_empty()).unwrap_or_else(|| default.clone()))
        }
        [Word::Bare(f), Word::Quoted(name)] if f == "must_env" => {
            env(name).ok_or_else(|| format!("environment variable {name} is not set (must_env)"))
        }
        _ => Err(format!(
            "unsupported template action {{{{{action}}}}} (env \"X\" [\"default\"] and must_env \"X\" are)"
        )),
    }
}

#[derive(Debug, PartialEq)]
enum Word {
    Bare(String),
    Quoted(String),
}

fn words(action: &str) -> Result<Vec<Word>, String> {
    let mut out = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some(c) => s.push(c),
                        None => return Err("unterminated string".into()),
                    },
                    Some(c) => s.push(c),
                    None => return Err("unterminated string".into()),
                }
            }
            out.push(Word::Quoted(s));
        } else if c == '`' {
            chars.next();
            let s: String = chars.by_ref().take_while(|&c| c != '`').collect();
            out.push(Word::Quoted(s));
        } else {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '"' {
                    break;
                }
                s.push(c);
                chars.next();
            }
            out.push(Word::Bare(s));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "VERSION" => Some("1.2.3".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn stretchers_basic_manifest() {
        let m = Manifest::parse(
            "src: s3://example.com/app.tar.gz\n\
             checksum: E0AB2A1F8B6A05AC8D1E8CC2E4A6F1B5C0B0D4E1\n\
             dest: /home/stretcher/app\n\
             commands:\n  pre:\n    - echo 'staring deploy'\n  post:\n    - echo 'deploy done'\n\
             excludes:\n  - \"*.pid\"\n  - \"*.socket\"\n",
            env,
        )
        .unwrap();
        assert_eq!(m.src.as_deref(), Some("s3://example.com/app.tar.gz"));
        assert_eq!(m.checksum.unwrap().algorithm, Algorithm::Sha1);
        assert_eq!(m.dest.as_deref(), Some("/home/stretcher/app"));
        assert_eq!(m.commands.pre, ["echo 'staring deploy'"]);
        assert_eq!(m.excludes, ["*.pid", "*.socket"]);
        assert_eq!(m.strategy, Strategy::Rsync);
        assert_eq!(m.dest_mode, 0o755);
    }

    #[test]
    fn templates() {
        assert_eq!(
            render(
                "v={{ env \"VERSION\" }} d={{env \"NOPE\" \"x\"}} e={{ env \"EMPTY\" \"y\" }}",
                env
            )
            .unwrap(),
            "v=1.2.3 d=x e=y"
        );
        assert_eq!(
            render("a {{- must_env \"VERSION\" -}} b", env).unwrap(),
            "a1.2.3b"
        );
        let e = render("a\nb {{ must_env \"NOPE\" }}", env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifest line 2: environment variable NOPE is not set (must_env)"
        );
        assert!(render("{{ .Foo }}", env).is_err());
        assert!(render("{{ env \"A\"", env).is_err());
    }

    #[test]
    fn yaml_colon_in_command() {
        // stretcher's test: an unquoted ":foo: bar" in a command must fail, quoted pass.
        let bad = "commands:\n  pre:\n    - echo :foo: bar\n";
        assert!(Manifest::parse(bad, env).is_err());
        let good = "commands:\n  pre:\n    - \"echo :foo: bar\"\n";
        assert_eq!(
            Manifest::parse(good, env).unwrap().commands.pre,
            ["echo :foo: bar"]
        );
    }

    #[test]
    fn checksums_modes_strategies() {
        for (text, algorithm) in [
            ("d41d8cd98f00b204e9800998ecf8427e", Algorithm::Md5),
            ("DA39A3EE5E6B4B0D3255BFEF95601890AFD80709", Algorithm::Sha1),
            (&*format!("sha256:{}", "a".repeat(64)), Algorithm::Sha256),
            (&*"b".repeat(128), Algorithm::Sha512),
        ] {
            assert_eq!(Checksum::parse(text).unwrap().algorithm, algorithm);
        }
        assert!(Checksum::parse("abc").is_err());
        assert!(Checksum::parse(&format!("sha1:{}", "a".repeat(64))).is_err());
        let m = |extra: &str| {
            Manifest::parse(
                &format!(
                    "src: file:///x.tar\nchecksum: {}\ndest: /d\n{extra}",
                    "a".repeat(64)
                ),
                env,
            )
        };
        assert_eq!(m("dest_mode: 0751").unwrap().dest_mode, 0o751);
        assert_eq!(m("dest_mode: \"0711\"").unwrap().dest_mode, 0o711);
        assert_eq!(m("sync_strategy: mv").unwrap().strategy, Strategy::Mv);
        assert_eq!(
            m("sync_strategy: release").unwrap().strategy,
            Strategy::Release
        );
        assert!(m("sync_strategy: copy")
            .unwrap_err()
            .to_string()
            .contains("invalid strategy"));
        assert_eq!(m("frobnicate: 1").unwrap().unknown_keys, ["frobnicate"]);
        assert!(Manifest::parse("src: file:///x.tar\ndest: /d\n", env)
            .unwrap_err()
            .to_string()
            .contains("checksum must be"));
        assert!(Manifest::parse(
            &format!("src: file:///x.tar\nchecksum: {}\n", "a".repeat(32)),
            env
        )
        .is_err());
        // Commands only.
        let m = Manifest::parse("commands:\n  pre: [\"true\"]\n", env).unwrap();
        assert!(m.src.is_none());
    }
}
