//! IPv6: an agent listening on `[::1]` (with an extra IPv4 `listen[]` socket) serves v2
//! and both v1 wires on each address; `[allow::hosts]` matches IPv6 peers.

use crate::util::*;
use std::time::Duration;

#[tokio::test]
async fn serves_v2_and_v1_on_ipv6() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb)
        .server("addr", "::1")
        .server("listen", "127.0.0.1:0")
        .start(&sb);
    assert_eq!(agent.addrs.len(), 2, "{:?}", agent.addrs);
    assert!(agent.addrs[0].is_ipv6(), "{:?}", agent.addrs);
    assert_eq!(agent.addrs[0].ip().to_string(), "::1");
    assert!(agent.addrs[1].is_ipv4(), "{:?}", agent.addrs);
    for &addr in &agent.addrs {
        for proto in [Proto::V2, Proto::V1Plain, Proto::V1Ssl] {
            let r = call(proto, addr, "exec", "service:echo,over,ipv6").await;
            r.expect_code(200);
            assert_eq!(r.s("content"), b64("over ipv6\n"), "{proto:?} {addr}");
        }
    }
}

#[tokio::test]
async fn ipv6_peer_must_be_allowed() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb)
        .server("addr", "::1")
        .hosts(&["127.0.0.1", "2001:db8::/32"])
        .start(&sb);
    // Refused at accept: closed before anything is read.
    let mut stream = connect(agent.addr()).await;
    assert!(read_to_eof(&mut stream, Duration::from_secs(2))
        .await
        .is_empty());
    let e = v2(agent.addr(), KEY, None, request("exec", "service:echo,x")).await;
    assert!(
        matches!(
            e,
            Err(deploy_common::wire::WireError::Closed | deploy_common::wire::WireError::Io(_))
        ),
        "{e:?}"
    );
}
