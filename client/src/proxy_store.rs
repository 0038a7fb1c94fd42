//! Scenario versions kept by a proxy: [`ScenarioStore`] over the proxy's own
//! `scenario-versions` order ([`deploy_common::order::scenario_versions`]), used when a
//! scenario is applied through a proxy (`--proxy`), so that every caller of that proxy
//! sees one history. Each call is one request to the proxy with the caller's API key;
//! the proxy's refusals come back as [`StoreError`]s naming the proxy.

use std::sync::Arc;

use deploy_common::order::scenario_versions::{Action, VersionsSpec, ORDER};
use deploy_common::order::{Body, Request};
use deploy_common::target::Target;
use deploy_common::transport::{Outcome, Transport};
use deploy_scenario::store::{BoxFuture, Page, ScenarioStore, ScenarioVersion, StoreError};
use serde_json::{Map, Value};

/// The proxy's store, reached through `transport`.
pub struct ProxyStore {
    /// How the proxy is reached (its own secret).
    pub transport: Arc<dyn Transport>,
    /// The proxy.
    pub target: Target,
    /// The caller's API key.
    pub api_key: String,
}

impl ProxyStore {
    async fn call(&self, spec: VersionsSpec) -> Result<Map<String, Value>, StoreError> {
        let request = Request {
            order: ORDER.into(),
            api_key: self.api_key.clone(),
            scenario_versions: Some(Box::new(spec.clone())),
            ..Request::default()
        };
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let outcome = self.transport.deliver(&self.target, &request, tx).await;
        let proxy = &self.target;
        let reply = match outcome {
            Outcome::Reply(reply) => reply,
            other => {
                return Err(StoreError::Remote(format!(
                    "proxy {proxy}: {}",
                    other
                        .to_json()
                        .get("returnString")
                        .map_or_else(String::new, |v| v.as_str().unwrap_or_default().to_owned())
                )))
            }
        };
        let text = match &reply.body {
            Body::Json(map) if reply.code == 200 => return Ok(map.clone()),
            Body::Json(map) => Value::Object(map.clone()).to_string(),
            Body::Text(text) => text.clone(),
            Body::Empty => String::new(),
        };
        let scenario = spec.scenario;
        let prefix = spec.prefix;
        Err(match reply.code {
            404 if spec.action == Action::Get => StoreError::NotFound { scenario, prefix },
            code => StoreError::Remote(format!("proxy {proxy}: {code} {text}")),
        })
    }
}

fn field<T: serde::de::DeserializeOwned>(
    map: &Map<String, Value>,
    key: &str,
) -> Result<T, StoreError> {
    let value = map.get(key).cloned().unwrap_or(Value::Null);
    serde_json::from_value(value)
        .map_err(|e| StoreError::Remote(format!("the proxy's reply: {key}: {e}")))
}

impl ScenarioStore for ProxyStore {
    fn list<'a>(
        &'a self,
        scenario: &'a str,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, StoreError>> {
        Box::pin(async move {
            let map = self
                .call(VersionsSpec {
                    action: Action::List,
                    scenario: scenario.into(),
                    offset,
                    limit,
                    ..VersionsSpec::default()
                })
                .await?;
            Ok(Page {
                versions: field(&map, "versions")?,
                total: field(&map, "total")?,
            })
        })
    }

    fn get<'a>(
        &'a self,
        scenario: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<ScenarioVersion, StoreError>> {
        Box::pin(async move {
            // The prefix rules are checked here too, so that the message is the same
            // as with a folder's store.
            let prefix = prefix.trim().to_ascii_lowercase();
            if prefix.len() < deploy_scenario::store::MIN_PREFIX
                || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(StoreError::BadPrefix { prefix });
            }
            let map = self
                .call(VersionsSpec {
                    action: Action::Get,
                    scenario: scenario.into(),
                    prefix,
                    ..VersionsSpec::default()
                })
                .await?;
            field(&map, "version")
        })
    }

    fn append<'a>(&'a self, version: &'a ScenarioVersion) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let version = serde_json::to_value(version)
                .map_err(|e| StoreError::Remote(format!("scenario version: {e}")))?;
            self.call(VersionsSpec {
                action: Action::Append,
                version: Some(version),
                ..VersionsSpec::default()
            })
            .await
            .map(drop)
        })
    }

    fn forget<'a>(&'a self, scenario: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.call(VersionsSpec {
                action: Action::Forget,
                scenario: scenario.into(),
                ..VersionsSpec::default()
            })
            .await
            .map(drop)
        })
    }
}
