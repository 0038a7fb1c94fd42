//! `docs/openapi.json` against the running proxy: every documented path and method
//! answers with a documented status, content type and body shape (with a key, without
//! one, streamed); every method a path does not document is refused (405); and every
//! route the proxy serves is documented. To document a new route, add it to the
//! document and, if its name is not an order, to [`CANDIDATES`].

use crate::util::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// Names probed as `/api/<name>` beside the orders (routes that other work adds).
const CANDIDATES: &[&str] = &["scenario-versions", "nodes", "health", "fetch", "tasks"];

/// Methods tried on every path.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `#/components/...` → the schema it names.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').unwrap();
            resolve(
                doc,
                doc.pointer(pointer).unwrap_or_else(|| panic!("no {r}")),
            )
        }
        None => schema,
    }
}

/// A small JSON Schema check: `$ref`, `type`, `enum`, `required`, `properties`,
/// `additionalProperties`, `oneOf`, `items` (what the document uses).
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(one_of) = schema.get("oneOf").and_then(Value::as_array) {
        let fits = one_of
            .iter()
            .filter(|s| check(doc, s, value, at).is_ok())
            .count();
        return if fits == 1 {
            Ok(())
        } else {
            Err(format!("{at}: {value} fits {fits} of oneOf"))
        };
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !types
            .iter()
            .any(|t| *t == kind || (*t == "number" && kind == "integer"))
        {
            return Err(format!("{at}: {value} is {kind}, not {types:?}"));
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(value) {
            return Err(format!("{at}: {value} not in {values:?}"));
        }
    }
    if let Value::Object(map) = value {
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = key.as_str().unwrap();
            if !map.contains_key(key) {
                return Err(format!("{at}: {key} missing in {value}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (key, item) in map {
            let at = format!("{at}.{key}");
            match (
                props.and_then(|p| p.get(key)),
                schema.get("additionalProperties"),
            ) {
                (Some(s), _) => check(doc, s, item, &at)?,
                (None, Some(Value::Bool(false))) => return Err(format!("{at}: not documented")),
                (None, Some(s)) if s.is_object() => check(doc, s, item, &at)?,
                _ => {}
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(doc, s, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// One HTTP exchange by curl: status, headers (lower-cased names), body.
fn exchange(
    method: &str,
    url: &str,
    headers: &[&str],
    body: Option<&str>,
) -> (u16, BTreeMap<String, String>, String) {
    let mut args: Vec<String> = vec!["-i".into()];
    if method == "HEAD" {
        args.push("-I".into());
    } else {
        args.extend(["-X".into(), method.into()]);
    }
    for h in headers {
        args.extend(["-H".into(), (*h).into()]);
    }
    if let Some(body) = body {
        args.extend(["--data-binary".into(), body.into()]);
    }
    args.push(url.into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(&refs);
    http_parts(&out)
}

/// Checks an answer against the operation's documented responses.
fn conforms(doc: &Value, op: &Value, what: &str, answer: &(u16, BTreeMap<String, String>, String)) {
    let (code, headers, body) = answer;
    let response = op["responses"]
        .get(code.to_string())
        .unwrap_or_else(|| panic!("{what}: status {code} is not documented: {body}"));
    let response = resolve(doc, response);
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        return;
    };
    let kind = headers
        .get("content-type")
        .map(|t| t.split(';').next().unwrap_or_default().trim().to_owned())
        .unwrap_or_default();
    let media = content
        .get(&kind)
        .unwrap_or_else(|| panic!("{what}: content type {kind:?} not documented for {code}"));
    let schema = &media["schema"];
    if kind == "application/x-ndjson" {
        for line in body.lines() {
            let value: Value = serde_json::from_str(line).unwrap();
            check(doc, schema, &value, what).unwrap();
        }
    } else {
        let value: Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
        check(doc, schema, &value, what).unwrap();
    }
}

#[test]
fn the_document_matches_the_running_proxy() {
    let doc = document();
    let farm = Farm::start(43, 1, 2, KEY);
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new("px-openapi")
        .key("web-key", "web")
        .servers("web", &farm.addrs)
        .http()
        .start(dir.path());
    let base = format!("http://{}", proxy.http());
    let paths = doc["paths"].as_object().unwrap();
    for (path, item) in paths {
        let item = item.as_object().unwrap();
        for method in METHODS {
            let url = format!("{base}{path}");
            let Some(op) = item.get(&method.to_ascii_lowercase()) else {
                let (code, headers, _) = exchange(method, &url, &[], None);
                assert_eq!(code, 405, "{method} {path} is served but not documented");
                assert!(headers.contains_key("allow"), "{method} {path}: no Allow");
                continue;
            };
            let what = format!("{method} {path}");
            if op.get("security").is_none() {
                let answer = exchange(method, &url, &[], None);
                conforms(&doc, op, &what, &answer);
                continue;
            }
            let key = "X-Api-Key: web-key";
            // The operation's own example body if it documents one, else the
            // agents of the key's group.
            let example = op
                .pointer("/requestBody/content/application~1json/example")
                .map(Value::to_string);
            let (url, body) = match (*method, &example) {
                ("POST", Some(example)) => (url.clone(), Some(example.as_str())),
                ("POST", None) => (url.clone(), Some(r#"{"args":"groups:web"}"#)),
                _ => (format!("{url}?args=groups:web"), None),
            };
            let answer = exchange(method, &url, &[key], body);
            if example.is_some() {
                assert_eq!(answer.0, 200, "{what} with its example: {answer:?}");
            }
            conforms(&doc, op, &format!("{what} with a key"), &answer);
            let streamed = exchange(method, &url, &[key, "Accept: application/x-ndjson"], body);
            conforms(&doc, op, &format!("{what} streamed"), &streamed);
            let keyless = exchange(method, &url, &[], body);
            assert_eq!(keyless.0, 401, "{what} without a key: {keyless:?}");
            conforms(&doc, op, &format!("{what} without a key"), &keyless);
        }
    }

    // Every route the proxy serves is documented: each order's, and other names.
    let mut names: Vec<String> = deploy_common::order::OrderName::ALL
        .iter()
        .map(|o| format!("/api/{}", o.as_str()))
        .collect();
    names.extend(CANDIDATES.iter().map(|c| format!("/api/{c}")));
    names.extend(
        [
            "/",
            "/api",
            "/api/",
            "/health",
            "/healthz/",
            "/openapi.json",
        ]
        .map(String::from),
    );
    for path in names {
        let (code, _, body) = exchange("GET", &format!("{base}{path}"), &[], None);
        if code != 404 {
            assert!(
                paths.contains_key(&path),
                "GET {path} answers {code} but is not in docs/openapi.json: {body}"
            );
        }
    }
}
