//! The NATS envelope decoders on untrusted bytes: the agent's opening of a request
//! and the caller's opening of a reply stream must refuse garbage without panicking;
//! a sealed request still opens after them (round trip), and a byte flipped in it is
//! refused.

#![no_main]

use deploy_common::order::Request;
use deploy_common::wire::message::Message;
use deploy_nats::envelope::{open_request, seal_request, Psk, SeenSet};
use libfuzzer_sys::fuzz_target;

const T: i64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let psk = Psk::new("fuzz");
    let mut seen = SeenSet::new();
    let _ = open_request(&psk, "a", "deploy.agent.a", data, &mut seen, T);
    let message = Message::Request {
        id: 1,
        request: Request {
            order: "exec".into(),
            ..Request::default()
        },
    };
    let Ok(mut sealed) = seal_request(&psk, "deploy.agent.a", &message, T) else {
        return;
    };
    let _ = sealed.opener.open(data);
    if let Some((&first, _)) = data.split_first() {
        let mut bad = sealed.bytes.clone();
        let i = usize::from(first) % bad.len();
        bad[i] ^= 1;
        assert!(open_request(&psk, "a", "deploy.agent.a", &bad, &mut seen, T).is_err());
    }
    let opened = open_request(&psk, "a", "deploy.agent.a", &sealed.bytes, &mut seen, T)
        .expect("a sealed request opens");
    assert_eq!(opened.message, message);
});
