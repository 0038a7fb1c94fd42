//! The subjects of deploy on NATS.
//!
//! ```text
//! deploy.agent.<name>           orders for one agent
//! deploy.group.<group>          orders for every agent of a group (one publish)
//! deploy.body.<name>.<nonce>    the body of one order (upload), to one agent
//! _INBOX.…                      the caller's inbox: every reply stream of an order
//! ```

/// The subject of one agent.
pub fn agent(name: &str) -> String {
    format!("deploy.agent.{name}")
}

/// The subject of a group.
pub fn group(group: &str) -> String {
    format!("deploy.group.{group}")
}

/// The subject of one order's body to one agent (`nonce` in hex).
pub fn body(name: &str, nonce_hex: &str) -> String {
    format!("deploy.body.{name}.{nonce_hex}")
}
