//! `deployment.yaml` and `alias.yaml` as Octopoda reads them, and Octopoda's rules.
//!
//! ```text
//! name: helloWorld                 # required, non-empty
//! description: "…"                 # required, non-empty
//! applications:                    # required, at least one
//! - name: helloPrinter             # required
//!   description: "…"               # required
//!   scriptpath: "hello/scripts/"   # required; relative to the folder
//!   sourcepath: "hello/src/"       # an existing directory; empty = the folder itself
//!   nodes: ['pi-24', '@group1']    # required; names, @alias / @group, ssh://host
//!   script:                        # prepare, start, stop, purge required; each target once
//!   - {target: prepare, file: prepare.sh, order: 1}   # order defaults to 0
//! ```
//!
//! `alias.yaml` maps a name to a list of node entries; `@other` inside refers to another
//! alias (loops refused). Keys Octopoda does not know are kept as [`Warning`]s rather
//! than dropped silently. The path rules (sourcepath a directory, script files present,
//! everything inside the folder) are [`crate::folder`]'s; the rules on the data alone
//! are [`Deployment::validate`]'s.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::Error;

/// The targets every application must implement (Octopoda's `checkTarget`).
pub const REQUIRED_TARGETS: [&str; 4] = ["prepare", "start", "stop", "purge"];

/// A scenario: `deployment.yaml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Deployment {
    /// The scenario's name (the `<scenario>` of `<app>@<scenario>`).
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// Free text.
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    /// The applications.
    #[serde(default, deserialize_with = "nullable")]
    pub applications: Vec<Application>,
    /// Keys Octopoda ignores.
    #[serde(flatten)]
    unknown: BTreeMap<String, IgnoredAny>,
}

/// One application of a scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Application {
    /// The application's name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// Free text.
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    /// The directory of its scripts, relative to the folder.
    #[serde(default, deserialize_with = "nullable")]
    pub scriptpath: String,
    /// The directory pushed to each node on `prepare`, relative to the folder.
    #[serde(default, deserialize_with = "nullable")]
    pub sourcepath: String,
    /// Where it runs.
    #[serde(default, deserialize_with = "nullable")]
    pub nodes: Vec<String>,
    /// Its scripts, one per target.
    #[serde(default, deserialize_with = "nullable")]
    pub script: Vec<ScriptEntry>,
    /// Keys Octopoda ignores.
    #[serde(flatten)]
    unknown: BTreeMap<String, IgnoredAny>,
}

/// One `script` entry: which file runs for which target, in which order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ScriptEntry {
    /// `prepare`, `start`, `stop`, `purge` or any custom name.
    #[serde(default, deserialize_with = "nullable")]
    pub target: String,
    /// The file, relative to the application's `scriptpath`.
    #[serde(default, deserialize_with = "nullable")]
    pub file: String,
    /// Lower orders run first; default 0.
    #[serde(default, deserialize_with = "nullable")]
    pub order: i64,
    /// Keys Octopoda ignores.
    #[serde(flatten)]
    unknown: BTreeMap<String, IgnoredAny>,
}

/// A YAML `null` (`nodes:` with nothing after it) is the empty value, as Go's yaml.v3
/// makes it; the rules then report the key as missing.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// The parser's message is several lines (a snippet of `<input>`); its first line says
/// where and what, and the file is named here instead.
fn yaml_error(file: &Path, e: &serde_saphyr::Error) -> Error {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    Error::Yaml {
        file: file.to_path_buf(),
        message: first.strip_prefix("error: ").unwrap_or(first).to_owned(),
    }
}

/// A key that Octopoda would have ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file.
    pub file: PathBuf,
    /// The key, as a path (`applications[0].scripts`).
    pub key: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: unknown key `{}` ignored",
            self.file.display(),
            self.key
        )
    }
}

impl Deployment {
    /// Parses `deployment.yaml`'s text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Deployment, Error> {
        serde_saphyr::from_str(text).map_err(|e| yaml_error(file, &e))
    }

    /// The keys Octopoda would ignore, in file order of sections.
    pub fn unknown_keys(&self, file: &Path) -> Vec<Warning> {
        let mut out = Vec::new();
        let mut push = |key: String| {
            out.push(Warning {
                file: file.to_path_buf(),
                key,
            })
        };
        for k in self.unknown.keys() {
            push(k.clone());
        }
        for (i, app) in self.applications.iter().enumerate() {
            for k in app.unknown.keys() {
                push(format!("applications[{i}].{k}"));
            }
            for (j, s) in app.script.iter().enumerate() {
                for k in s.unknown.keys() {
                    push(format!("applications[{i}].script[{j}].{k}"));
                }
            }
        }
        out
    }

    /// Octopoda's rules on the data (required keys, the four targets, each target once)
    /// and ours (unique application names; names usable in `<app>@<scenario>`).
    /// Octopoda checks in this order too: the scenario's keys, then each application's.
    pub fn validate(&self, file: &Path) -> Result<(), Error> {
        let missing = |app: Option<&str>, key: String| Error::Missing {
            file: file.to_path_buf(),
            app: app.map(str::to_owned),
            key,
        };
        if self.name.is_empty() {
            return Err(missing(None, "name".into()));
        }
        check_name(file, None, "name", &self.name)?;
        if self.description.is_empty() {
            return Err(missing(None, "description".into()));
        }
        if self.applications.is_empty() {
            return Err(missing(None, "applications".into()));
        }
        let mut names = HashSet::new();
        for (i, app) in self.applications.iter().enumerate() {
            let key = |k: &str| format!("applications[{i}].{k}");
            if app.name.is_empty() {
                return Err(missing(None, key("name")));
            }
            let who = Some(app.name.as_str());
            check_name(file, who, &key("name"), &app.name)?;
            if !names.insert(app.name.as_str()) {
                return Err(Error::DuplicateApp {
                    file: file.to_path_buf(),
                    app: app.name.clone(),
                    key: key("name"),
                });
            }
            for (k, v) in [
                ("description", app.description.is_empty()),
                ("scriptpath", app.scriptpath.is_empty()),
                ("nodes", app.nodes.iter().all(|n| n.is_empty())),
            ] {
                if v {
                    return Err(missing(who, key(k)));
                }
            }
            app.check_targets(file, i)?;
        }
        Ok(())
    }
}

impl Application {
    /// Each target once, a file for each, and the four required targets present.
    fn check_targets(&self, file: &Path, index: usize) -> Result<(), Error> {
        let mut seen = HashSet::new();
        for (j, s) in self.script.iter().enumerate() {
            let key = |k: &str| format!("applications[{index}].script[{j}].{k}");
            for (k, empty) in [("target", s.target.is_empty()), ("file", s.file.is_empty())] {
                if empty {
                    return Err(Error::Missing {
                        file: file.to_path_buf(),
                        app: Some(self.name.clone()),
                        key: key(k),
                    });
                }
            }
            if !seen.insert(s.target.as_str()) {
                return Err(Error::DuplicateTarget {
                    file: file.to_path_buf(),
                    app: self.name.clone(),
                    key: key("target"),
                    target: s.target.clone(),
                });
            }
        }
        for target in REQUIRED_TARGETS {
            if !seen.contains(target) {
                return Err(Error::MissingTarget {
                    file: file.to_path_buf(),
                    app: self.name.clone(),
                    key: format!("applications[{index}].script"),
                    target,
                });
            }
        }
        Ok(())
    }
}

/// Refuses names that cannot be one side of `<app>@<scenario>` (Octopoda splits the
/// directory name on `@`) or that would be a path.
pub(crate) fn check_name(
    file: &Path,
    app: Option<&str>,
    key: &str,
    value: &str,
) -> Result<(), Error> {
    let reason = if value.contains('@') {
        Some("must not contain '@' (the NodeApp directory is <app>@<scenario>)")
    } else if value.contains('/') || value.contains('\0') {
        Some("must not contain '/' or NUL")
    } else if value == "." || value == ".." {
        Some("is not a usable name")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::BadName {
            file: file.to_path_buf(),
            app: app.map(str::to_owned),
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `alias.yaml`: each alias expanded to its node entries (no `@alias` left; `@group`
/// entries that are not aliases are kept for the proxy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases {
    expanded: BTreeMap<String, Vec<String>>,
}

impl Aliases {
    /// Parses and expands `alias.yaml`; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Aliases, Error> {
        let raw: Option<BTreeMap<String, Option<Vec<String>>>> =
            serde_saphyr::from_str(text).map_err(|e| yaml_error(file, &e))?;
        let raw: BTreeMap<String, Vec<String>> = raw
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect();
        let mut expanded = BTreeMap::new();
        for name in raw.keys() {
            let mut chain = Vec::new();
            let nodes = expand(&raw, name, &mut chain, file)?;
            expanded.insert(name.clone(), nodes);
        }
        Ok(Aliases { expanded })
    }

    /// The aliases' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.expanded.keys().map(String::as_str)
    }

    /// The nodes of an alias, if it is one.
    pub fn get(&self, alias: &str) -> Option<&[String]> {
        self.expanded.get(alias).map(Vec::as_slice)
    }

    /// An application's `nodes` with every `@alias` replaced by its nodes, duplicates
    /// removed (first place kept), empty entries skipped as Octopoda does.
    pub fn resolve(&self, nodes: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for entry in nodes.iter().filter(|n| !n.is_empty()) {
            let names = match entry.strip_prefix('@').and_then(|a| self.get(a)) {
                Some(list) => list,
                None => std::slice::from_ref(entry),
            };
            for n in names {
                if seen.insert(n.clone()) {
                    out.push(n.clone());
                }
            }
        }
        out
    }
}

/// Depth-first expansion of one alias; `chain` is the path of aliases being expanded.
fn expand(
    raw: &BTreeMap<String, Vec<String>>,
    name: &str,
    chain: &mut Vec<String>,
    file: &Path,
) -> Result<Vec<String>, Error> {
    if chain.iter().any(|c| c == name) {
        let mut names = chain.clone();
        names.push(name.to_owned());
        return Err(Error::AliasLoop {
            file: file.to_path_buf(),
            chain: names.join(" -> "),
        });
    }
    let Some(entries) = raw.get(name) else {
        return Ok(vec![format!("@{name}")]);
    };
    chain.push(name.to_owned());
    let mut out = Vec::new();
    for entry in entries.iter().filter(|e| !e.is_empty()) {
        match entry.strip_prefix('@') {
            Some(other) => {
                for n in expand(raw, other, chain, file)? {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
            None if !out.contains(entry) => out.push(entry.clone()),
            None => {}
        }
    }
    chain.pop();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> &'static Path {
        Path::new("s/deployment.yaml")
    }

    const APP: &str = "
name: s
description: d
applications:
- name: a
  description: d
  scriptpath: scripts/
  sourcepath: src/
  nodes: [n1]
  script:
  - {target: prepare, file: p.sh, order: 2}
  - {target: start, file: s.sh}
  - {target: stop, file: t.sh}
  - {target: purge, file: u.sh}
";

    #[test]
    fn parses_octopoda_fields_and_default_order() {
        let d = Deployment::parse(APP, file()).unwrap();
        d.validate(file()).unwrap();
        let a = &d.applications[0];
        assert_eq!(a.scriptpath, "scripts/");
        assert_eq!(a.script[0].order, 2);
        assert_eq!(a.script[1].order, 0);
        assert!(d.unknown_keys(file()).is_empty());
    }

    #[test]
    fn unknown_keys_are_listed_with_their_place() {
        let text = format!("{APP}  scripts: []\n  env: {{A: b}}\nversion: 3\n").replace(
            "{target: stop, file: t.sh}",
            "{target: stop, file: t.sh, when: x}",
        );
        let d = Deployment::parse(&text, file()).unwrap();
        let keys: Vec<String> = d.unknown_keys(file()).into_iter().map(|w| w.key).collect();
        assert_eq!(
            keys,
            [
                "version",
                "applications[0].env",
                "applications[0].scripts",
                "applications[0].script[2].when"
            ]
        );
        assert_eq!(
            d.unknown_keys(file())[0].to_string(),
            "s/deployment.yaml: unknown key `version` ignored"
        );
    }

    #[test]
    fn missing_keys_are_named() {
        let cases = [
            ("description: d", "description: ''", "s/deployment.yaml: key `description` is missing or empty"),
            ("  nodes: [n1]\n", "", "s/deployment.yaml: application \"a\": key `applications[0].nodes` is missing or empty"),
            ("  scriptpath: scripts/\n", "", "s/deployment.yaml: application \"a\": key `applications[0].scriptpath` is missing or empty"),
            ("{target: start, file: s.sh}", "{target: start}", "s/deployment.yaml: application \"a\": key `applications[0].script[1].file` is missing or empty"),
        ];
        for (from, to, want) in cases {
            let d = Deployment::parse(&APP.replacen(from, to, 1), file()).unwrap();
            assert_eq!(d.validate(file()).unwrap_err().to_string(), want, "{from}");
        }
    }

    #[test]
    fn octopoda_target_rules() {
        let d = Deployment::parse(&APP.replace("target: purge", "target: custom"), file()).unwrap();
        assert_eq!(
            d.validate(file()).unwrap_err().to_string(),
            "s/deployment.yaml: application \"a\": key `applications[0].script`: target \"purge\" is not implemented by a script (every application needs prepare, start, stop and purge)"
        );
        let d = Deployment::parse(&APP.replace("target: stop", "target: start"), file()).unwrap();
        assert_eq!(
            d.validate(file()).unwrap_err().to_string(),
            "s/deployment.yaml: application \"a\": key `applications[0].script[2].target`: target \"start\" is already defined"
        );
    }

    #[test]
    fn names_usable_in_nodeapp_dirs_and_unique() {
        let d = Deployment::parse(&APP.replace("- name: a", "- name: a@b"), file()).unwrap();
        assert!(matches!(d.validate(file()), Err(Error::BadName { .. })));
        let twice = format!("{APP}{}", &APP[APP.find("- name: a").unwrap()..]);
        let d = Deployment::parse(&twice, file()).unwrap();
        assert_eq!(
            d.validate(file()).unwrap_err().to_string(),
            "s/deployment.yaml: application \"a\" is defined twice (key `applications[1].name`)"
        );
    }

    #[test]
    fn yaml_errors_name_the_file_and_line() {
        let e = Deployment::parse("name: x\napplications: 3\n", file()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "s/deployment.yaml: line 2 column 15: expected sequence start"
        );
        let e = Deployment::parse("name: x\nname: y\n", file()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("s/deployment.yaml: line 2 column 1: duplicate mapping key: name"),
            "{e}"
        );
    }

    #[test]
    fn nulls_are_empty_as_in_go_and_then_missing() {
        let text = APP
            .replace("  nodes: [n1]\n", "  nodes:\n")
            .replace("description: d\napp", "description:\napp");
        let d = Deployment::parse(&text, file()).unwrap();
        assert!(d.description.is_empty() && d.applications[0].nodes.is_empty());
        assert!(
            matches!(d.validate(file()), Err(Error::Missing { key, .. }) if key == "description")
        );
        let a = Aliases::parse("a:\nb: ['@a', n]\n", Path::new("alias.yaml")).unwrap();
        assert_eq!(a.get("b").unwrap(), ["n"]);
    }

    #[test]
    fn aliases_expand_recursively_and_keep_groups() {
        let f = Path::new("s/alias.yaml");
        let a = Aliases::parse(
            "group1: ['node3', 'node4']\ngroup2: ['@group1', 'node1', 'node3', '@proxygroup', '']\n",
            f,
        )
        .unwrap();
        assert_eq!(
            a.get("group2").unwrap(),
            ["node3", "node4", "node1", "@proxygroup"]
        );
        let nodes = [
            "node1".to_owned(),
            "@group2".to_owned(),
            "ssh://h".to_owned(),
            "@other".to_owned(),
        ];
        assert_eq!(
            a.resolve(&nodes),
            [
                "node1",
                "node3",
                "node4",
                "@proxygroup",
                "ssh://h",
                "@other"
            ]
        );
        assert!(Aliases::parse("", f).unwrap().get("x").is_none());
    }

    #[test]
    fn alias_loops_are_refused_with_the_chain() {
        let f = Path::new("s/alias.yaml");
        let e = Aliases::parse("a: ['@b']\nb: ['n', '@c']\nc: ['@a']\n", f).unwrap_err();
        assert_eq!(e.to_string(), "s/alias.yaml: alias loop: a -> b -> c -> a");
        let e = Aliases::parse("a: ['@a']\n", f).unwrap_err();
        assert_eq!(e.to_string(), "s/alias.yaml: alias loop: a -> a");
    }

    /// A hostile deployment.yaml: aliases that expand a billion times, or nesting a
    /// hundred thousand deep, is refused by the parser's budget, not expanded or
    /// recursed into (memory, stack).
    #[test]
    fn billion_laughs_and_deep_nesting_are_refused() {
        let mut laughs = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let mut prev = 'a';
        for c in 'b'..='j' {
            laughs.push_str(&format!("{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
            prev = c;
        }
        laughs.push_str("description: *j\n");
        assert!(Deployment::parse(&laughs, file()).is_err());
        let deep = format!(
            "description: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(Deployment::parse(&deep, file()).is_err());
    }
}
