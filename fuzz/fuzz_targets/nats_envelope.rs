//! The NATS envelope decoders on untrusted bytes: the agent's opening of a request
//! and the caller's opening of a reply stream must refuse garbage without panicking;
//! a sealed request still opens after them (round trip), and a byte flipped in it is
//! refused.

#![no_main]

use deploy_common::order::Request;
use deploy_common::wire::message::Message;
use deploy_nats::envelope::{open_request, seal_request, Psk, SeenSet};
use deploy_nats::identity::{AgentKeys, Identity};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const T: i64 = 1_800_000_000_000;

/// Agent `a`'s static key, and the callers' pin of it (one per process).
fn keys() -> &'static (Identity, Arc<AgentKeys>) {
    static KEYS: OnceLock<(Identity, Arc<AgentKeys>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let id = Identity::generate().expect("an X25519 key");
        let mut pins = AgentKeys::none();
        pins.pin("a", *id.public());
        (id, Arc::new(pins))
    })
}

fuzz_target!(|data: &[u8]| {
    let psk = Psk::new("fuzz");
    let (id, pins) = keys();
    let mut seen = SeenSet::new();
    let _ = open_request(&psk, id, "a", "deploy.agent.a", data, &mut seen, T);
    let message = Message::Request {
        id: 1,
        request: Request {
            order: "exec".into(),
            ..Request::default()
        },
    };
    let Ok(mut sealed) = seal_request(&psk, "deploy.agent.a", &message, T, Arc::clone(pins)) else {
        return;
    };
    let _ = sealed.opener.open(data);
    if let Some((&first, _)) = data.split_first() {
        let mut bad = sealed.bytes.clone();
        let i = usize::from(first) % bad.len();
        bad[i] ^= 1;
        assert!(open_request(&psk, id, "a", "deploy.agent.a", &bad, &mut seen, T).is_err());
    }
    let mut opened = open_request(&psk, id, "a", "deploy.agent.a", &sealed.bytes, &mut seen, T)
        .expect("a sealed request opens");
    assert_eq!(opened.message, message);
    // The reply sealed with a's pinned key opens at the caller.
    let reply = opened
        .replier
        .seal(&Message::Continue { id: 1 })
        .expect("a reply seals");
    assert!(sealed.opener.open(&reply).is_ok());
});
