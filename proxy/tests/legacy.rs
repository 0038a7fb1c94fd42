//! The original's wire on the proxy's main port (`legacy_protocol = on`), spoken by
//! hand: `POST /api/<order>` with a form, `GET` with a query string, and the path form
//! `/<api|agent>/<order>/<options>/<args>/<api_key>` (spec §6.1, which §16 asks a
//! compatible proxy to accept). The body is the nested document
//! `{agent: {order: record}}`.

use crate::util::*;
use deploy_common::legacy::http::{self, Form};
use serde_json::json;

const API_KEY: &str = "legacy-key";

struct Setup {
    proxy: Proxy,
    web: Farm,
    _dir: Sandbox,
}

fn setup(net: u8) -> Setup {
    let web = Farm::start(net, 1, 2, KEY);
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new("px-legacy")
        .key(API_KEY, "web")
        .servers("web", &web.addrs)
        .start(dir.path());
    Setup {
        proxy,
        web,
        _dir: dir,
    }
}

/// Asserts a v1 reply: 200 and the nested document of `/bin/echo hi` on every agent.
fn assert_nested(reply: &Reply, web: &Farm) {
    reply.expect_code(200);
    let body = reply.body();
    let mut hosts: Vec<&String> = body.keys().collect();
    hosts.sort();
    assert_eq!(hosts, web.names().iter().collect::<Vec<_>>(), "{reply:?}");
    for (host, by_order) in body {
        assert_eq!(
            by_order,
            &json!({"exec": {
                "return": 1,
                "serverStatus": 1,
                "returnCode": "200",
                "returnString": "OK",
                "content": {"return": "true", "command": ECHO_COMMAND, "content": ECHO_CONTENT, "code": "0"},
            }}),
            "{host}"
        );
    }
}

#[tokio::test]
async fn post_with_a_form_and_get_with_a_query() {
    let s = setup(61);
    let form = Form {
        options: ECHO.into(),
        args: "groups:web".into(),
        api_key: API_KEY.into(),
        ..Form::default()
    };
    let post = http::encode_request_escaped("exec", &form);
    assert!(
        post.starts_with(b"POST /agent/exec"),
        "{:?}",
        String::from_utf8_lossy(&post)
    );
    assert_nested(&parse_plain(&v1_raw(s.proxy.addr(), &post).await), &s.web);

    let get =
        format!("GET /api/exec?options={ECHO}&args=groups:web&api_key={API_KEY} HTTP/1.0\r\n\r\n");
    assert_nested(
        &parse_plain(&v1_raw(s.proxy.addr(), get.as_bytes()).await),
        &s.web,
    );
}

#[tokio::test]
async fn path_parameters_of_the_original() {
    let s = setup(62);
    for prefix in ["api", "agent"] {
        let get = format!("GET /{prefix}/exec/{ECHO}/groups:web/{API_KEY} HTTP/1.0\r\n\r\n");
        assert_nested(
            &parse_plain(&v1_raw(s.proxy.addr(), get.as_bytes()).await),
            &s.web,
        );
    }
}

/// The proxy passes `options` as the caller wrote them, whitespace included (the
/// original removed all of it, so `service:echo,a b` ran `/bin/echo ab`): through the
/// proxy an order does what it does sent to the agent directly. `args` and `api_key`
/// still lose their whitespace, as in the original (docs/protocol.md, "Whitespace").
#[tokio::test]
async fn options_keep_their_whitespace_args_lose_it() {
    let s = setup(63);
    let form = Form {
        options: "service:echo,a b".into(),
        args: " groups: web ".into(),
        api_key: format!(" {API_KEY}"),
        ..Form::default()
    };
    let reply =
        parse_plain(&v1_raw(s.proxy.addr(), &http::encode_request_escaped("exec", &form)).await);
    reply.expect_code(200);
    let body = reply.body();
    assert_eq!(body.len(), s.web.names().len(), "{reply:?}");
    for (host, by_order) in body {
        let content = &by_order["exec"]["content"];
        assert_eq!(content["content"], b64("a b\n"), "{host}: {reply:?}");
        assert_eq!(
            content["command"],
            b64("/bin/echo a b"),
            "{host}: {reply:?}"
        );
    }
}
