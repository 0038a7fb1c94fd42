//! The proxy's HTTP/JSON API requests (`deploy_proxy::api::parse`): what a request parsed
//! by hyper (method, path, query, headers, body) asks for.
//!
//! Input layout (text-like, so seeds are easy to write and libFuzzer's dictionary
//! heuristics find `X-Api-Key` and `/api/exec` quickly):
//!
//! ```text
//! METHOD SP TARGET \n           TARGET = path [? query]
//! name: value \n …              headers (split at the first `:`, name lossy UTF-8)
//! \n
//! body…                         everything after the first empty line
//! ```
//!
//! Invariants checked:
//! * `parse` never panics, and refuses only with 400, 401, 404, 405 (with `Allow`) or 413;
//! * a refusal by `route` (404, 405) is exactly `parse`'s answer;
//! * an order is addressed by the path alone: `Ok(Order)` means the path is
//!   `/api/<order>`, the method `GET` or `POST`, whatever the headers and body say (the v1
//!   parser let a header line shaped like a request line change the order);
//! * an order has a non-empty key, and no key header appeared twice;
//! * round trip: the request re-sent canonically (JSON body, one `X-Api-Key`) parses to
//!   the same call.

#![no_main]

use deploy_proxy::api::{parse, route, ApiError, ApiRequest, Call, MAX_BODY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let request_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let (method, target) = request_line
        .split_once(' ')
        .unwrap_or((request_line.as_str(), "/"));
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let owned: Vec<(String, &[u8])> = lines
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(&line[..colon]).into_owned();
            Some((name, &line[colon + 1..]))
        })
        .collect();
    let headers: Vec<(&str, &[u8])> = owned.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let req = ApiRequest {
        method,
        path,
        query,
        headers: &headers,
        body,
    };

    let call = parse(&req);
    if let Err(e) = route(method, path) {
        assert_eq!(call, Err(e), "route and parse disagree");
    }
    match call {
        Err(e) => {
            assert!(
                matches!(e.status(), 400 | 401 | 404 | 405 | 413),
                "status {} for {e}",
                e.status()
            );
            assert_eq!(e.status() == 405, e.allow().is_some());
            if e == ApiError::TooLarge {
                assert!(body.len() > MAX_BODY);
            }
        }
        Ok(Call::Health) => assert_eq!(path, "/healthz"),
        Ok(Call::Order { request, stream }) => {
            assert_eq!(path.strip_prefix("/api/"), Some(request.order.as_str()));
            assert!(method == "GET" || method == "POST", "method {method:?}");
            assert_eq!(
                request.scenario_versions.is_some(),
                request.order == "scenario-versions"
            );
            assert!(!request.api_key.is_empty());
            let count = |name: &str| {
                headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .count()
            };
            assert!(count("x-api-key") <= 1 && count("authorization") <= 1);

            // scenario-versions takes only its object; the orders options and args.
            let body = match &request.scenario_versions {
                Some(spec) => serde_json::to_vec(&serde_json::json!({ "scenario_versions": spec })),
                None => {
                    let mut fields = serde_json::json!({
                        "options": request.options,
                        "args": request.args,
                    });
                    if let Some(release) = &request.release {
                        let mut release = serde_json::to_value(release).expect("release");
                        if let Some(map) = release.as_object_mut() {
                            map.remove("who");
                        }
                        fields["release"] = release;
                    }
                    if let Some(napp) = &request.napp {
                        fields["napp"] = serde_json::to_value(napp).expect("napp");
                    }
                    if let Some(at) = request.at {
                        fields["at"] = at.into();
                    }
                    if let Some(max_wait) = request.max_wait {
                        fields["max_wait"] = max_wait.into();
                    }
                    if request.background {
                        fields["background"] = true.into();
                    }
                    serde_json::to_vec(&fields)
                }
            }
            .expect("JSON of the parameters");
            let mut canonical = vec![("X-Api-Key", request.api_key.as_bytes())];
            if stream {
                canonical.push(("Accept", b"application/x-ndjson"));
            }
            let again = parse(&ApiRequest {
                method: "POST",
                path,
                query: None,
                headers: &canonical,
                body: &body,
            });
            assert_eq!(again, Ok(Call::Order { request, stream }), "round trip");
        }
    }
});
