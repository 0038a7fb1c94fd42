//! The INI dialect and the typed configurations built on it: `Ini::parse`,
//! `AgentConfig::parse`, `Jobs::parse` and `JobTemplate::parse` / `argv`.
//!
//! Invariants checked:
//! * no parser panics on any text (`AgentConfig` is skipped for inputs with a host
//!   name in `[allow::hosts]`, which it would resolve through DNS: see
//!   `resolves_nothing`);
//! * a parsed `Ini` is well formed (non-empty keys, trimmed section names without
//!   brackets, 1-based increasing entry lines);
//! * round trip: the `Ini` written back in canonical form (`[name]` then
//!   `key = value` / `key[] = value` lines) parses to the same sections and entries
//!   (line numbers aside), and the typed configs built from it agree with the
//!   original's (`AgentConfig` equal up to line numbers, `Jobs` equal in success);
//! * for every template that parses: `argv` accepts arguments without NUL, never lets
//!   them change the program (first word), ignores them without `%s`, and `display` is
//!   `argv` joined with spaces.

#![no_main]

use std::path::Path;

use deploy_common::config::agent::AgentConfig;
use deploy_common::config::ini::Ini;
use deploy_common::config::jobs::{JobTemplate, Jobs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(ini) = Ini::parse(text, Path::new("fuzz.ini")) {
        check_ini(&ini);
        let canonical = write_canonical(&ini);
        let again = Ini::parse(&canonical, Path::new("fuzz.ini"))
            .unwrap_or_else(|e| panic!("canonical form {canonical:?} does not parse: {e}"));
        assert_eq!(shape(&ini), shape(&again), "canonical form {canonical:?}");

        if resolves_nothing(&ini) {
            let agent = AgentConfig::parse(text, Path::new("/tmp/fuzz.ini"));
            // Only the implicit section may differ (it gains a header when written
            // back), so compare with the canonical form's config when there is none.
            if ini.sections().iter().all(|s| s.header_line().is_some()) {
                let again = AgentConfig::parse(&canonical, Path::new("/tmp/fuzz.ini"));
                match (agent, again) {
                    (Ok(a), Ok(b)) => assert_eq!(without_lines(a), without_lines(b)),
                    (Err(_), Err(_)) => {}
                    (a, b) => panic!("AgentConfig differs after a round trip: {a:?} vs {b:?}"),
                }
            }
        }
        let jobs = Jobs::parse(text, Path::new("/tmp/fuzz_exec.ini"));
        let jobs_again = Jobs::parse(&canonical, Path::new("/tmp/fuzz_exec.ini"));
        assert_eq!(
            jobs.is_ok(),
            jobs_again.is_ok(),
            "Jobs differ after a round trip"
        );
        if let Ok(jobs) = jobs {
            for name in jobs.names() {
                check_template(jobs.get(name).expect("listed job"));
            }
        }
    }

    if let Ok(template) = JobTemplate::parse(text) {
        check_template(&template);
    }
});

/// `false` if `AgentConfig` would resolve a host name: an `[allow::hosts]` entry that is
/// not an address or network but looks like a name (the test `HostAllowList::push_spec`
/// applies). Resolving would send DNS queries for fuzzer-made names, be slow, and make
/// the result depend on the network, so such inputs skip the typed agent config.
fn resolves_nothing(ini: &Ini) -> bool {
    let Some(section) = ini.section("allow::hosts") else {
        return true;
    };
    !section.entries().iter().any(|e| {
        let spec = e.value.trim();
        !spec.is_empty()
            && spec.len() <= 253
            && spec.bytes().any(|b| b.is_ascii_alphabetic())
            && spec
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    })
}

fn check_ini(ini: &Ini) {
    for section in ini.sections() {
        let name = section.name();
        assert!(!name.is_empty(), "empty section name");
        assert_eq!(name, name.trim(), "section name not trimmed");
        assert!(
            !name.contains(['[', ']']),
            "brackets in section name {name:?}"
        );
        for e in section.entries() {
            assert!(!e.key.is_empty(), "empty key");
            assert!(e.line >= 1);
            let _ = section.get(&e.key);
            let _ = section.list(&e.key).count();
        }
        for pair in section.entries().windows(2) {
            assert!(pair[0].line < pair[1].line, "entries out of file order");
        }
        if let Some(line) = section.header_line() {
            assert!(line > 0);
        }
    }
}

/// The ini in canonical form: every section with a header, one entry per line.
fn write_canonical(ini: &Ini) -> String {
    let mut out = String::new();
    for section in ini.sections() {
        out.push('[');
        out.push_str(section.name());
        out.push_str("]\n");
        for e in section.entries() {
            out.push_str(&e.written_key());
            out.push_str(" = ");
            out.push_str(&e.value);
            out.push('\n');
        }
    }
    out
}

type Shape<'a> = Vec<(&'a str, Vec<(&'a str, &'a str, bool)>)>;

/// Sections and entries without line numbers.
fn shape(ini: &Ini) -> Shape<'_> {
    ini.sections()
        .iter()
        .map(|s| {
            let entries = s
                .entries()
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str(), e.list))
                .collect();
            (s.name(), entries)
        })
        .collect()
}

fn without_lines(mut config: AgentConfig) -> AgentConfig {
    for ignored in &mut config.agent.ignored {
        ignored.line = 0;
    }
    config
}

fn check_template(template: &JobTemplate) {
    let bare = template.argv(&[]).expect("argv without arguments");
    assert!(!bare.is_empty(), "no program in {template:?}");
    assert!(!bare[0].is_empty(), "empty program in {template:?}");

    let args: Vec<String> = vec!["a;b".into(), "$(x) `y`".into(), String::new()];
    let argv = template.argv(&args).expect("argv with arguments");
    assert_eq!(argv[0], bare[0], "arguments changed the program");
    if !template.takes_args() {
        assert_eq!(argv, bare, "arguments used without %s");
    }
    assert_eq!(template.display(&args), argv.join(" "));
    assert!(
        template.argv(&["x\0y".into()]).is_err(),
        "NUL argument accepted"
    );

    let reparsed = JobTemplate::parse(template.template()).expect("template reparses");
    assert_eq!(&reparsed, template);
}
