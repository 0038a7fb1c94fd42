//! Releases on `ssh://` hosts: the agents' release orders (`deploy` in phases,
//! `releases`, `rollback`, `confirm`) turned into `run` requests whose command is a
//! generated POSIX `sh` script, driven by this client, on the same layout as an agent's
//! (`deploy_release::layout`), so that a host can be handled by either transport.
//!
//! ```text
//! <dest>.releases/<id>/   .staging-<id>/   .download-<id>/ (the artifact, while prepared)
//!   .meta/<id>.json   .meta/<id>.manifest   .history (JSON lines)
//!   .pending-confirm ({id, previous, deadline})   .lock (flock)
//! <dest> -> <dest>.releases/<id>     ln -s TARGET TMP && mv -T TMP DEST (rename(2))
//!
//! prepare   --fetch=client (default): once, here: fetch, verify, confined unpack
//!           ─► the tree streamed into .staging-<id> (SSH upload) ─► pre ─► chmod, mv -T
//!           --fetch=host: curl -fsSL | cp (file://) ─► sha256sum -c (or md5/sha1/sha512)
//!           ─► pre ─► tar -t (absolute or `..` names refused) ─► tar -x -C .staging-<id>
//!           ─► chmod dest_mode ─► mv -T to <id> ─► .meta/<id>.json, .meta/<id>.manifest
//! switch    flock .lock ─► link swap ─► .history ─► states ─► .pending-confirm (and a
//!           detached reverter) ─► prune to keep K (never current or previous)
//!           ─► unlock ─► post ─► success | failure (the log on stdin)
//! abort     the prepared release removed (never the current one)
//! releases  the records listed; rollback and confirm under the lock, as on an agent
//! ```
//!
//! # Design
//!
//! The client parses and renders the manifest itself (with its own environment: there
//! is no agent to do it), once per run ([`SshReleases`] keeps it), and turns every
//! phase into a script in which every value is a single-quoted literal ([`quote`]).
//! The script writes its log to a temporary file, prints it at the end, then one JSON
//! line, its result (`{"return":"true","id":…,"switched_at":…}`); [`record`] turns that
//! back into the reply an agent gives, so the rollout, the renderers and the exit codes
//! do not care which transport a host uses. [`SshReleases`] is the seam: a
//! [`Transport`] wrapped around the SSH one, translating the release orders
//! ([`translate`]) and passing every other order through.
//!
//! Paths: `dest` (the manifest's, or `--dest`) and `releases_dir` may hold `%h` and `%p`
//! (the host and port as written), expanded per host as `--root` and `--lock-file` are,
//! so that hosts sharing a file system each have their own. Sources are those of the
//! agents with `--fetch=client` (the client fetches them); with `--fetch=host`, `file://`
//! (a path on the host) and `http(s)://` (fetched by the host with curl). A `checksum` is
//! required; the strategy must be `release`.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use deploy_common::order::release::{Phase, ReleaseSpec};
use deploy_common::order::{object, Reply, Request};
use deploy_common::target::{expand, Target};
use deploy_common::transport::{BoxFuture, Outcome, Transport};
use deploy_common::wire::message::{Event, Stream, TaggedEvent};
use deploy_release::layout::{self, Event as HistoryEvent, Listed, Meta, Pending, Releases};
use deploy_release::manifest::{Algorithm, Strategy};
use deploy_release::Manifest;
use serde_json::Value;
use tokio::sync::mpsc;

/// The largest manifest fetched.
const MAX_MANIFEST: u64 = 1 << 20;

/// A value that cannot be put in a shell script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} holds a NUL byte, which no shell argument can carry")]
pub struct QuoteError {
    /// What the value is.
    pub what: &'static str,
}

/// Quotes `value` as one POSIX shell word: `'…'`, a `'` written `'\''`. Inside single
/// quotes nothing is special (`$`, `` ` ``, `\`, `"`, newlines, globs), so the word is
/// the value, byte for byte; only NUL cannot be carried.
pub fn quote(what: &'static str, value: &str) -> Result<String, QuoteError> {
    if value.contains('\0') {
        return Err(QuoteError { what });
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Ok(out)
}

/// The manifest of a run, as this client rendered it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Parsed.
    pub manifest: Manifest,
    /// The rendered text (kept with the release).
    pub rendered: String,
}

/// Reads (a URL) or takes (inline) the manifest of `spec`, renders it with this
/// process's environment and parses it.
pub async fn load(spec: &ReleaseSpec) -> Result<Loaded, String> {
    let raw = if !spec.manifest_url.is_empty() {
        let limits = deploy_release::fetch::Limits::default();
        deploy_release::fetch::fetch_text(&spec.manifest_url, &limits, MAX_MANIFEST)
            .await
            .map_err(|e| format!("manifest {}: {e}", spec.manifest_url))?
    } else if !spec.manifest.is_empty() {
        spec.manifest.clone()
    } else {
        return Err("deploy needs a manifest (URL or inline)".to_owned());
    };
    let rendered = deploy_release::manifest::render(&raw, |k| std::env::var(k).ok())
        .map_err(|e| e.to_string())?;
    let manifest = Manifest::parse_rendered(&rendered).map_err(|e| e.to_string())?;
    for key in &manifest.unknown_keys {
        tracing::warn!(key = %key, "manifest key not understood; ignored");
    }
    Ok(Loaded { manifest, rendered })
}

/// What a translated request was, to make its reply from the script's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `deploy`, phase prepare; `dest` as the rollout knows it (unexpanded).
    Prepare {
        /// The manifest's dest.
        dest: String,
    },
    /// `deploy`, phase switch.
    Switch {
        /// The dest as asked.
        dest: String,
    },
    /// `deploy`, phase all (prepare then switch).
    All {
        /// The manifest's dest.
        dest: String,
    },
    /// `deploy`, phase abort.
    Abort {
        /// The release discarded.
        id: String,
    },
    /// `releases`.
    Releases,
    /// `rollback`.
    Rollback,
    /// `confirm`.
    Confirm,
}

impl Kind {
    fn failed(&self) -> &'static str {
        match self {
            Kind::Prepare { .. } => "prepare failed",
            Kind::Switch { .. } => "switch failed",
            Kind::All { .. } => "deploy failed",
            Kind::Abort { .. } => "abort failed",
            Kind::Releases => "releases failed",
            Kind::Rollback => "rollback failed",
            Kind::Confirm => "confirm failed",
        }
    }
}

/// Whether `order` is one [`translate`] handles.
pub fn is_release_order(order: &str) -> bool {
    matches!(order, "deploy" | "releases" | "rollback" | "confirm")
}

/// A release id or prefix as written by this client or read from a host: letters,
/// digits, `.`, `_` and `-`, not starting with `.`.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn bad(code: u16, text: impl Into<String>) -> Reply {
    Reply::error(code, text.into())
}

/// The layout of `dest` (with `releases_dir`) on `target`: `%h`/`%p` expanded.
fn layout_for(target: &Target, dest: &str, releases_dir: &str) -> Result<Releases, Reply> {
    let dest = expand(dest, target, &[]);
    if !dest.starts_with('/') {
        return Err(bad(400, format!("dest {dest:?} must be an absolute path")));
    }
    let dir = (!releases_dir.is_empty()).then(|| expand(releases_dir, target, &[]));
    if let Some(dir) = &dir {
        if !dir.starts_with('/') {
            return Err(bad(
                400,
                format!("releases_dir {dir:?} must be an absolute path"),
            ));
        }
    }
    Ok(Releases::new(
        Path::new(&dest),
        dir.as_deref().map(Path::new),
    ))
}

/// The script's functions and variables, then its steps, as a `run` request for `sh -s`.
struct Script {
    text: String,
}

impl Script {
    /// The common head: strict-ish shell, C collation (globs and `sort` bytewise, as
    /// Rust sorts ids), the log captured, the layout's helpers.
    fn new(releases: &Releases, who: &str, message: &str) -> Result<Script, Reply> {
        let q = |what, v: &str| quote(what, v).map_err(|e| bad(400, e.to_string()));
        let json = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".to_owned());
        let mut text = String::new();
        text.push_str(&format!(
            "D={}\nR={}\nWHO={}\nMSG={}\n",
            q("dest", &releases.dest().to_string_lossy())?,
            q("releases_dir", &releases.dir().to_string_lossy())?,
            q("who", &json(who))?,
            q("message", &json(message))?,
        ));
        text.push_str(HEAD);
        Ok(Script { text })
    }

    fn var(&mut self, name: &str, what: &'static str, value: &str) -> Result<(), Reply> {
        let value = quote(what, value).map_err(|e| bad(400, e.to_string()))?;
        self.text.push_str(&format!("{name}={value}\n"));
        Ok(())
    }

    fn hooks(&mut self, kind: &str, lines: &[String]) -> Result<(), Reply> {
        for line in lines {
            let line = quote("a command", line).map_err(|e| bad(400, e.to_string()))?;
            self.text.push_str(&format!("hook {kind} {line}\n"));
        }
        Ok(())
    }

    /// The `run` request: `sh -s`, the script on its standard input. The remote login
    /// shell (bash, csh, fish: whichever) sees only `sh -s`, so the script's newlines
    /// and quotes are `sh`'s alone, and its size is not bounded by the command line's.
    /// The script is one brace group, which `sh` reads whole before running any of it,
    /// with its standard input from `/dev/null`: nothing in it can read the rest of the
    /// script.
    fn into_request(self, original: &Request) -> Request {
        let stdin = format!("{{\n{}\n}} </dev/null\n", self.text);
        Request {
            order: "run".to_owned(),
            argv: vec!["sh".to_owned(), "-s".to_owned()],
            stdin: Some(base64::engine::general_purpose::STANDARD.encode(stdin)),
            sudo: original.sudo,
            follow: original.follow,
            ..Request::default()
        }
    }
}

/// The helpers every script starts with. The result line goes to the real standard
/// output (fd 3) after the log; `fail` runs `on_fail` (cleanup, failure hooks) first.
const HEAD: &str = r#"set -u
LC_ALL=C; export LC_ALL
ECODE=500
L=$(mktemp "${TMPDIR:-/tmp}/deploy-release.XXXXXX") || exit 70
trap 'rm -f "$L" "$L.in"' EXIT
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM
exec 3>&1 >"$L" 2>&1
finish() { cat "$L" >&3; rm -f "$L" "$L.in"; printf '%s\n' "$1" >&3; }
on_fail() { :; }
fail() { printf 'error: %s\n' "$*"; on_fail; finish "{\"return\":\"false\",\"code\":\"$ECODE\"}"; exit 1; }
ok_id() { case $1 in ''|.*|*[!A-Za-z0-9._-]*) return 1;; esac; return 0; }
ids() { for p in "$R"/*; do [ -d "$p" ] && [ ! -L "$p" ] || continue; n=${p##*/}; ok_id "$n" && printf '%s\n' "$n"; done; return 0; }
cur() { t=$(readlink "$D" 2>/dev/null) || return 0; case $t in "$R"/*) n=${t#"$R"/}; case $n in */*) ;; *) ok_id "$n" && printf '%s' "$n";; esac;; esac; return 0; }
prev() { c=$(cur); [ -n "$c" ] || return 0; p=; for n in $(ids); do [ "$n" = "$c" ] && break; p=$n; done; printf '%s' "$p"; }
now() { date -u +%Y-%m-%dT%H:%M:%S.000Z; }
ms() { t=$(date +%s%3N 2>/dev/null); case $t in ''|*[!0-9]*) t=$(date +%s)000;; esac; printf '%s' "$t"; }
hist() { printf '{"time":"%s","action":"%s","id":"%s","from":"%s","who":%s,"message":%s}\n' "$(now)" "$1" "$2" "$3" "$4" "$5" >>"$R/.history" || fail "cannot write $R/.history"; }
state() { f="$R/.meta/$1.json"; if [ -f "$f" ]; then sed 's/"state": *"[A-Za-z]*"/"state":"'"$2"'"/' "$f" >"$f.tmp" && mv -f "$f.tmp" "$f"; else printf '{"id":"%s","state":"%s"}\n' "$1" "$2" >"$f"; fi; }
lock() { mkdir -p "$R/.meta" || fail "cannot create $R/.meta"; exec 9>>"$R/.lock" || fail "cannot open $R/.lock"; flock 9 || fail "cannot lock $R/.lock"; }
unlock() { exec 9>&-; }
switch_to() {
  [ -d "$R/$1" ] || fail "no release matches \"$1\""
  if [ -L "$D" ]; then :; elif [ -e "$D" ]; then fail "$D exists and is not a symbolic link to a release: move it away once, then deploy again"; fi
  FROM=$(cur)
  dir=$(dirname -- "$D"); mkdir -p -- "$dir" || fail "cannot create $dir"
  tmp="$dir/.${D##*/}.switch-$$"
  rm -f -- "$tmp"
  if ! { ln -s -- "$R/$1" "$tmp" && mv -T -- "$tmp" "$D"; }; then rm -f -- "$tmp"; fail "cannot switch $D"; fi
  SWITCHED_AT=$(ms)
}
wait_until() {
  [ -n "$1" ] || return 0
  d=$(( $1 - $(ms) ))
  if [ "$d" -gt 10000 ]; then printf 'the switch instant is %s s ahead of this host'"'"'s clock: switching now\n' "$((d / 1000))"; return 0; fi
  [ "$d" -gt 0 ] || return 0
  sleep "$((d / 1000)).$(printf '%03d' "$((d % 1000))")" 2>/dev/null || sleep "$(( (d + 999) / 1000 ))"
}
overdue() {
  [ -f "$R/.pending-confirm" ] || return 1
  pid=$(sed -n 's/.*"id": *"\([A-Za-z0-9._-]*\)".*/\1/p' "$R/.pending-confirm")
  pprev=$(sed -n 's/.*"previous": *"\([A-Za-z0-9._-]*\)".*/\1/p' "$R/.pending-confirm")
  dl=$(sed -n 's/.*"deadline": *\([0-9]*\).*/\1/p' "$R/.pending-confirm")
  if [ -z "$dl" ] || [ "$(date +%s)" -lt "$dl" ]; then return 1; fi
  if [ -n "$pid" ] && [ -n "$pprev" ] && [ "$(cur)" = "$pid" ]; then
    switch_to "$pprev"
    hist revert "$pprev" "$pid" '"deploy (not confirmed in time)"' '""'
    state "$pid" reverted
    state "$pprev" active
    printf 'reverted %s to %s: not confirmed in time\n' "$pid" "$pprev"
  fi
  rm -f "$R/.pending-confirm"
  return 0
}
hook() { printf '%s: %s\n' "$1" "$2"; ( cd / && DEPLOY_DEST="$D" DEPLOY_RELEASE="${ID:-}" exec sh -c "$2" ) </dev/null || fail "$1 command failed: $2 exit status $?"; }
hook_log() { cp "$L" "$L.in"; printf '%s: %s\n' "$1" "$2"; ( cd / && DEPLOY_DEST="$D" DEPLOY_RELEASE="${ID:-}" exec sh -c "$2" ) <"$L.in" || printf '%s command failed: %s exit status %s\n' "$1" "$2" "$?"; }
"#;

/// Prepare: fetch, verify, pre, unpack into `.staging-<id>`, then `<id>` and its record.
/// `staged`: the client fetched (that many bytes), verified and unpacked the release
/// itself and sent the tree into `.staging-<id>` (`--fetch=client`); the host only
/// runs `pre` and files it.
fn prepare_steps(
    script: &mut Script,
    loaded: &Loaded,
    id: &str,
    meta: &Meta,
    staged: Option<u64>,
) -> Result<(), Reply> {
    let staged_bytes = staged;
    let staged = staged.is_some();
    let m = &loaded.manifest;
    let (Some(src), Some(checksum)) = (&m.src, &m.checksum) else {
        return Err(bad(
            501,
            "over SSH a deploy needs `src` and its `checksum` (commands-only manifests go to agents)",
        ));
    };
    let host_fetches = ["file://", "http://", "https://"]
        .iter()
        .any(|scheme| src.starts_with(scheme));
    if !staged && !host_fetches {
        return Err(bad(
            501,
            format!("src {src}: over SSH the host fetches file:// or http(s):// sources only (--fetch=client fetches any source on this side)"),
        ));
    }
    let tool = match checksum.algorithm {
        Algorithm::Md5 => "md5sum",
        Algorithm::Sha1 => "sha1sum",
        Algorithm::Sha256 => "sha256sum",
        Algorithm::Sha512 => "sha512sum",
    };
    script.var("ID", "id", id)?;
    script.var("SRC", "src", src)?;
    script.var("SUM", "checksum", &checksum.hex)?;
    script.var("ALG", "checksum", checksum.algorithm.as_str())?;
    script.var("HASH", "checksum", tool)?;
    script.var("MODE", "dest_mode", &format!("{:o}", m.dest_mode))?;
    script.var(
        "META",
        "the record",
        &serde_json::to_string(meta).unwrap_or_default(),
    )?;
    script.var("MANIFEST", "the manifest", &loaded.rendered)?;
    script.var("STAGED", "a flag", if staged { "1" } else { "" })?;
    script.text.push_str(PREPARE_CHECK);
    if let Some(bytes) = staged_bytes {
        script.var("BYTES", "a size", &bytes.to_string())?;
        script.text.push_str(PREPARE_STAGED);
        script.hooks("pre", &m.commands.pre)?;
    } else {
        script.text.push_str(PREPARE_FETCH);
        script.hooks("pre", &m.commands.pre)?;
        script.text.push_str(PREPARE_UNPACK);
    }
    script.text.push_str(PREPARE_FILE);
    Ok(())
}

/// Both ways: the id must be newer than every release and staging tree (but the one
/// the client sent for it).
const PREPARE_CHECK: &str = r#"W="$R/.download-$ID"; S="$R/.staging-$ID"
on_fail() { rm -rf -- "$W" "$S"; }
mkdir -p "$R/.meta" || fail "cannot create $R/.meta"
newest=$(for p in "$R"/* "$R"/.staging-*; do [ -d "$p" ] || continue; [ -n "$STAGED" ] && [ "$p" = "$S" ] && continue; n=${p##*/}; n=${n#.staging-}; ok_id "$n" && printf '%s\n' "$n"; done | sort | tail -n 1)
if [ -n "$newest" ]; then
  last=$(printf '%s\n%s\n' "$newest" "$ID" | sort | tail -n 1)
  if [ "$newest" = "$ID" ] || [ "$last" != "$ID" ]; then ECODE=409; fail "release $ID would not be newer than $newest (is the caller's clock behind?)"; fi
fi
"#;

/// `--fetch=client`: the tree is there already, checked and unpacked by the client.
const PREPARE_STAGED: &str = r#"[ -d "$S" ] && [ ! -L "$S" ] || fail "the release the client sent is not in $S"
printf 'received %s (fetched and verified by the client) into %s\n' "$SRC" "$S"
"#;

const PREPARE_FETCH: &str = r#"rm -rf -- "$W"; mkdir -m 700 -- "$W" || fail "cannot create $W"
printf 'fetching %s\n' "$SRC"
case $SRC in
  file://*) cp -- "${SRC#file://}" "$W/artifact" || fail "cannot fetch $SRC";;
  *) curl -fsSL --proto =http,https --proto-redir =http,https --max-redirs 5 --connect-timeout 30 -o "$W/artifact" -- "$SRC" || fail "cannot fetch $SRC";;
esac
BYTES=$(wc -c <"$W/artifact" | tr -d ' ')
printf 'Wrote %s bytes to %s\n' "$BYTES" "$W/artifact"
if ! printf '%s  %s\n' "$SUM" "$W/artifact" | "$HASH" -c --status -; then
  got=$("$HASH" <"$W/artifact"); got=${got%% *}
  fail "checksum mismatch: expected $ALG:$SUM, got $ALG:$got"
fi
"#;

const PREPARE_UNPACK: &str = r#"tar -tf "$W/artifact" >"$W/names" || fail "$SRC: not a readable archive (tar, tar.gz, tar.zst), or truncated"
if grep -E -q '^/|(^|/)\.\.(/|$)' "$W/names"; then fail "$SRC: refusing an archive with absolute or .. names: $(grep -E '^/|(^|/)\.\.(/|$)' "$W/names" | head -n 1)"; fi
mkdir -- "$S" || fail "cannot create $S"
tar -x --no-same-owner -f "$W/artifact" -C "$S" || fail "cannot unpack $SRC"
"#;

/// Both ways: the staging tree becomes the release, with its records.
const PREPARE_FILE: &str = r#"chmod "$MODE" "$S" || fail "cannot chmod $S"
mv -T -- "$S" "$R/$ID" || fail "cannot rename into $R/$ID"
printf '%s\n' "$META" >"$R/.meta/$ID.json.tmp" && mv -f "$R/.meta/$ID.json.tmp" "$R/.meta/$ID.json" || fail "cannot write $R/.meta/$ID.json"
printf '%s' "$MANIFEST" >"$R/.meta/$ID.manifest.tmp" && mv -f "$R/.meta/$ID.manifest.tmp" "$R/.meta/$ID.manifest" || fail "cannot write $R/.meta/$ID.manifest"
rm -rf -- "$W"
on_fail() { :; }
printf 'prepared release %s\n' "$ID"
"#;

/// Switch: under the lock, the link swap and its record; then post and the hooks.
fn switch_steps(
    script: &mut Script,
    manifest: Option<&Manifest>,
    id: &str,
    keep: usize,
    confirm_within: Option<u64>,
    revert: Option<String>,
    at: Option<i64>,
) -> Result<(), Reply> {
    script.var("ID", "id", id)?;
    script.var("KEEP", "keep", &keep.to_string())?;
    script.var(
        "AT",
        "the switch instant",
        &at.map(|a| a.to_string()).unwrap_or_default(),
    )?;
    if let (Some(within), Some(revert)) = (confirm_within, revert) {
        script.var("WITHIN", "confirm_within", &within.to_string())?;
        script.var("REVERT", "the reverter", &revert)?;
    } else {
        script.text.push_str("WITHIN=\n");
    }
    let empty = Vec::new();
    let (post, success, failure) = match manifest {
        Some(m) => (&m.commands.post, &m.commands.success, &m.commands.failure),
        None => (&empty, &empty, &empty),
    };
    // A failure from here on runs the failure hooks with the log, as an agent does.
    script
        .text
        .push_str("on_fail() {\n  unlock\n  printf 'deploy failed\\n'\n");
    for line in failure {
        let line = quote("a command", line).map_err(|e| bad(400, e.to_string()))?;
        script
            .text
            .push_str(&format!("  hook_log failure {line}\n"));
    }
    script.text.push_str("  :\n}\n");
    script.text.push_str(SWITCH);
    script.hooks("post", post)?;
    script.text.push_str("on_fail() { :; }\n");
    for line in success {
        let line = quote("a command", line).map_err(|e| bad(400, e.to_string()))?;
        script.text.push_str(&format!("hook_log success {line}\n"));
    }
    Ok(())
}

const SWITCH: &str = r#"lock
overdue || :
[ -d "$R/$ID" ] || { ECODE=404; fail "no prepared release $ID"; }
wait_until "$AT"
switch_to "$ID"
hist switch "$ID" "$FROM" "$WHO" "$MSG"
state "$ID" active
if [ -n "$FROM" ] && [ "$FROM" != "$ID" ]; then state "$FROM" inactive; fi
if [ -n "$WITHIN" ] && [ -n "$FROM" ]; then
  deadline=$(( $(date +%s) + WITHIN ))
  printf '{"id":"%s","previous":"%s","deadline":%s}' "$ID" "$FROM" "$deadline" >"$R/.pending-confirm.tmp" && mv -f "$R/.pending-confirm.tmp" "$R/.pending-confirm" || fail "cannot write $R/.pending-confirm"
  setsid sh -c "$REVERT" </dev/null >/dev/null 2>&1 9>&- 3>&- &
else
  rm -f "$R/.pending-confirm"
fi
c=$ID; p=$(prev); n=$(ids | wc -l); x=$((n - KEEP))
for i in $(ids); do
  [ "$x" -gt 0 ] || break
  x=$((x - 1))
  if [ "$i" = "$c" ] || [ "$i" = "$p" ]; then continue; fi
  rm -rf -- "$R/$i" && rm -f -- "$R/.meta/$i.json" "$R/.meta/$i.manifest" && printf 'pruned %s\n' "$i"
done
if [ -n "$FROM" ]; then printf 'switched %s to %s (from %s)\n' "$D" "$ID" "$FROM"; else printf 'switched %s to %s\n' "$D" "$ID"; fi
unlock
"#;

/// The detached reverter of a switch made with `confirm_within`: at the deadline, under
/// the lock, back to the previous release unless confirmed (or switched again).
fn reverter(releases: &Releases, within: u64) -> Result<String, Reply> {
    let mut s = Script::new(releases, "deploy (not confirmed in time)", "")?;
    s.var("WITHIN", "confirm_within", &within.to_string())?;
    s.text.push_str(
        r#"sleep "$WITHIN"
lock
overdue || :
finish '{"return":"true"}'
"#,
    );
    Ok(s.text)
}

const ABORT: &str = r#"lock
if [ "$(cur)" = "$ID" ]; then ECODE=409; fail "$ID is the current release"; fi
rm -rf -- "$R/$ID"
[ -f "$R/.meta/$ID.json" ] && state "$ID" discarded
finish "{\"return\":\"true\",\"id\":\"$ID\"}"
"#;

const LIST: &str = r#"lock
overdue >/dev/null || :
unlock
printf 'current %s\n' "$(cur)"
for n in $(ids); do
  printf 'release %s ' "$n"; if [ -f "$R/.meta/$n.json" ]; then base64 <"$R/.meta/$n.json" | tr -d '\n'; fi; printf '\n'
done
printf 'history '; if [ -f "$R/.history" ]; then base64 <"$R/.history" | tr -d '\n'; fi; printf '\n'
printf 'pending '; if [ -f "$R/.pending-confirm" ]; then base64 <"$R/.pending-confirm" | tr -d '\n'; fi; printf '\n'
finish '{"return":"true"}'
"#;

const ROLLBACK: &str = r#"lock
overdue || :
ECODE=409
if [ -n "$P" ]; then
  T=; k=0; m=
  for n in $(ids); do
    h=${n#*-}
    case $n in "$P"*) ;; *) case $h in "$P"*) ;; *) continue;; esac;; esac
    T=$n; k=$((k + 1)); m="$m${m:+, }$n"
  done
  [ "$k" -gt 0 ] || fail "no release matches \"$P\""
  [ "$k" -eq 1 ] || fail "\"$P\" matches several releases: $m"
else
  T=$(prev)
  [ -n "$T" ] || fail "there is no previous release to roll back to"
fi
switch_to "$T"
hist rollback "$T" "$FROM" "$WHO" "$MSG"
state "$T" active
if [ -n "$FROM" ] && [ "$FROM" != "$T" ]; then state "$FROM" inactive; fi
rm -f "$R/.pending-confirm"
unlock
finish "{\"return\":\"true\",\"id\":\"$T\",\"previous\":\"$FROM\",\"switched_at\":\"$SWITCHED_AT\"}"
"#;

const CONFIRM: &str = r#"lock
if [ ! -f "$R/.pending-confirm" ]; then ECODE=409; fail "no switch waits for a confirm"; fi
if overdue; then ECODE=409; fail "the confirm came after the deadline: $pid was reverted to $pprev"; fi
id=$(sed -n 's/.*"id": *"\([A-Za-z0-9._-]*\)".*/\1/p' "$R/.pending-confirm")
rm -f "$R/.pending-confirm" || fail "cannot remove $R/.pending-confirm"
hist confirm "$id" "" "$WHO" '""'
unlock
finish "{\"return\":\"true\",\"id\":\"$id\"}"
"#;

/// The release fields of `request`.
fn spec_of(request: &Request) -> Result<&ReleaseSpec, Reply> {
    request
        .release
        .as_deref()
        .ok_or_else(|| bad(400, format!("{} needs its release fields", request.order)))
}

fn who(spec: &ReleaseSpec, target: &Target) -> String {
    if spec.who.is_empty() {
        format!(
            "{}@{}",
            target.user.as_deref().unwrap_or("ssh"),
            target.host
        )
    } else {
        spec.who.clone()
    }
}

/// The `run` request that does `request` (a release order) on the SSH host `target`,
/// and what it is. `loaded` is the run's manifest (for `deploy`).
pub fn translate(
    request: &Request,
    target: &Target,
    loaded: Option<&Loaded>,
    staged: Option<u64>,
) -> Result<(Request, Kind), Reply> {
    let spec = spec_of(request)?;
    let who = who(spec, target);
    // The layout a manifest names, when the request is about its dest.
    // (A switch or abort may come by id alone, without its dest, when the hosts of a
    // rollout reported different dests: the run's manifest then names it.)
    let from_manifest = |dest: &str| -> Option<&Loaded> {
        loaded.filter(|l| dest.is_empty() || l.manifest.dest.as_deref() == Some(dest))
    };
    let dest_of = |dest: &str| -> String {
        match from_manifest(dest) {
            Some(l) if dest.is_empty() => l.manifest.dest.clone().unwrap_or_default(),
            _ => dest.to_owned(),
        }
    };
    match (request.order.as_str(), spec.phase) {
        ("deploy", Phase::Prepare | Phase::All) => {
            let loaded = loaded.ok_or_else(|| bad(400, "deploy needs a manifest"))?;
            let m = &loaded.manifest;
            if m.strategy != Strategy::Release {
                return Err(bad(
                    501,
                    "over SSH a deploy needs `sync_strategy: release` (rsync and mv deploys go to agents)",
                ));
            }
            let dest = m.dest.clone().unwrap_or_default();
            let releases = layout_for(target, &dest, m.releases_dir.as_deref().unwrap_or(""))?;
            let stamp = if spec.id.is_empty() {
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string()
            } else {
                spec.id.clone()
            };
            if chrono::NaiveDateTime::parse_from_str(&stamp, "%Y%m%dT%H%M%S%.3fZ").is_err() {
                return Err(bad(400, format!("invalid release stamp {stamp:?}")));
            }
            let hash: String = m
                .checksum
                .as_ref()
                .map(|c| c.hex.chars().take(8).collect())
                .unwrap_or_default();
            let id = format!("{stamp}-{hash}");
            let meta = Meta {
                id: id.clone(),
                src: m.src.clone().unwrap_or_default(),
                checksum: m
                    .checksum
                    .as_ref()
                    .map(|c| format!("{}:{}", c.algorithm.as_str(), c.hex))
                    .unwrap_or_default(),
                manifest: spec.manifest_url.clone(),
                time: layout::now(),
                who: who.clone(),
                message: spec.message.clone(),
                state: "prepared".into(),
            };
            let mut script = Script::new(&releases, &who, &spec.message)?;
            prepare_steps(&mut script, loaded, &id, &meta, staged)?;
            let kind = if spec.phase == Phase::All {
                let revert = spec
                    .confirm_within
                    .map(|w| reverter(&releases, w))
                    .transpose()?;
                switch_steps(
                    &mut script,
                    Some(m),
                    &id,
                    m.keep,
                    spec.confirm_within,
                    revert,
                    None,
                )?;
                script.text.push_str(
                    "finish \"{\\\"return\\\":\\\"true\\\",\\\"id\\\":\\\"$ID\\\",\\\"previous\\\":\\\"$FROM\\\",\\\"switched_at\\\":\\\"$SWITCHED_AT\\\",\\\"bytes\\\":\\\"$BYTES\\\"}\"\n",
                );
                Kind::All { dest }
            } else {
                script
                    .text
                    .push_str("finish \"{\\\"return\\\":\\\"true\\\",\\\"id\\\":\\\"$ID\\\",\\\"bytes\\\":\\\"$BYTES\\\"}\"\n");
                Kind::Prepare { dest }
            };
            let run = script.into_request(request);
            Ok((run, kind))
        }
        ("deploy", Phase::Switch) => {
            if !valid_id(&spec.id) {
                return Err(bad(400, format!("invalid release id {:?}", spec.id)));
            }
            let kept = from_manifest(&spec.dest);
            let releases_dir = match (&spec.releases_dir, kept) {
                (d, _) if !d.is_empty() => d.clone(),
                (_, Some(l)) => l.manifest.releases_dir.clone().unwrap_or_default(),
                _ => String::new(),
            };
            let dest = dest_of(&spec.dest);
            let releases = layout_for(target, &dest, &releases_dir)?;
            let keep = kept.map_or(5, |l| l.manifest.keep);
            let revert = spec
                .confirm_within
                .map(|w| reverter(&releases, w))
                .transpose()?;
            let mut script = Script::new(&releases, &who, &spec.message)?;
            switch_steps(
                &mut script,
                kept.map(|l| &l.manifest),
                &spec.id,
                keep,
                spec.confirm_within,
                revert,
                spec.at,
            )?;
            script.text.push_str(
                "finish \"{\\\"return\\\":\\\"true\\\",\\\"id\\\":\\\"$ID\\\",\\\"previous\\\":\\\"$FROM\\\",\\\"switched_at\\\":\\\"$SWITCHED_AT\\\"}\"\n",
            );
            Ok((script.into_request(request), Kind::Switch { dest }))
        }
        ("deploy", Phase::Abort) => {
            if !valid_id(&spec.id) {
                return Err(bad(400, format!("invalid release id {:?}", spec.id)));
            }
            let releases_dir = match (&spec.releases_dir, from_manifest(&spec.dest)) {
                (d, _) if !d.is_empty() => d.clone(),
                (_, Some(l)) => l.manifest.releases_dir.clone().unwrap_or_default(),
                _ => String::new(),
            };
            let releases = layout_for(target, &dest_of(&spec.dest), &releases_dir)?;
            let mut script = Script::new(&releases, &who, &spec.message)?;
            script.var("ID", "id", &spec.id)?;
            script.text.push_str(ABORT);
            Ok((
                script.into_request(request),
                Kind::Abort {
                    id: spec.id.clone(),
                },
            ))
        }
        (order @ ("releases" | "rollback" | "confirm"), _) => {
            let releases = layout_for(target, &spec.dest, &spec.releases_dir)?;
            let mut script = Script::new(&releases, &who, &spec.message)?;
            let kind = match order {
                "releases" => {
                    script.text.push_str(LIST);
                    Kind::Releases
                }
                "rollback" => {
                    if !spec.id.is_empty() {
                        if spec.id.chars().count() < 3 {
                            return Err(bad(
                                409,
                                format!(
                                    "rollback failed: a release prefix needs at least 3 characters (got {:?})",
                                    spec.id
                                ),
                            ));
                        }
                        if !valid_id(&spec.id) {
                            return Err(bad(400, format!("invalid release id {:?}", spec.id)));
                        }
                    }
                    script.var("P", "id", &spec.id)?;
                    script.text.push_str(ROLLBACK);
                    Kind::Rollback
                }
                _ => {
                    script.text.push_str(CONFIRM);
                    Kind::Confirm
                }
            };
            Ok((script.into_request(request), kind))
        }
        (other, _) => Err(bad(501, format!("order {other:?} is not a release order"))),
    }
}

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

/// The script's output: its log lines and its result (the last line).
fn split_output(reply: &Reply) -> Option<(Vec<String>, serde_json::Map<String, Value>)> {
    let content = reply.content();
    let b64 = content.get("content")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let output = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = output.lines().map(str::to_owned).collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    let last = lines.pop()?;
    match serde_json::from_str::<Value>(&last) {
        Ok(Value::Object(result)) => Some((lines, result)),
        _ => None,
    }
}

fn log_b64(lines: &[String]) -> Value {
    let mut log = lines.join("\n");
    if !log.is_empty() {
        log.push('\n');
    }
    text(base64::engine::general_purpose::STANDARD.encode(log))
}

/// The reply an agent gives for `kind`, made from how the script's `run` ended (any
/// other outcome, unreachable or timed out, is kept as it is).
pub fn record(kind: &Kind, outcome: Outcome) -> Outcome {
    let Outcome::Reply(reply) = outcome else {
        return outcome;
    };
    if reply.code != 200 {
        return Outcome::Reply(reply);
    }
    let Some((lines, result)) = split_output(&reply) else {
        let content = reply.content();
        let code = content.get("code").and_then(Value::as_str).unwrap_or("?");
        let output = content
            .get("content")
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let tail: Vec<&str> = output.lines().rev().take(3).collect();
        return Outcome::Reply(Reply::error(
            500,
            format!(
                "{}: the script on the host gave no result (exit status {code}){}{}",
                kind.failed(),
                if tail.is_empty() { "" } else { ": " },
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ),
        ));
    };
    let field = |k: &str| {
        result
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    if field("return") != "true" {
        let code: u16 = field("code").parse().unwrap_or(500);
        let why = lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or("the script failed")
            .to_owned();
        let message = if *kind == Kind::Confirm && code == 409 {
            why
        } else {
            format!("{}: {why}", kind.failed())
        };
        return Outcome::Reply(Reply::error(code, message));
    }
    let body = match kind {
        Kind::Prepare { dest } => object([
            ("return", text("true")),
            ("phase", text("prepare")),
            ("dest", text(dest.clone())),
            ("id", text(field("id"))),
            ("bytes", text(field("bytes"))),
            ("log", log_b64(&lines)),
        ]),
        Kind::Switch { dest } => object([
            ("return", text("true")),
            ("phase", text("switch")),
            ("dest", text(dest.clone())),
            ("id", text(field("id"))),
            ("previous", text(field("previous"))),
            ("switched_at", text(field("switched_at"))),
            ("log", log_b64(&lines)),
        ]),
        Kind::All { dest } => object([
            ("return", text("true")),
            ("phase", text("all")),
            ("dest", text(dest.clone())),
            ("id", text(field("id"))),
            ("previous", text(field("previous"))),
            ("switched_at", text(field("switched_at"))),
            ("bytes", text(field("bytes"))),
            ("log", log_b64(&lines)),
        ]),
        Kind::Abort { id } => object([
            ("return", text("true")),
            ("phase", text("abort")),
            ("id", text(id.clone())),
        ]),
        Kind::Rollback => object([
            ("return", text("true")),
            ("id", text(field("id"))),
            ("previous", text(field("previous"))),
            ("switched_at", text(field("switched_at"))),
        ]),
        Kind::Confirm => object([("return", text("true")), ("id", text(field("id")))]),
        Kind::Releases => return Outcome::Reply(Reply::ok(listing(&lines))),
    };
    Outcome::Reply(Reply::ok(body))
}

/// The `releases` reply from the script's tagged lines (`current`, `release ID B64`,
/// `history B64`, `pending B64`), parsed as the Rust layout parses its files.
fn listing(lines: &[String]) -> serde_json::Map<String, Value> {
    let decode = |b64: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let mut current = String::new();
    let mut listed: Vec<Listed> = Vec::new();
    let mut history: Vec<HistoryEvent> = Vec::new();
    let mut pending: Option<Pending> = None;
    for line in lines {
        let (tag, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match tag {
            "current" => current = rest.trim().to_owned(),
            "release" => {
                let (id, b64) = rest.split_once(' ').unwrap_or((rest, ""));
                if !valid_id(id) {
                    continue;
                }
                let meta = serde_json::from_str::<Meta>(&decode(b64)).unwrap_or_else(|_| Meta {
                    id: id.to_owned(),
                    ..Meta::default()
                });
                listed.push(Listed {
                    current: false,
                    meta,
                });
            }
            "history" => {
                history = decode(rest)
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect();
            }
            "pending" => pending = serde_json::from_str(&decode(rest)).ok(),
            _ => {}
        }
    }
    listed.reverse();
    for l in &mut listed {
        l.current = l.meta.id == current;
    }
    object([
        ("return", text("true")),
        ("current", text(current)),
        (
            "releases",
            text(serde_json::to_string(&listed).unwrap_or_default()),
        ),
        (
            "history",
            text(serde_json::to_string(&history).unwrap_or_default()),
        ),
        (
            "pending",
            text(
                pending
                    .and_then(|p| serde_json::to_string(&p).ok())
                    .unwrap_or_default(),
            ),
        ),
    ])
}

/// Who fetches a release's artifact for SSH hosts (`--fetch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Fetch {
    /// Each host fetches it (`file://` on the host, or `http(s)://` with curl), checks
    /// it and unpacks it with its own `tar`.
    #[default]
    Host,
    /// This client fetches it once (any source: file, http(s), s3, rsync), checks it,
    /// unpacks it with the confined extractor, and streams the tree to every host.
    Client,
}

/// A release fetched, checked and unpacked on this side (`--fetch=client`), ready to
/// be sent to every host.
struct Local {
    /// Holds the tree; removed when the run ends.
    _dir: tempfile::TempDir,
    /// The release's time stamp (the id's first part), for every host.
    stamp: String,
    /// Bytes fetched.
    bytes: u64,
    /// The upload of the tree into the hosts' staging directory (`None`: an empty tree).
    upload: Option<deploy_common::upload::UploadSpec>,
}

/// The SSH transport with the release orders added.
pub struct SshReleases {
    inner: Arc<dyn Transport>,
    /// The run's manifest, read and rendered once for every host.
    manifest: tokio::sync::OnceCell<Result<Arc<Loaded>, String>>,
    /// Who fetches artifacts.
    fetch: Fetch,
    /// `--fetch=client`: the release, fetched once for every host.
    local: tokio::sync::OnceCell<Result<Arc<Local>, String>>,
}

impl SshReleases {
    /// Wraps the SSH transport `inner`; `fetch` says who fetches artifacts.
    pub fn new(inner: Arc<dyn Transport>, fetch: Fetch) -> SshReleases {
        SshReleases {
            inner,
            manifest: tokio::sync::OnceCell::new(),
            fetch,
            local: tokio::sync::OnceCell::new(),
        }
    }

    async fn loaded(&self, request: &Request) -> Result<Option<Arc<Loaded>>, Reply> {
        let Some(spec) = request.release.as_deref() else {
            return Ok(None);
        };
        let needs = request.order == "deploy" && matches!(spec.phase, Phase::Prepare | Phase::All);
        if !needs {
            return Ok(self.manifest.get().and_then(|r| r.as_ref().ok().cloned()));
        }
        let loaded = self
            .manifest
            .get_or_init(|| async { load(spec).await.map(Arc::new) })
            .await;
        match loaded {
            Ok(l) => Ok(Some(Arc::clone(l))),
            Err(why) => Err(Reply::error(400, why.clone())),
        }
    }

    /// `--fetch=client`, for a prepare: the release fetched, checked and unpacked here
    /// once (the first host to ask does it, the others wait for it).
    async fn local(&self, spec: &ReleaseSpec, loaded: &Loaded) -> Result<Arc<Local>, Reply> {
        let local = self
            .local
            .get_or_init(|| async { fetch_here(spec, loaded).await.map(Arc::new) })
            .await;
        local
            .as_ref()
            .map(Arc::clone)
            .map_err(|why| Reply::error(500, format!("prepare failed: {why}")))
    }

    /// Delivers `request` to `target` on the SSH transport, its streamed events
    /// dropped (a script's log reaches a follower from its result instead).
    async fn quietly(&self, target: &Target, request: &Request) -> Outcome {
        let (tx, mut rx) = mpsc::channel(64);
        let drain = async { while rx.recv().await.is_some() {} };
        let (outcome, ()) = tokio::join!(self.inner.deliver(target, request, tx), drain);
        outcome
    }

    /// Sends the client-side release to `target`'s staging directory; `Err` is the
    /// outcome to give instead of preparing.
    async fn send_tree(
        &self,
        target: &Target,
        request: &Request,
        local: &Local,
    ) -> Result<(), Outcome> {
        let Some(spec) = &local.upload else {
            return Ok(());
        };
        let upload = Request {
            order: "upload".to_owned(),
            upload: Some(Box::new(spec.clone())),
            sudo: request.sudo,
            ..Request::default()
        };
        match self.quietly(target, &upload).await {
            Outcome::Reply(reply) if reply.code == 200 => {
                let content = reply.content();
                if content.get("return").and_then(Value::as_str) == Some("true") {
                    return Ok(());
                }
                let output = content
                    .get("content")
                    .and_then(Value::as_str)
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .unwrap_or_default();
                Err(Outcome::Reply(Reply::error(
                    500,
                    format!(
                        "prepare failed: cannot send the release to {}: {}",
                        spec.root,
                        String::from_utf8_lossy(&output).trim()
                    ),
                )))
            }
            // A refusal, or the host unreachable: as the host said it.
            other => Err(other),
        }
    }
}

/// Fetches, checks and unpacks the release of `loaded` here, under a private temporary
/// directory, with the same code (and confined extractor) as an agent; no hook runs
/// here. Returns it with the upload that sends it to a host's staging directory.
async fn fetch_here(spec: &ReleaseSpec, loaded: &Loaded) -> Result<Local, String> {
    use deploy_release::deploy::{self, Context, Settings};
    let m = &loaded.manifest;
    let (Some(dest), Some(checksum)) = (&m.dest, &m.checksum) else {
        return Err("over SSH a deploy needs `dest`, `src` and its `checksum`".to_owned());
    };
    let dir = tempfile::Builder::new()
        .prefix("deploy-release.")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let mut here = m.clone();
    here.dest = Some(dir.path().join("tree").display().to_string());
    here.releases_dir = None;
    here.commands = Default::default();
    let k = &spec.knobs;
    let limits = deploy_release::fetch::Limits::default().narrowed(
        k.max_bandwidth,
        k.timeout,
        k.retry,
        k.retry_wait,
    );
    let settings = Settings {
        work_dir: dir.path().join("work"),
        limits,
        hooks: false,
        cwd: dir.path().to_owned(),
    };
    let stamp = if spec.id.is_empty() {
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string()
    } else {
        spec.id.clone()
    };
    let context = Context {
        stamp: Some(stamp.clone()),
        ..Context::default()
    };
    let log = deploy_release::commands::Log::default();
    let prepared = deploy::prepare(&here, &settings, &context, &log, &|_| {})
        .await
        .map_err(|e| e.to_string())?;
    prepared.cleanup();
    let id = prepared
        .id
        .clone()
        .ok_or_else(|| "the client-side release has no id".to_owned())?;
    let tree = dir.path().join("tree.releases").join(&id);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&tree).map_err(|e| format!("{}: {e}", tree.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", tree.display()))?;
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| format!("{}: a name that is not UTF-8", tree.display()))?;
        files.push(name.to_owned());
    }
    files.sort();
    // The hosts' staging directory, as a template (`%h`, `%p`): the upload expands it
    // per host, so one walk of the tree serves them all.
    let layout = Releases::new(Path::new(dest), m.releases_dir.as_deref().map(Path::new));
    let hash: String = checksum.hex.chars().take(8).collect();
    let root = layout
        .dir()
        .join(format!(".staging-{stamp}-{hash}"))
        .display()
        .to_string();
    let upload = if files.is_empty() {
        None
    } else {
        let spec = deploy_common::upload::UploadSpec {
            files,
            root,
            relative: true,
            no_owner: true,
        };
        deploy_common::upload::build_and_keep_in(&spec, &tree).await?;
        Some(spec)
    };
    Ok(Local {
        _dir: dir,
        stamp,
        bytes: prepared.bytes,
        upload,
    })
}

impl Transport for SshReleases {
    /// The SSH transport's own: a release order needs the same connection.
    fn connect<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<(), Outcome>> {
        self.inner.connect(target, request)
    }

    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> BoxFuture<'a, Outcome> {
        if !is_release_order(&request.order) {
            return self.inner.deliver(target, request, events);
        }
        Box::pin(async move {
            let loaded = match self.loaded(request).await {
                Ok(l) => l,
                Err(reply) => return Outcome::Reply(reply),
            };
            let mut request = std::borrow::Cow::Borrowed(request);
            let mut staged = None;
            let preparing = request.order == "deploy"
                && request
                    .release
                    .as_deref()
                    .is_some_and(|s| matches!(s.phase, Phase::Prepare | Phase::All));
            if let (Fetch::Client, true, Some(loaded)) = (self.fetch, preparing, &loaded) {
                let Some(spec) = request.release.as_deref() else {
                    return Outcome::Reply(bad(400, "deploy needs its release fields"));
                };
                let local = match self.local(spec, loaded).await {
                    Ok(l) => l,
                    Err(reply) => return Outcome::Reply(reply),
                };
                if let Some(spec) = request.to_mut().release.as_deref_mut() {
                    spec.id.clone_from(&local.stamp);
                }
                if let Err(outcome) = self.send_tree(target, &request, &local).await {
                    return outcome;
                }
                staged = Some(local.bytes);
            }
            let (run, kind) = match translate(&request, target, loaded.as_deref(), staged) {
                Ok(t) => t,
                Err(reply) => return Outcome::Reply(reply),
            };
            // The script's output is its log then its result: the log is sent to a
            // follower once the result is known, the result line never.
            let outcome = record(&kind, self.quietly(target, &run).await);
            if request.follow {
                if let Outcome::Reply(reply) = &outcome {
                    let log = reply
                        .content()
                        .get("log")
                        .and_then(Value::as_str)
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .unwrap_or_default();
                    for line in String::from_utf8_lossy(&log).lines() {
                        let _ = events
                            .send(TaggedEvent::from(Event::Line {
                                stream: Stream::Stdout,
                                line: line.to_owned(),
                                partial: false,
                            }))
                            .await;
                    }
                }
            }
            outcome
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    #[test]
    fn the_scripts_wait_no_longer_than_an_agent() {
        let bound = deploy_common::order::release::MAX_SWITCH_WAIT_MS;
        assert!(HEAD.contains(&format!("\"$d\" -gt {bound} ]")), "{HEAD}");
    }

    use super::*;

    /// Every hostile string comes back from a real `sh` byte for byte.
    #[test]
    fn quote_survives_hostile_strings() {
        let hostile = [
            "",
            "plain",
            "it's",
            "'",
            "''",
            "'\\''",
            "\\",
            "\"$HOME\"",
            "$(touch /tmp/deploy-quote-pwned)",
            "`touch /tmp/deploy-quote-pwned`",
            "; rm -rf /nonexistent-deploy-test #",
            "a\nb\n\nc",
            "*",
            "~root",
            "-n",
            "%s%d%%",
            "!event",
            "${IFS}x",
            "tab\there",
            "\u{e9}t\u{e9} \u{1f680}",
            "a'b\"c$d`e\\f",
        ];
        for value in hostile {
            let script = format!("printf '%s' {}", quote("test", value).unwrap());
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            assert!(out.status.success(), "{script}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), value, "{script}");
        }
        // Quoted twice (a script inside a script), still the same bytes.
        let value = "it's $(x) `y` \"z\"";
        let inner = format!("printf '%s' {}", quote("test", value).unwrap());
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("sh -c {}", quote("test", &inner).unwrap()))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), value);
        assert!(!Path::new("/tmp/deploy-quote-pwned").exists());
        assert_eq!(quote("dest", "a\0b"), Err(QuoteError { what: "dest" }));
    }

    fn reply(output: &str, code: i32) -> Outcome {
        Outcome::Reply(Reply::ok(deploy_common::order::run::ran(
            code,
            "sh -c …",
            output.as_bytes(),
        )))
    }

    #[test]
    fn record_makes_the_agents_replies() {
        let out = record(
            &Kind::Switch {
                dest: "/srv/%h/app".into(),
            },
            reply(
                "switched /srv/a/app to X (from W)\n{\"return\":\"true\",\"id\":\"X\",\"previous\":\"W\",\"switched_at\":\"17\"}\n",
                0,
            ),
        );
        let Outcome::Reply(r) = out else { panic!() };
        assert_eq!(r.code, 200);
        let c = r.content();
        assert_eq!(c["phase"], "switch");
        assert_eq!(c["dest"], "/srv/%h/app");
        assert_eq!(c["previous"], "W");
        assert_eq!(c["switched_at"], "17");
        let log = base64::engine::general_purpose::STANDARD
            .decode(c["log"].as_str().unwrap())
            .unwrap();
        assert_eq!(log, b"switched /srv/a/app to X (from W)\n");

        let out = record(
            &Kind::Prepare { dest: "/d".into() },
            reply(
                "fetching x\nerror: checksum mismatch: expected sha256:aa, got sha256:bb\n{\"return\":\"false\",\"code\":\"500\"}\n",
                1,
            ),
        );
        let Outcome::Reply(r) = out else { panic!() };
        assert_eq!(r.code, 500);
        assert_eq!(
            r.content(),
            "prepare failed: checksum mismatch: expected sha256:aa, got sha256:bb"
        );

        // No result line: a clear failure, with what the host said.
        let out = record(&Kind::Rollback, reply("sh: flock: not found\n", 127));
        let Outcome::Reply(r) = out else { panic!() };
        assert_eq!(r.code, 500);
        assert!(
            r.content().as_str().unwrap().contains("exit status 127"),
            "{r:?}"
        );

        // Unreachable stays unreachable.
        let down = Outcome::Unreachable {
            address: "a:22".into(),
            cause: "refused".into(),
        };
        assert_eq!(record(&Kind::Confirm, down.clone()), down);
    }

    /// Every script this module writes is valid `sh` (parsed with `sh -n`, whose
    /// quoting of the script itself is then undone by a real shell too).
    #[test]
    fn a_killed_script_leaves_no_log_behind() {
        // A detached reverter stopped by TERM (a shutdown) kept its log file in $TMPDIR.
        let tmp = tempfile::tempdir().unwrap();
        let releases = Releases::new(Path::new("/srv/app"), None);
        let mut script = Script::new(&releases, "me", "").unwrap();
        script.text.push_str("echo started >&3\nsleep 1\n");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script.text)
            .env("TMPDIR", tmp.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 8];
        std::io::Read::read_exact(&mut out, &mut first).unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "the log");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let _ = child.wait();
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn every_script_parses() {
        let target = Target::parse("ssh://web1", 22).unwrap();
        let manifest = "src: https://example.invalid/a.tgz\nchecksum: sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709\n\
                        dest: /srv/app\nsync_strategy: release\ncommands:\n  pre: [\"echo it's\"]\n  \
                        post: ['echo \"$DEPLOY_RELEASE\"']\n  success: [cat]\n  failure: ['cat >&2']\n";
        let loaded = Loaded {
            manifest: Manifest::parse_rendered(manifest).unwrap(),
            rendered: manifest.to_owned(),
        };
        let mut requests = Vec::new();
        for (order, phase, id) in [
            ("deploy", Phase::Prepare, "20260102T030405.006Z"),
            ("deploy", Phase::All, ""),
            ("deploy", Phase::Switch, "20260102T030405.006Z-da39a3ee"),
            ("deploy", Phase::Abort, "20260102T030405.006Z-da39a3ee"),
            ("releases", Phase::All, ""),
            ("rollback", Phase::All, "da39"),
            ("confirm", Phase::All, ""),
        ] {
            requests.push(Request {
                order: order.into(),
                release: Some(Box::new(ReleaseSpec {
                    dest: "/srv/app".into(),
                    id: id.into(),
                    phase,
                    message: "it's \"$(v2)\"".into(),
                    confirm_within: Some(30),
                    ..ReleaseSpec::default()
                })),
                ..Request::default()
            });
        }
        for request in &requests {
            let (run, _) = translate(request, &target, Some(&loaded), None).unwrap();
            assert_eq!(run.argv, ["sh", "-s"]);
            let out = std::process::Command::new("/bin/sh")
                .args(["-n", "-s"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write as _;
                    let mut pipe = child.stdin.take().unwrap();
                    pipe.write_all(&script_of(&run))?;
                    drop(pipe);
                    child.wait_with_output()
                })
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                request.order,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The script a translated request sends.
    fn script_of(run: &Request) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(run.stdin.as_deref().unwrap())
            .unwrap()
    }

    #[test]
    fn translate_checks_and_expands() {
        let target = Target::parse("ssh://root@web1:2222", 22).unwrap();
        let request = |order: &str, dest: &str, id: &str| Request {
            order: order.into(),
            release: Some(Box::new(ReleaseSpec {
                dest: dest.into(),
                id: id.into(),
                ..ReleaseSpec::default()
            })),
            ..Request::default()
        };
        let (run, kind) = translate(
            &request("releases", "/srv/%h-%p/app", ""),
            &target,
            None,
            None,
        )
        .unwrap();
        assert_eq!(kind, Kind::Releases);
        assert_eq!(run.order, "run");
        let script = String::from_utf8(script_of(&run)).unwrap();
        assert!(script.contains("D='/srv/web1-2222/app'\n"), "{script}");
        assert!(
            script.contains("R='/srv/web1-2222/app.releases'\n"),
            "{script}"
        );
        // Relative dests, hostile ids and short prefixes are refused before any host.
        assert_eq!(
            translate(&request("releases", "srv/app", ""), &target, None, None)
                .unwrap_err()
                .code,
            400
        );
        for id in ["../x", ".staging-x", "a b", "$(id)"] {
            let mut r = request("deploy", "/srv/app", id);
            r.release.as_mut().unwrap().phase = Phase::Switch;
            assert_eq!(
                translate(&r, &target, None, None).unwrap_err().code,
                400,
                "{id}"
            );
        }
        // A switch by id alone: the run's manifest names the dest (and its keep).
        let text = "src: file:///a.tgz\nchecksum: sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709\n\
                    dest: /srv/%h/app\nsync_strategy: release\nreleases_dir: /srv/r-%h\n";
        let loaded = Loaded {
            manifest: Manifest::parse_rendered(text).unwrap(),
            rendered: text.to_owned(),
        };
        let mut r = request("deploy", "", "20260102T030405.006Z-da39a3ee");
        r.release.as_mut().unwrap().phase = Phase::Switch;
        let (run, kind) = translate(&r, &target, Some(&loaded), None).unwrap();
        assert_eq!(
            kind,
            Kind::Switch {
                dest: "/srv/%h/app".into()
            }
        );
        let script = String::from_utf8(script_of(&run)).unwrap();
        assert!(script.contains("D='/srv/web1/app'\n"), "{script}");
        assert!(script.contains("R='/srv/r-web1'\n"), "{script}");
        assert_eq!(
            translate(&request("rollback", "/srv/app", "ab"), &target, None, None)
                .unwrap_err()
                .code,
            409
        );
    }
}
