//! Unit tests of the sealed envelope: round trips, and every refusal.

use super::*;
use deploy_common::order::{Reply, Request};

fn request() -> Message {
    Message::Request {
        id: 1,
        request: Request {
            order: "exec".into(),
            options: "date".into(),
            ..Request::default()
        },
    }
}

const T: i64 = 1_800_000_000_000;

/// The static keys of agents `a`, `web1` and `web2`, and the callers' pins of them.
struct Fleet {
    ids: HashMap<&'static str, Identity>,
    pins: Arc<AgentKeys>,
}

fn fleet() -> Fleet {
    let mut ids = HashMap::new();
    let mut pins = AgentKeys::none();
    for name in ["a", "web1", "web2"] {
        let id = Identity::generate().unwrap();
        pins.pin(name, *id.public());
        ids.insert(name, id);
    }
    Fleet {
        ids,
        pins: Arc::new(pins),
    }
}

impl Fleet {
    fn id(&self, name: &str) -> &Identity {
        &self.ids[name]
    }

    fn seal(&self, psk: &Psk, subject: &str) -> Sealed {
        seal_request(psk, subject, &request(), T, Arc::clone(&self.pins)).unwrap()
    }
}

#[test]
fn round_trip_with_two_agents() {
    let psk = Psk::new("secret");
    let f = fleet();
    let mut sealed = f.seal(&psk, "deploy.group.web");
    let mut replies = Vec::new();
    for name in ["web1", "web2"] {
        let mut seen = SeenSet::new();
        let opened = open_request(
            &psk,
            f.id(name),
            name,
            "deploy.group.web",
            &sealed.bytes,
            &mut seen,
            T + 5,
        )
        .unwrap();
        assert_eq!(opened.message, request());
        let mut r = opened.replier;
        replies.push(r.seal(&Message::Continue { id: 1 }).unwrap());
        replies.push(r.seal(&Message::reply(1, &Reply::error(404, "x"))).unwrap());
    }
    for bytes in &replies {
        let (name, message) = sealed.opener.open(bytes).unwrap();
        assert!(name == "web1" || name == "web2");
        assert!(matches!(
            message,
            Message::Continue { .. } | Message::Reply { .. }
        ));
    }
}

#[test]
fn wrong_key_tamper_replay_skew_subject() {
    let psk = Psk::new("secret");
    let f = fleet();
    let a = f.id("a");
    let sealed = f.seal(&psk, "deploy.agent.a");
    let mut seen = SeenSet::new();
    let other = Psk::new("other");
    assert_eq!(
        open_request(
            &other,
            a,
            "a",
            "deploy.agent.a",
            &sealed.bytes,
            &mut seen,
            T
        )
        .err(),
        Some(EnvelopeError::Forged)
    );
    for i in [1, 5, 40, sealed.bytes.len() - 1] {
        let mut bad = sealed.bytes.clone();
        bad[i] ^= 1;
        assert!(open_request(&psk, a, "a", "deploy.agent.a", &bad, &mut seen, T).is_err());
    }
    assert!(matches!(
        open_request(&psk, a, "a", "deploy.group.g", &sealed.bytes, &mut seen, T),
        Err(EnvelopeError::WrongSubject { .. })
    ));
    assert!(matches!(
        open_request(
            &psk,
            a,
            "a",
            "deploy.agent.a",
            &sealed.bytes,
            &mut seen,
            T + 61_000
        ),
        Err(EnvelopeError::Skew { .. })
    ));
    assert!(seen.is_empty(), "nothing refused is remembered");
    assert!(open_request(&psk, a, "a", "deploy.agent.a", &sealed.bytes, &mut seen, T).is_ok());
    assert_eq!(
        open_request(
            &psk,
            a,
            "a",
            "deploy.agent.a",
            &sealed.bytes,
            &mut seen,
            T + 1
        )
        .err(),
        Some(EnvelopeError::Replayed)
    );
}

#[test]
fn replies_in_sequence_only() {
    let psk = Psk::new("secret");
    let f = fleet();
    let a = f.id("a");
    let mut sealed = f.seal(&psk, "deploy.agent.a");
    let mut seen = SeenSet::new();
    let mut r = open_request(&psk, a, "a", "deploy.agent.a", &sealed.bytes, &mut seen, T)
        .unwrap()
        .replier;
    let m0 = r.seal(&Message::Continue { id: 1 }).unwrap();
    let m1 = r.seal(&Message::Continue { id: 1 }).unwrap();
    let m2 = r.seal(&Message::reply(1, &Reply::error(500, "x"))).unwrap();
    // Tampered: refused, and the stream still takes the real one.
    let mut bad = m0.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(sealed.opener.open(&bad).err(), Some(EnvelopeError::Forged));
    sealed.opener.open(&m0).unwrap();
    // Skipped (m1 dropped: the reply cannot end the stream).
    assert!(matches!(
        sealed.opener.open(&m2),
        Err(EnvelopeError::Sequence {
            got: 2,
            expected: 1,
            ..
        })
    ));
    sealed.opener.open(&m1).unwrap();
    // Replayed.
    assert!(matches!(
        sealed.opener.open(&m1),
        Err(EnvelopeError::Sequence {
            got: 1,
            expected: 2,
            ..
        })
    ));
    sealed.opener.open(&m2).unwrap();
}

#[test]
fn seen_set_forgets_after_the_window() {
    let mut seen = SeenSet::new();
    seen.insert([1; 32], T, T).unwrap();
    assert_eq!(seen.insert([1; 32], T, T + 1), Err(EnvelopeError::Replayed));
    seen.insert([2; 32], T + 200_000, T + 200_000).unwrap();
    assert_eq!(seen.len(), 1);
}

#[test]
fn garbage_is_refused_without_panic() {
    let psk = Psk::new("k");
    let f = fleet();
    let a = f.id("a");
    let mut seen = SeenSet::new();
    let mut sealed = f.seal(&psk, "s");
    for len in 0..200u32 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
        assert!(open_request(&psk, a, "a", "s", &bytes, &mut seen, T).is_err());
        assert!(sealed.opener.open(&bytes).is_err());
        let mut reply = vec![VERSION, KIND_REPLY];
        reply.extend_from_slice(&bytes);
        assert!(sealed.opener.open(&reply).is_err());
    }
}

/// Finding 2 (h7 review): the reply key depended only on the psk, the request and the
/// name the replier *claims*; every agent of a group holds the same psk, so one of
/// them (compromised, or just a spy with that agent's key_cipher) answered for another:
/// the caller took web2's forged `200` as web1's, and web1's real stream was then
/// refused (another ephemeral key for the same name). The reply key now needs the
/// static key the caller pinned for the name.
#[test]
fn one_agent_of_a_group_cannot_answer_for_another() {
    let psk = Psk::new("secret");
    let f = fleet();
    let mut sealed = f.seal(&psk, "deploy.group.web");
    // web2 (its own static key, the group's psk) opens the order as if it were web1,
    // and answers first.
    let forged = open_request(
        &psk,
        f.id("web2"),
        "web1",
        "deploy.group.web",
        &sealed.bytes,
        &mut SeenSet::new(),
        T + 5,
    )
    .unwrap()
    .replier
    .seal(&Message::reply(
        1,
        &Reply::error(200, "all fine (not really)"),
    ))
    .unwrap();
    let genuine = open_request(
        &psk,
        f.id("web1"),
        "web1",
        "deploy.group.web",
        &sealed.bytes,
        &mut SeenSet::new(),
        T + 6,
    )
    .unwrap()
    .replier
    .seal(&Message::reply(1, &Reply::error(500, "the real outcome")))
    .unwrap();
    assert!(
        sealed.opener.open(&forged).is_err(),
        "a reply sealed by another holder of the psk was taken as web1's"
    );
    let (name, message) = sealed.opener.open(&genuine).unwrap();
    assert_eq!(name, "web1");
    assert!(
        matches!(message, Message::Reply { code: 500, .. }),
        "{message:?}"
    );
}

/// A reply from a name the caller pinned no key for is refused, whatever it carries.
#[test]
fn a_reply_from_an_unpinned_agent_is_refused() {
    let psk = Psk::new("secret");
    let f = fleet();
    let mut sealed = f.seal(&psk, "deploy.group.web");
    let stranger = Identity::generate().unwrap();
    let reply = open_request(
        &psk,
        &stranger,
        "web3",
        "deploy.group.web",
        &sealed.bytes,
        &mut SeenSet::new(),
        T,
    )
    .unwrap()
    .replier
    .seal(&Message::reply(1, &Reply::error(200, "hi")))
    .unwrap();
    assert_eq!(
        sealed.opener.open(&reply).err(),
        Some(EnvelopeError::Unpinned("web3".into()))
    );
}
