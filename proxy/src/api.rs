//! The HTTP/JSON API's requests as pure functions: [`parse`] turns what the HTTP server
//! read (method, path, query, headers, body) into a [`Call`], or into an [`ApiError`] that
//! carries the status to answer. No I/O happens here: the server (hyper, in the binary's
//! `http` module) owns the socket, the HTTP/1.1 parsing, the deadlines and the body limit;
//! this module owns what a parsed request means, and is what the `http_api` fuzz target
//! drives.
//!
//! ```text
//! GET /healthz                      → Call::Health                 (no API key; HEAD too)
//! POST /api/<order>   (or GET)      → Call::Order { request, stream }
//! GET /api/nodes?options=offline    → the proxy's agents and their state (never streamed)
//! /api/fetch                        → 501: its files travel as v2 events only
//! POST /api/scenario-versions       → Call::Order (the proxy's own store; never streamed)
//!      {"scenario_versions":{"action":"list"|"get"|"append"|"forget",…}}   JSON body only
//!
//!   key         X-Api-Key: <key>    or  Authorization: Bearer <key>   (one of them, once)
//!   parameters  options, args       from the query string and the body; each at most once
//!   body        {"options":"…","args":"…"}   when Content-Type is application/json or the
//!                                            body starts with `{` (what `curl -d` sends);
//!               options=…&args=…             otherwise (application/x-www-form-urlencoded)
//!   release     {"release":{"manifest_url":"…","phase":"prepare",…}}   JSON body only, for
//!               deploy, releases, rollback and confirm: the fields of the v2 wire's
//!               `release` (ReleaseSpec), each checked; `who` is the proxy's to set
//!   napp        {"napp":{"action":"get","scenario":"…",…}}   JSON body only, for napp:
//!               the fields of the v2 wire's `napp` (NappSpec), each checked
//!   timed       {"at":<unix ms>,"max_wait":<ms>,"background":true}   JSON body only,
//!               for exec and run (the v2 wire's fields of the same names)
//!   relay       {"relay":<children per host, 1..=64>}   JSON body only, for rsync: the
//!               proxy pushes it as a relay over its agents (the v2 wire's `relay`)
//!   stream      Accept: application/x-ndjson
//! ```
//!
//! Strict where the v1 wire's parser is lenient (it let a header line shaped like a request
//! line redefine the method and URL, and the last of two key headers win): a key header,
//! `Authorization` or `Content-Type` given twice, two keys, an unknown or repeated
//! parameter, or a body that is not valid JSON (or not an object of strings) is a 400; an
//! unknown path or order a 404; a wrong method a 405; a body over [`MAX_BODY`] a 413; no
//! key a 401.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use deploy_common::order::napp::NappSpec;
use deploy_common::order::release::ReleaseSpec;
use deploy_common::order::scenario_versions::{self, VersionsSpec};
use deploy_common::order::{OrderName, Request};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The largest request body accepted (1 MiB); larger is a 413.
pub const MAX_BODY: usize = 1024 * 1024;

/// The health endpoint's path.
pub const HEALTH_PATH: &str = "/healthz";

/// The proxy's own store of scenario versions (POST only, a JSON body).
pub const VERSIONS_PATH: &str = "/api/scenario-versions";

/// The methods `/api/scenario-versions` answers.
pub const VERSIONS_METHODS: &str = "POST";

/// The orders' path prefix: `/api/<order>`.
pub const ORDER_PREFIX: &str = "/api/";

/// The methods `/healthz` answers, as an `Allow` header says them.
pub const HEALTH_METHODS: &str = "GET, HEAD";

/// The methods `/api/<order>` answers, as an `Allow` header says them.
pub const ORDER_METHODS: &str = "GET, POST";

/// What the server read of one request; header names in any case, values as bytes.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    /// The method, as sent (methods are case-sensitive: `post` is not `POST`).
    pub method: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The query string (after `?`), if the request target had one.
    pub query: Option<&'a str>,
    /// Every header line, in arrival order, duplicates included.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The whole body.
    pub body: &'a [u8],
}

/// Which endpoint a method and path address (see [`route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`.
    Health,
    /// `POST /api/<order>`.
    Order(OrderName),
    /// `POST /api/scenario-versions`.
    Versions,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// The health check: answer `{"status":"ok","version":…}`.
    Health,
    /// An order to relay.
    Order {
        /// The order, its parameters and the caller's API key (never empty).
        request: Box<Request>,
        /// Whether the caller asked for NDJSON, one line per agent as it answers.
        stream: bool,
    },
}

/// Why a request is refused, with the status to answer ([`ApiError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A path that is neither `/healthz` nor `/api/<order>`.
    #[error("no such endpoint: use POST /api/<order> or GET /healthz")]
    NotFound,
    /// `/api/<name>` where `name` is no order.
    #[error("unknown order {0:?}")]
    UnknownOrder(String),
    /// A method the endpoint does not answer.
    #[error("method {method} not allowed here (allowed: {allow})")]
    MethodNotAllowed {
        /// The method sent.
        method: String,
        /// The methods the endpoint answers (the `Allow` header).
        allow: &'static str,
    },
    /// A body over [`MAX_BODY`].
    #[error("request body larger than {MAX_BODY} bytes")]
    TooLarge,
    /// A header that must appear at most once appears more often.
    #[error("the {0} header appears more than once")]
    DuplicateHeader(&'static str),
    /// Both `X-Api-Key` and `Authorization: Bearer`.
    #[error("two API keys (X-Api-Key and Authorization: Bearer): send one")]
    TwoKeys,
    /// A header whose value must be text is not UTF-8.
    #[error("the {0} header is not valid UTF-8")]
    HeaderNotUtf8(&'static str),
    /// A body announced or sniffed as JSON that does not parse as `{"options","args"}`.
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    /// A query or form parameter other than `options` and `args`.
    #[error("unknown parameter {0:?} (expected options and args)")]
    UnknownParameter(String),
    /// A parameter given twice (in the query, the body, or both).
    #[error("parameter {0:?} given more than once")]
    DuplicateParameter(&'static str),
    /// No API key.
    #[error("missing API key (X-Api-Key header)")]
    MissingKey,
    /// A `release` field that is not an object of the known fields, or one sent with an
    /// order that has none.
    #[error("invalid release field: {0}")]
    InvalidRelease(String),
    /// A `napp` field that is not an object of [`NappSpec`]'s fields, or one sent with
    /// another order.
    #[error("invalid napp field: {0}")]
    InvalidNapp(String),
    /// `at`, `max_wait` or `background` sent with an order other than `exec` and `run`,
    /// or `relay` with another order than `rsync` (or out of 1..=64).
    #[error("{0}")]
    NotTimed(String),
    /// An order this API cannot carry (`fetch`: its files come as a stream of events).
    #[error("{0} is not available over the HTTP API: use deploy-client (protocol v2)")]
    NotOverHttp(&'static str),
}

impl ApiError {
    /// The HTTP status to answer.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::NotFound | ApiError::UnknownOrder(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::TooLarge => 413,
            ApiError::MissingKey => 401,
            ApiError::NotOverHttp(_) => 501,
            ApiError::DuplicateHeader(_)
            | ApiError::TwoKeys
            | ApiError::HeaderNotUtf8(_)
            | ApiError::InvalidJson(_)
            | ApiError::UnknownParameter(_)
            | ApiError::DuplicateParameter(_)
            | ApiError::InvalidRelease(_)
            | ApiError::InvalidNapp(_)
            | ApiError::NotTimed(_) => 400,
        }
    }

    /// The `Allow` header of a 405.
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            ApiError::MethodNotAllowed { allow, .. } => Some(allow),
            _ => None,
        }
    }
}

/// The endpoint `method` and `path` address: enough to answer 404 and 405 before the
/// body is read.
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let (found, allow) = if path == HEALTH_PATH {
        (Route::Health, HEALTH_METHODS)
    } else if path == VERSIONS_PATH {
        (Route::Versions, VERSIONS_METHODS)
    } else {
        let name = path.strip_prefix(ORDER_PREFIX).ok_or(ApiError::NotFound)?;
        if name.is_empty() || name.contains('/') {
            return Err(ApiError::NotFound);
        }
        let order = OrderName::parse(name).ok_or_else(|| ApiError::UnknownOrder(short(name)))?;
        (Route::Order(order), ORDER_METHODS)
    };
    if allow.split(", ").any(|m| m == method) {
        if matches!(found, Route::Order(OrderName::Fetch)) {
            // Its files travel as v2 events only; a method it does not take is still 405.
            return Err(ApiError::NotOverHttp("fetch"));
        }
        Ok(found)
    } else {
        Err(ApiError::MethodNotAllowed {
            method: short(method),
            allow,
        })
    }
}

/// The call `req` makes. Checks, in order: [`route`] (404, 405), the body's size (413),
/// single-valued headers and the key's form (400), the parameters (400), the key's
/// presence (401).
pub fn parse(req: &ApiRequest<'_>) -> Result<Call, ApiError> {
    let order = match route(req.method, req.path)? {
        Route::Health => return Ok(Call::Health),
        Route::Order(order) => Some(order),
        Route::Versions => None,
    };
    if req.body.len() > MAX_BODY {
        return Err(ApiError::TooLarge);
    }
    let api_key = api_key(req.headers)?;
    let content_type = single(req.headers, "content-type")?;

    let mut params = Params::default();
    if let Some(query) = req.query {
        params.add_form(query.as_bytes())?;
    }
    let first = req.body.iter().find(|b| !b.is_ascii_whitespace());
    if let Some(&first) = first {
        let is_json = content_type.is_some_and(|t| {
            t.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"application/json"))
        }) || first == b'{';
        if is_json {
            params.add_json(req.body)?;
        } else {
            params.add_form(req.body)?;
        }
    }
    // `nodes` is the proxy's own answer, one document: there is nothing to stream.
    let stream = order != Some(OrderName::Nodes)
        && req
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("accept"))
            .any(|(_, value)| contains_ignore_case(value, b"application/x-ndjson"));

    let Some(order) = order else {
        return versions(params, api_key);
    };
    if params.scenario_versions.is_some() {
        return Err(ApiError::InvalidJson(format!(
            "{} takes no scenario_versions (POST {VERSIONS_PATH} does)",
            order.as_str()
        )));
    }
    let release = match params.release {
        None => None,
        Some(fields) => Some(Box::new(release(order, fields)?)),
    };
    let napp = match params.napp {
        None => None,
        Some(fields) => Some(Box::new(napp(order, fields)?)),
    };
    let timed = params.at.is_some() || params.max_wait.is_some() || params.background.is_some();
    if timed && !matches!(order, OrderName::Exec | OrderName::Run) {
        return Err(ApiError::NotTimed(format!(
            "{} takes no at, max_wait or background (exec and run do)",
            order.as_str()
        )));
    }
    if let Some(k) = params.relay {
        if order != OrderName::Rsync || !(1..=64).contains(&k) {
            return Err(ApiError::NotTimed(format!(
                "relay is for rsync only, 1 to 64 children per host (got {} with {k})",
                order.as_str()
            )));
        }
    }
    let api_key = api_key.ok_or(ApiError::MissingKey)?;
    Ok(Call::Order {
        request: Box::new(Request {
            relay: params.relay,
            order: order.as_str().to_owned(),
            options: params.options.unwrap_or_default(),
            args: params.args.unwrap_or_default(),
            api_key,
            release,
            napp,
            at: params.at,
            max_wait: params.max_wait,
            background: params.background.unwrap_or(false),
            ..Request::default()
        }),
        stream,
    })
}

/// `POST /api/scenario-versions`: only its `scenario_versions` object.
fn versions(params: Params, api_key: Option<String>) -> Result<Call, ApiError> {
    if params.options.is_some()
        || params.args.is_some()
        || params.release.is_some()
        || params.napp.is_some()
        || params.at.is_some()
        || params.max_wait.is_some()
        || params.background.is_some()
        || params.relay.is_some()
    {
        return Err(ApiError::InvalidJson(
            "scenario-versions takes only {\"scenario_versions\":{…}}".into(),
        ));
    }
    let spec = params.scenario_versions.ok_or_else(|| {
        ApiError::InvalidJson(
            "scenario-versions needs a JSON body {\"scenario_versions\":{\"action\":…}}".into(),
        )
    })?;
    let api_key = api_key.ok_or(ApiError::MissingKey)?;
    Ok(Call::Order {
        request: Box::new(Request {
            order: scenario_versions::ORDER.to_owned(),
            api_key,
            scenario_versions: Some(Box::new(spec)),
            ..Request::default()
        }),
        stream: false,
    })
}

/// The value of header `name` (any case): `None` if absent, an error if repeated.
fn single<'a>(
    headers: &[(&str, &'a [u8])],
    name: &'static str,
) -> Result<Option<&'a [u8]>, ApiError> {
    let mut found = None;
    for (n, value) in headers {
        if n.eq_ignore_ascii_case(name) {
            if found.is_some() {
                return Err(ApiError::DuplicateHeader(name));
            }
            found = Some(*value);
        }
    }
    Ok(found)
}

/// The caller's key: `X-Api-Key`, or `Authorization: Bearer` (scheme in any case); an
/// empty value counts as none, another `Authorization` scheme is ignored.
fn api_key(headers: &[(&str, &[u8])]) -> Result<Option<String>, ApiError> {
    let text = |name: &'static str, value: &[u8]| {
        std::str::from_utf8(value)
            .map(|v| v.trim_matches([' ', '\t']).to_owned())
            .map_err(|_| ApiError::HeaderNotUtf8(name))
    };
    let header = single(headers, "x-api-key")?
        .map(|v| text("X-Api-Key", v))
        .transpose()?
        .filter(|k| !k.is_empty());
    let bearer = match single(headers, "authorization")? {
        Some(value) => {
            let value = text("Authorization", value)?;
            match value.split_once(' ') {
                Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => {
                    Some(key.trim_matches([' ', '\t']).to_owned()).filter(|k| !k.is_empty())
                }
                _ => None,
            }
        }
        None => None,
    };
    match (header, bearer) {
        (Some(_), Some(_)) => Err(ApiError::TwoKeys),
        (key, None) | (None, key) => Ok(key),
    }
}

/// The fields a `release` object may carry: those of [`ReleaseSpec`] (a unit test
/// checks the two agree), minus `who`, which the proxy sets.
const RELEASE_FIELDS: &[&str] = &[
    "manifest_url",
    "manifest",
    "phase",
    "dest",
    "releases_dir",
    "id",
    "message",
    "confirm_within",
];

/// The `release` of `order`: only the release orders take one, and only known fields.
fn release(order: OrderName, fields: Map<String, Value>) -> Result<ReleaseSpec, ApiError> {
    if !matches!(
        order,
        OrderName::Deploy | OrderName::Releases | OrderName::Rollback | OrderName::Confirm
    ) {
        return Err(ApiError::InvalidRelease(format!(
            "{} takes no release (deploy, releases, rollback and confirm do)",
            order.as_str()
        )));
    }
    if let Some(unknown) = fields
        .keys()
        .find(|k| !RELEASE_FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::InvalidRelease(format!(
            "unknown field {:?} (expected one of {})",
            short(unknown),
            RELEASE_FIELDS.join(", ")
        )));
    }
    serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::InvalidRelease(e.to_string()))
}

/// The fields a `napp` object may carry: those of [`NappSpec`] (a unit test checks the
/// two agree).
const NAPP_FIELDS: &[&str] = &[
    "action", "scenario", "app", "target", "file", "script", "env", "message", "version", "offset",
    "limit",
];

/// The `napp` of `order`: only `napp` takes one, and only known fields.
fn napp(order: OrderName, fields: Map<String, Value>) -> Result<NappSpec, ApiError> {
    if order != OrderName::Napp {
        return Err(ApiError::InvalidNapp(format!(
            "{} takes no napp (napp does)",
            order.as_str()
        )));
    }
    if let Some(unknown) = fields.keys().find(|k| !NAPP_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::InvalidNapp(format!(
            "unknown field {:?} (expected one of {})",
            short(unknown),
            NAPP_FIELDS.join(", ")
        )));
    }
    serde_json::from_value(Value::Object(fields)).map_err(|e| ApiError::InvalidNapp(e.to_string()))
}

/// The order's parameters, each set at most once.
#[derive(Default)]
struct Params {
    options: Option<String>,
    args: Option<String>,
    release: Option<Map<String, Value>>,
    napp: Option<Map<String, Value>>,
    at: Option<i64>,
    max_wait: Option<u64>,
    background: Option<bool>,
    relay: Option<usize>,
    scenario_versions: Option<VersionsSpec>,
}

/// The JSON body: an object with optional string fields `options` and `args`, an
/// optional object `release` and (scenario-versions) `scenario_versions`, nothing else, each once (serde refuses duplicate and
/// unknown fields).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBody {
    options: Option<String>,
    args: Option<String>,
    release: Option<Map<String, Value>>,
    napp: Option<Map<String, Value>>,
    at: Option<i64>,
    max_wait: Option<u64>,
    background: Option<bool>,
    relay: Option<usize>,
    scenario_versions: Option<VersionsSpec>,
}

impl Params {
    fn set(&mut self, key: &str, value: String) -> Result<(), ApiError> {
        let (slot, name) = match key {
            "options" => (&mut self.options, "options"),
            "args" => (&mut self.args, "args"),
            other => return Err(ApiError::UnknownParameter(short(other))),
        };
        if slot.is_some() {
            return Err(ApiError::DuplicateParameter(name));
        }
        *slot = Some(value);
        Ok(())
    }

    /// `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte, lossy UTF-8).
    fn add_form(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        for (key, value) in form_urlencoded::parse(bytes) {
            self.set(&key, value.into_owned())?;
        }
        Ok(())
    }

    fn add_json(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        let body: JsonBody =
            serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        if let Some(options) = body.options {
            self.set("options", options)?;
        }
        if let Some(args) = body.args {
            self.set("args", args)?;
        }
        self.release = body.release;
        self.napp = body.napp;
        self.at = body.at;
        self.max_wait = body.max_wait;
        self.background = body.background;
        self.relay = body.relay;
        self.scenario_versions = body.scenario_versions;
        Ok(())
    }
}

/// At most 64 characters of `s`, for error messages that quote the caller.
fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn req<'a>(
        method: &'a str,
        target: &'a str,
        headers: &'a [(&'a str, &'a [u8])],
        body: &'a [u8],
    ) -> ApiRequest<'a> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        ApiRequest {
            method,
            path,
            query,
            headers,
            body,
        }
    }

    fn order(call: Result<Call, ApiError>) -> (Request, bool) {
        match call {
            Ok(Call::Order { request, stream }) => (*request, stream),
            other => panic!("not an order: {other:?}"),
        }
    }

    const KEY: &[(&str, &[u8])] = &[("x-api-key", b"k")];

    #[test]
    fn scenario_versions_takes_its_object_only_by_post() {
        let (r, stream) = order(parse(&req(
            "POST",
            VERSIONS_PATH,
            KEY,
            br#"{"scenario_versions":{"action":"get","scenario":"s","prefix":"abc"}}"#,
        )));
        assert_eq!(r.order, "scenario-versions");
        assert!(!stream);
        let spec = r.scenario_versions.unwrap();
        assert_eq!((spec.scenario.as_str(), spec.prefix.as_str()), ("s", "abc"));
        for body in [&br#"{"args":"groups:web"}"#[..], b"", b"args=x"] {
            let e = parse(&req("POST", VERSIONS_PATH, KEY, body)).unwrap_err();
            assert_eq!(e.status(), 400, "{e}");
        }
        let e = parse(&req("GET", VERSIONS_PATH, KEY, b"")).unwrap_err();
        assert_eq!((e.status(), e.allow()), (405, Some("POST")));
        let e = parse(&req(
            "POST",
            "/api/status",
            KEY,
            br#"{"scenario_versions":{"action":"list"}}"#,
        ))
        .unwrap_err();
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn json_form_and_query_fill_the_request() {
        let (r, stream) = order(parse(&req(
            "POST",
            "/api/exec",
            KEY,
            br#" {"options":"service:echo,hi","args":"groups:web"}"#,
        )));
        assert_eq!(
            (r.order.as_str(), r.options.as_str(), r.args.as_str()),
            ("exec", "service:echo,hi", "groups:web")
        );
        assert_eq!((r.api_key.as_str(), stream), ("k", false));

        let (r, _) = order(parse(&req(
            "POST",
            "/api/exec?args=groups%3Aweb",
            &[
                ("Authorization", b"bearer  k"),
                ("Accept", b"Application/X-NDJSON"),
            ],
            b"options=service:echo,hi+there",
        )));
        assert_eq!(
            (r.options.as_str(), r.args.as_str(), r.api_key.as_str()),
            ("service:echo,hi there", "groups:web", "k")
        );
        let (_, stream) = order(parse(&req(
            "GET",
            "/api/status",
            &[("x-api-key", b"k"), ("accept", b"application/x-ndjson")],
            b"",
        )));
        assert!(stream);
    }

    #[test]
    fn routes_methods_and_health() {
        assert_eq!(parse(&req("GET", "/healthz", &[], b"")), Ok(Call::Health));
        assert_eq!(parse(&req("HEAD", "/healthz", &[], b"")), Ok(Call::Health));
        let status = |m, t| parse(&req(m, t, KEY, b"")).map_err(|e| e.status());
        assert_eq!(status("POST", "/healthz"), Err(405));
        assert_eq!(status("PUT", "/api/exec"), Err(405));
        assert_eq!(status("post", "/api/exec"), Err(405));
        assert_eq!(status("POST", "/api/nope"), Err(404));
        assert_eq!(status("GET", "/api/fetch"), Err(501));
        assert_eq!(status("POST", "/api/exec/x"), Err(404));
        assert_eq!(status("POST", "/api/"), Err(404));
        assert_eq!(status("POST", "/api//exec"), Err(404));
        assert_eq!(status("POST", "/agent/exec"), Err(404));
        assert_eq!(status("POST", "/"), Err(404));
        assert_eq!(
            parse(&req("DELETE", "/api/exec", KEY, b""))
                .unwrap_err()
                .allow(),
            Some("GET, POST")
        );
    }

    #[test]
    fn ambiguity_is_refused() {
        let status =
            |h: &[(&str, &[u8])], t, b: &[u8]| parse(&req("POST", t, h, b)).map_err(|e| e.status());
        let e = |h: &[(&str, &[u8])], b: &[u8]| parse(&req("POST", "/api/exec", h, b));
        assert_eq!(
            e(&[("X-Api-Key", b"a"), ("x-api-key", b"b")], b""),
            Err(ApiError::DuplicateHeader("x-api-key"))
        );
        assert_eq!(
            e(&[("x-api-key", b"a"), ("authorization", b"Bearer b")], b""),
            Err(ApiError::TwoKeys)
        );
        assert_eq!(
            e(
                &[
                    ("authorization", b"Bearer a"),
                    ("authorization", b"Bearer b")
                ],
                b""
            ),
            Err(ApiError::DuplicateHeader("authorization"))
        );
        assert_eq!(
            e(&[("x-api-key", b"\xff")], b""),
            Err(ApiError::HeaderNotUtf8("X-Api-Key"))
        );
        let json = [
            ("x-api-key", &b"k"[..]),
            ("content-type", b"application/json"),
        ];
        assert_eq!(status(&json, "/api/exec", b"options=x"), Err(400));
        assert_eq!(status(&json, "/api/exec", b"[1]"), Err(400));
        assert_eq!(status(KEY, "/api/exec", br#"{"options":1}"#), Err(400));
        assert_eq!(status(KEY, "/api/exec", br#"{"api_key":"k"}"#), Err(400));
        assert_eq!(
            status(KEY, "/api/exec", br#"{"options":"a","options":"b"}"#),
            Err(400)
        );
        assert_eq!(status(KEY, "/api/exec", b"options=a&options=b"), Err(400));
        assert_eq!(status(KEY, "/api/exec?options=a", b"options=b"), Err(400));
        assert_eq!(status(KEY, "/api/exec?x=1", b""), Err(400));
        assert_eq!(
            status(
                &[
                    ("x-api-key", b"k"),
                    ("content-type", b"a"),
                    ("Content-Type", b"b")
                ],
                "/api/exec",
                b""
            ),
            Err(400)
        );
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(status(KEY, "/api/exec", &big), Err(413));
    }

    #[test]
    fn a_release_is_strictly_checked() {
        let (r, _) = order(parse(&req(
            "POST",
            "/api/deploy",
            KEY,
            br#"{"args":"groups:web","release":{"manifest_url":"file:///m.yml","phase":"prepare","message":"v2","confirm_within":60}}"#,
        )));
        let spec = r.release.unwrap();
        assert_eq!(
            (
                spec.manifest_url.as_str(),
                spec.phase,
                spec.message.as_str()
            ),
            (
                "file:///m.yml",
                deploy_common::order::release::Phase::Prepare,
                "v2"
            )
        );
        assert_eq!(spec.confirm_within, Some(60));
        let status = |t, b: &[u8]| parse(&req("POST", t, KEY, b)).map_err(|e| e.status());
        for bad in [
            &br#"{"release":{"phase":"later"}}"#[..],
            br#"{"release":{"who":"root@evil"}}"#,
            br#"{"release":{"dest":"/a","extra":1}}"#,
            br#"{"release":{"confirm_within":"60"}}"#,
            br#"{"release":"dest=/a"}"#,
            br#"{"release":{},"release":{}}"#,
        ] {
            assert_eq!(
                status("/api/deploy", bad),
                Err(400),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(status("/api/exec", br#"{"release":{}}"#), Err(400));
        assert!(status("/api/rollback", br#"{"release":{"dest":"/a","id":"abc"}}"#).is_ok());
    }

    #[test]
    fn release_fields_match_the_wire() {
        let full = ReleaseSpec {
            manifest_url: "u".into(),
            manifest: "m".into(),
            dest: "d".into(),
            releases_dir: "r".into(),
            id: "i".into(),
            message: "m".into(),
            who: "w".into(),
            confirm_within: Some(1),
            ..ReleaseSpec::default()
        };
        let Value::Object(map) = serde_json::to_value(full).unwrap() else {
            panic!("not an object");
        };
        let mut wire: Vec<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "who")
            .collect();
        let mut ours = RELEASE_FIELDS.to_vec();
        wire.sort_unstable();
        ours.sort_unstable();
        assert_eq!(wire, ours);
    }

    #[test]
    fn napp_and_timed_fields_are_strictly_checked() {
        let (r, _) = order(parse(&req(
            "POST",
            "/api/napp",
            KEY,
            br#"{"args":"groups:web","napp":{"action":"versions","scenario":"s","app":"a","limit":3}}"#,
        )));
        let spec = r.napp.unwrap();
        assert_eq!(spec.action, deploy_common::order::napp::Action::Versions);
        assert_eq!((spec.scenario.as_str(), spec.app.as_str()), ("s", "a"));
        assert_eq!(spec.limit, Some(3));
        let (r, _) = order(parse(&req(
            "POST",
            "/api/exec",
            KEY,
            br#"{"options":"job","at":1700000000000,"max_wait":5000,"background":true}"#,
        )));
        assert_eq!(
            (r.at, r.max_wait, r.background),
            (Some(1_700_000_000_000), Some(5000), true)
        );
        let status = |t, b: &[u8]| parse(&req("POST", t, KEY, b)).map_err(|e| e.status());
        for (path, bad) in [
            ("/api/napp", &br#"{"napp":{"action":"explode"}}"#[..]),
            ("/api/napp", br#"{"napp":{"scenario":"s","extra":1}}"#),
            ("/api/napp", br#"{"napp":{"limit":"3"}}"#),
            ("/api/napp", br#"{"napp":"get"}"#),
            ("/api/exec", br#"{"napp":{}}"#),
            ("/api/exec", br#"{"at":"soon"}"#),
            ("/api/exec", br#"{"at":1.5}"#),
            ("/api/exec", br#"{"max_wait":-1}"#),
            ("/api/run", br#"{"background":"yes"}"#),
            ("/api/exec", br#"{"relay":1}"#),
            ("/api/rsync", br#"{"relay":0}"#),
            ("/api/rsync", br#"{"relay":65}"#),
            ("/api/rsync", br#"{"relay":"on"}"#),
            ("/api/status", br#"{"at":1700000000000}"#),
            ("/api/napp", br#"{"background":true}"#),
            ("/api/deploy", br#"{"max_wait":1}"#),
        ] {
            assert_eq!(
                status(path, bad),
                Err(400),
                "{path} {}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(status("/api/run", br#"{"background":false}"#).is_ok());
        let (r, _) = order(parse(&req(
            "POST",
            "/api/rsync",
            KEY,
            br#"{"options":"web","relay":2}"#,
        )));
        assert_eq!(r.relay, Some(2));
    }

    #[test]
    fn napp_fields_match_the_wire() {
        let full = NappSpec {
            app: "a".into(),
            target: "t".into(),
            file: "f".into(),
            script: "s".into(),
            env: [("K".to_owned(), "v".to_owned())].into(),
            message: "m".into(),
            version: "v".into(),
            offset: Some(1),
            limit: Some(1),
            ..NappSpec::default()
        };
        let Value::Object(map) = serde_json::to_value(full).unwrap() else {
            panic!("not an object");
        };
        let mut wire: Vec<&str> = map.keys().map(String::as_str).collect();
        let mut ours = NAPP_FIELDS.to_vec();
        wire.sort_unstable();
        ours.sort_unstable();
        assert_eq!(wire, ours);
    }

    #[test]
    fn a_key_is_required() {
        for headers in [
            &[][..],
            &[("x-api-key", &b""[..])],
            &[("authorization", b"Basic a2V5")],
            &[("authorization", b"Bearer ")],
        ] {
            assert_eq!(
                parse(&req("POST", "/api/exec", headers, b"")),
                Err(ApiError::MissingKey),
                "{headers:?}"
            );
        }
        // A header line shaped like a request line is only a header.
        let (r, _) = order(parse(&req(
            "POST",
            "/api/status",
            &[
                ("x-note", b"GET /api/exec?options=service:echo,hi HTTP/1.1"),
                ("x-api-key", b"k"),
            ],
            b"",
        )));
        assert_eq!((r.order.as_str(), r.options.as_str()), ("status", ""));
    }
}
