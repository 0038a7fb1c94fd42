//! The proxy's own `scenario-versions` order
//! ([`deploy_common::order::scenario_versions`]): scenario versions kept in the proxy's
//! store ([`crate::store::SharedStore`]: its state dir, or a NATS bucket shared with the
//! other proxies of the fleet), one history shared by every caller, so that a scenario
//! applied through this proxy (or any proxy sharing its store) has the same versions
//! whoever applies it and from whichever folder. Served here, never relayed.
//!
//! ```text
//! key unknown                       403 You don't have permission to access on this[scenario-versions].
//! key whose [orders] lack it        403 This API key may not send the order [scenario-versions].
//! no scenario_versions field        400
//! store errors                      400 bad or ambiguous prefix · 404 no such version · 500 the database
//! ```

use crate::store::SharedStore;
use deploy_common::config::proxy::ProxyConfig;
use deploy_common::order::scenario_versions::{Action, VersionsSpec, ORDER};
use deploy_common::order::{object, Reply, Request};
use deploy_store::{ScenarioStore, ScenarioVersion, StoreError};
use serde_json::Value;

/// Answers one `scenario-versions` request.
pub async fn handle(config: &ProxyConfig, store: &SharedStore, request: &Request) -> Reply {
    let key: String = request
        .api_key
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if config.api.groups_for(&key).is_none() {
        return Reply::error(
            403,
            format!("You don't have permission to access on this[{ORDER}]."),
        );
    }
    if let Some(orders) = config.api.orders_for(&key) {
        if !orders.iter().any(|o| o == ORDER) {
            return Reply::error(
                403,
                format!("This API key may not send the order [{ORDER}]."),
            );
        }
    }
    let Some(spec) = request.scenario_versions.as_deref() else {
        return Reply::error(400, "scenario-versions needs its scenario_versions field");
    };
    let result = match store.versions().await {
        Ok(versions) => run(versions, spec).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(reply) => reply,
        Err(e) => {
            let code = match e {
                // Remote: what the request lacks or got wrong (no scenario, no version).
                StoreError::BadPrefix { .. }
                | StoreError::Ambiguous { .. }
                | StoreError::Remote(_) => 400,
                StoreError::NotFound { .. } => 404,
                _ => {
                    tracing::error!(store = %store.describe(), error = %e, "scenario store");
                    500
                }
            };
            Reply::error(code, e.to_string())
        }
    }
}

fn as_json<T: serde::Serialize>(value: &T) -> Result<Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::Remote(e.to_string()))
}

async fn run(store: &dyn ScenarioStore, spec: &VersionsSpec) -> Result<Reply, StoreError> {
    let needs_scenario = || {
        if spec.scenario.is_empty() {
            Err(StoreError::Remote("a scenario name is needed".into()))
        } else {
            Ok(())
        }
    };
    Ok(match spec.action {
        Action::List => {
            needs_scenario()?;
            let page = store.list(&spec.scenario, spec.offset, spec.limit).await?;
            Reply::ok(object([
                ("versions", as_json(&page.versions)?),
                ("total", Value::from(page.total)),
            ]))
        }
        Action::Get => {
            needs_scenario()?;
            let version = store.get(&spec.scenario, &spec.prefix).await?;
            Reply::ok(object([("version", as_json(&version)?)]))
        }
        Action::Append => {
            let version: ScenarioVersion = spec
                .version
                .clone()
                .ok_or_else(|| StoreError::Remote("append needs a version".into()))
                .and_then(|v| {
                    serde_json::from_value(v)
                        .map_err(|e| StoreError::Remote(format!("not a scenario version: {e}")))
                })?;
            store.append(&version).await?;
            Reply::ok(object([("appended", Value::String(version.id))]))
        }
        Action::Forget => {
            needs_scenario()?;
            store.forget(&spec.scenario).await?;
            Reply::ok(object([(
                "forgotten",
                Value::String(spec.scenario.clone()),
            )]))
        }
    })
}
