//! Running a plan on the nodes: `napp` orders through any [`Transport`], stage by stage.
//!
//! ```text
//! apply(scenario, target, message, transport, options)
//!   check      names, nodes (agents, ssh://, @group with a proxy), scripts read,
//!              sources walked: everything refused before any order is sent
//!   phase      push*  ─barrier─  stage(order) ─barrier─ stage(next order) … ─barrier─ commit* | purge*
//!              *push: prepare (each app's sourcepath as a tar body, to each of its nodes)
//!              *commit: the commit target; *purge: after the purge scripts
//!   stage      one napp order per (app, script), fanned out to the app's nodes
//!              (Fanout), every (app, script) of the stage at once
//!   stop       a failed step stops the later stages and phases unless keep_going
//!   versions   after prepare or commit: each NodeApp's current version (napp versions,
//!              limit 1); recorded in the ScenarioStore as a scenario version if the
//!              map changed (always on commit)
//! ```
//!
//! Output lines of the scripts stream as [`ApplyEvent::Line`] (node and app named), each
//! step's result as [`ApplyEvent::Step`] the moment it is known; the [`Report`] at the end
//! holds every step. A `@group` node is sent to the proxy with `groups:<group>`: its
//! agents' results come back one by one, named by the proxy; a `push` (prepare) carries
//! its tar body to the proxy, which relays it to every agent of the group.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use deploy_common::fanout::{Fanout, FanoutEvent};
use deploy_common::order::napp::{self, Action, NappSpec};
use deploy_common::order::{Body, OrderName, Request};
use deploy_common::target::{Scheme, Target};
use deploy_common::transport::{record_outcome, Outcome, Transport};
use deploy_common::upload::UploadSpec;
use deploy_common::wire::message::{Event, Stream};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::folder::Scenario;
use crate::plan::{plan, Phase, Step, Target as PlanTarget};
use crate::store::{ScenarioStore, ScenarioVersion, StoreError, VersionMap};

/// How `apply` reaches the nodes and what it does on failure.
#[derive(Clone)]
pub struct Options {
    /// Go on with later stages after a failed step.
    pub keep_going: bool,
    /// Deliveries at once, per (app, script).
    pub concurrency: usize,
    /// The port of node names that give none (agents listen on 3440).
    pub port: u16,
    /// Where `@group` nodes go.
    pub proxy: Option<Proxy>,
    /// Where scenario versions are recorded (none: not recorded).
    pub store: Option<Arc<dyn ScenarioStore>>,
    /// Where events go as they happen (none: only the report).
    pub events: Option<mpsc::UnboundedSender<ApplyEvent>>,
    /// The transport takes `napp` to `ssh://` hosts (every action; their NodeApps'
    /// versions are kept on the hosts).
    pub ssh: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            keep_going: false,
            concurrency: deploy_common::fanout::DEFAULT_CONCURRENCY,
            port: 3440,
            proxy: None,
            store: None,
            events: None,
            ssh: false,
        }
    }
}

/// A proxy for `@group` nodes.
#[derive(Clone)]
pub struct Proxy {
    /// The proxy.
    pub target: Target,
    /// The API key whose groups hold the nodes.
    pub api_key: String,
    /// How to reach the proxy when not as the agents (its own secret); none: the
    /// agents' transport.
    pub transport: Option<Arc<dyn Transport>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Something that happened during an apply, as it happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApplyEvent {
    /// A stage starts: every step in it runs now.
    Stage {
        /// The phase's target.
        phase: String,
        /// `push`, `script`, `commit`, `purge`, `versions`.
        action: String,
        /// The `order` of a script stage.
        #[serde(skip_serializing_if = "Option::is_none")]
        order: Option<i64>,
        /// How many (app, node) steps it holds (a `@group` counts once).
        steps: usize,
    },
    /// One line of a script's output.
    Line {
        /// The node.
        node: String,
        /// The application.
        app: String,
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The text.
        line: String,
    },
    /// A step ended.
    Step(Box<StepResult>),
    /// Later stages were skipped.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// The result of one step on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepResult {
    /// The phase's target (`prepare`, `start`, …).
    pub target: String,
    /// `push`, `script`, `commit`, `purge`, `versions`, `reset`.
    pub action: String,
    /// The application.
    pub app: String,
    /// The node (as written in deployment.yaml, or as the proxy names its agent).
    pub node: String,
    /// The script's file (script steps).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub script: String,
    /// The stage's order (script steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<i64>,
    /// Whether it succeeded.
    pub ok: bool,
    /// The script's exit code, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// What the script appended to `$OCTOPODA_OUTPUT`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
    /// The NodeApp version (push, commit, reset; the current one for `versions`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Why it failed, when it did not get as far as an exit code.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The node's reply body (for callers that want more than the above).
    #[serde(skip)]
    pub body: Map<String, Value>,
}

impl StepResult {
    /// `node app: target script` for messages.
    pub fn label(&self) -> String {
        let what = if self.script.is_empty() {
            self.action.clone()
        } else {
            format!("{} {}", self.target, self.script)
        };
        format!("{} {}: {what}", self.node, self.app)
    }
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: String,
    /// The target asked for.
    pub target: String,
    /// Every step succeeded.
    pub ok: bool,
    /// Why later stages were skipped, if they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Every step, in the order they ended.
    pub steps: Vec<StepResult>,
    /// The NodeApps' versions after the apply (prepare, commit).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: VersionMap,
    /// The scenario version recorded, if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<ScenarioVersion>,
}

/// Why an apply did not start (nothing was sent) or could not record its result.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The plan could not be made.
    #[error(transparent)]
    Plan(#[from] Box<crate::Error>),
    /// A name the nodes would refuse.
    #[error("{what} {name:?}: a NodeApp name is letters, digits, '_', '-' and '.', not starting with '.' or '-', at most 128 bytes")]
    BadName {
        /// `scenario` or `application`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A node that cannot be reached as written.
    #[error("application {app:?}: node {node:?}: {reason}")]
    BadNode {
        /// The application.
        app: String,
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// A script could not be read.
    #[error("application {app:?}: script {path}: {source}")]
    Script {
        /// The application.
        app: String,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A sourcepath could not be walked.
    #[error("application {app:?}: sourcepath {path}: {reason}")]
    Source {
        /// The application.
        app: String,
        /// The directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Box<StoreError>),
}

/// Where one node is reached.
#[derive(Debug, Clone)]
enum Route {
    /// An agent (or an `ssh://` host, which does not serve `napp` yet).
    Direct(Target),
    /// The agents of a proxy's group.
    Group { proxy: Proxy, group: String },
    /// One agent of a proxy, by the proxy's name for it (resets of recorded versions).
    ViaProxy { proxy: Proxy, host: String },
}

/// Resolves a node as written in `deployment.yaml`.
fn route(app: &str, node: &str, options: &Options) -> Result<Route, ApplyError> {
    let bad = |reason: String| ApplyError::BadNode {
        app: app.to_owned(),
        node: node.to_owned(),
        reason,
    };
    if let Some(group) = node.strip_prefix('@') {
        let Some(proxy) = &options.proxy else {
            return Err(bad(
                "a group of a proxy: give --proxy (or an alias in alias.yaml)".into(),
            ));
        };
        return Ok(Route::Group {
            proxy: proxy.clone(),
            group: group.to_owned(),
        });
    }
    let target = Target::parse(node, options.port).map_err(|e| bad(e.to_string()))?;
    if target.scheme == Scheme::Ssh && !options.ssh {
        return Err(bad(
            "this transport does not take scenarios to ssh:// hosts".into(),
        ));
    }
    Ok(Route::Direct(target))
}

/// One napp order to a set of nodes.
struct Job {
    target: String,
    action: Action,
    app: String,
    script: String,
    order: Option<i64>,
    request: Request,
    nodes: Vec<(String, Route)>,
}

/// The state of one apply (or reset).
struct Runner<'a> {
    transport: Arc<dyn Transport>,
    options: &'a Options,
    steps: Vec<StepResult>,
    /// Fan-outs at once.
    permits: Arc<tokio::sync::Semaphore>,
}

impl<'a> Runner<'a> {
    fn new(transport: Arc<dyn Transport>, options: &'a Options) -> Runner<'a> {
        Runner {
            transport,
            options,
            steps: Vec::new(),
            permits: Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1))),
        }
    }
}

impl Runner<'_> {
    fn emit(&self, event: ApplyEvent) {
        if let Some(tx) = &self.options.events {
            let _ = tx.send(event);
        }
    }

    /// Runs every job at once and waits for all (the barrier); true if all succeeded.
    async fn stage(
        &mut self,
        phase: &str,
        action: Action,
        order: Option<i64>,
        jobs: Vec<Job>,
    ) -> bool {
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.nodes.is_empty()).collect();
        self.emit(ApplyEvent::Stage {
            phase: phase.to_owned(),
            action: action.as_str().to_owned(),
            order,
            steps: jobs.iter().map(|j| j.nodes.len()).sum(),
        });
        let (tx, mut rx) = mpsc::channel::<(usize, usize, FanoutEvent)>(1024);
        // Each job's nodes, by delivery: direct ones in one fan-out, each group or
        // proxied host in its own (their request names the proxy's selection).
        let mut runs: Vec<(usize, Vec<String>, bool)> = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            let mut direct_targets = Vec::new();
            let mut direct_names = Vec::new();
            for (name, route) in &job.nodes {
                match route {
                    Route::Direct(t) => {
                        direct_targets.push(t.clone());
                        direct_names.push(name.clone());
                    }
                    Route::Group { proxy, group } => {
                        let args = format!("groups:{group}");
                        self.spawn(&tx, runs.len(), j, proxy, args, &job.request);
                        runs.push((j, vec![name.clone()], true));
                    }
                    Route::ViaProxy { proxy, host } => {
                        let args = format!("hosts:{host}");
                        self.spawn(&tx, runs.len(), j, proxy, args, &job.request);
                        runs.push((j, vec![name.clone()], true));
                    }
                }
            }
            if !direct_targets.is_empty() {
                let fanout = Fanout::new(Arc::clone(&self.transport))
                    .with_concurrency(self.options.concurrency);
                launch(
                    fanout,
                    direct_targets,
                    job.request.clone(),
                    Arc::clone(&self.permits),
                    tx.clone(),
                    runs.len(),
                    j,
                );
                runs.push((j, direct_names, false));
            }
        }
        drop(tx);
        let mut ok = true;
        // Runs through a proxy whose agents' results came as events.
        let mut relayed: HashMap<usize, usize> = HashMap::new();
        while let Some((run, j, event)) = rx.recv().await {
            let (Some(job), Some((_, names, proxied))) = (jobs.get(j), runs.get(run)) else {
                continue;
            };
            match event {
                FanoutEvent::Event {
                    event:
                        Event::Host {
                            host, result, via, ..
                        },
                    ..
                } => {
                    *relayed.entry(run).or_default() += 1;
                    let record = match result {
                        Value::Object(map) => map,
                        other => {
                            let mut map = Map::new();
                            map.insert("content".into(), other);
                            map
                        }
                    };
                    let mut step = step_result(job, host, &record_outcome(&record));
                    if !step.ok && step.error.is_empty() && step.code.is_none() {
                        step.error = format!("via {via}");
                    }
                    ok &= step.ok;
                    self.done(step);
                }
                FanoutEvent::Event {
                    index,
                    host,
                    event: Event::Line { stream, line, .. },
                } => {
                    let node = if *proxied {
                        host
                    } else {
                        names.get(index).cloned().unwrap_or(host)
                    };
                    self.emit(ApplyEvent::Line {
                        node,
                        app: job.app.clone(),
                        stream: match stream {
                            Stream::Stdout => "stdout",
                            Stream::Stderr => "stderr",
                        },
                        line,
                    });
                }
                FanoutEvent::Event { .. } => {}
                FanoutEvent::Done(result) => {
                    let answered = result.outcome.reply().is_some_and(|r| r.code == 200);
                    if *proxied && answered && relayed.get(&run).copied().unwrap_or(0) > 0 {
                        // The proxy's own count; its agents were reported one by one.
                        continue;
                    }
                    let node = names
                        .get(result.index)
                        .cloned()
                        .unwrap_or(result.host.clone());
                    let mut step = step_result(job, node, &result.outcome);
                    if *proxied && answered {
                        step.ok = false;
                        step.error = "the proxy named no agent of this group".into();
                    }
                    ok &= step.ok;
                    self.done(step);
                }
            }
        }
        ok
    }

    fn spawn(
        &self,
        tx: &mpsc::Sender<(usize, usize, FanoutEvent)>,
        run: usize,
        job: usize,
        proxy: &Proxy,
        args: String,
        request: &Request,
    ) {
        let request = Request {
            api_key: proxy.api_key.clone(),
            args,
            ..request.clone()
        };
        let transport = proxy.transport.as_ref().unwrap_or(&self.transport);
        let fanout = Fanout::new(Arc::clone(transport));
        let targets = vec![proxy.target.clone()];
        let permits = Arc::clone(&self.permits);
        launch(fanout, targets, request, permits, tx.clone(), run, job);
    }

    fn done(&mut self, step: StepResult) {
        tracing::info!(app = %step.app, node = %step.node, action = %step.action,
            script = %step.script, ok = step.ok, code = ?step.code, "step done");
        self.emit(ApplyEvent::Step(Box::new(step.clone())));
        self.steps.push(step);
    }
}

/// Runs one fan-out when a permit allows and forwards its events into the stage's
/// channel, tagged with its run and job.
fn launch(
    fanout: Fanout,
    targets: Vec<Target>,
    request: Request,
    permits: Arc<tokio::sync::Semaphore>,
    tx: mpsc::Sender<(usize, usize, FanoutEvent)>,
    run: usize,
    job: usize,
) {
    tokio::spawn(async move {
        // At most `concurrency` runs at once (each a fan-out of its own).
        let Ok(_permit) = permits.acquire_owned().await else {
            return;
        };
        let mut events = fanout.run(targets, request);
        while let Some(event) = events.recv().await {
            if tx.send((run, job, event)).await.is_err() {
                break;
            }
        }
    });
}

/// A step's result from how its delivery ended.
fn step_result(job: &Job, node: String, outcome: &Outcome) -> StepResult {
    let mut step = StepResult {
        target: job.target.clone(),
        action: job.action.as_str().to_owned(),
        app: job.app.clone(),
        node,
        script: job.script.clone(),
        order: job.order,
        ok: false,
        code: None,
        output: String::new(),
        version: String::new(),
        error: String::new(),
        body: Map::new(),
    };
    match outcome {
        Outcome::Reply(reply) if reply.code == 200 => {
            let Body::Json(body) = &reply.body else {
                step.error = "the node answered 200 without a JSON body".into();
                return step;
            };
            let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default();
            step.ok = text("return") == "true";
            step.code = text("code").parse().ok();
            step.output = decode(text("output"));
            step.version = text("version").to_owned();
            if job.action == Action::Versions {
                step.version = text("current").to_owned();
            }
            if !step.ok && step.code.is_none() {
                step.error = decode(text("stderr"));
            }
            step.body = body.clone();
        }
        Outcome::Reply(reply) => {
            let text = match &reply.body {
                Body::Text(t) => t.clone(),
                Body::Json(m) => Value::Object(m.clone()).to_string(),
                Body::Empty => String::new(),
            };
            step.error = format!("{} {}: {text}", reply.code, reply.reason())
                .trim_end_matches(": ")
                .to_owned();
        }
        other => step.error = other.to_string(),
    }
    step
}

/// Base64 → text (lossy); the text itself if it is not base64.
fn decode(b64: &str) -> String {
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => b64.to_owned(),
    }
}

/// A `napp` request.
fn request(spec: NappSpec) -> Request {
    Request {
        order: OrderName::Napp.as_str().to_owned(),
        follow: true,
        napp: Some(Box::new(spec)),
        ..Request::default()
    }
}

/// The variables a script gets from the caller (the node adds those naming its paths).
fn caller_env(step: &Step, scenario: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for prefix in ["OCTOPODA_", "DEPLOY_"] {
        env.insert(format!("{prefix}NODENAME"), step.node.clone());
        env.insert(format!("{prefix}FILENAME"), step.file.clone());
        env.insert(format!("{prefix}APP"), step.app.clone());
        env.insert(format!("{prefix}SCENARIO"), scenario.to_owned());
    }
    env.insert("DEPLOY_TARGET".into(), step.target.clone());
    env
}

/// The upload spec of an app's sources: the tree's contents, relative. `root` names the
/// NodeApp (the node decides where it is): it also keeps each app's walk apart in the
/// process's cache of walked trees.
fn source_spec(app: &str, scenario: &str) -> UploadSpec {
    UploadSpec {
        files: vec![".".into()],
        root: napp::dir_name(app, scenario),
        relative: true,
        no_owner: true,
    }
}

/// Checks that nothing would be refused by the nodes and that every node can be reached,
/// reads the scripts and walks the sources the plan needs: all before anything is sent.
struct Checked {
    routes: HashMap<(String, String), Route>,
    scripts: HashMap<std::path::PathBuf, String>,
}

/// Walks an app's sources once for every delivery, leaving out the folder's own
/// `.deploy/` (scenario versions) when the sources hold it (`sourcepath: ./`): a new
/// scenario version must not make every NodeApp change.
pub async fn walk(
    spec: &UploadSpec,
    source: &std::path::Path,
    root: &std::path::Path,
) -> Result<Arc<deploy_common::upload::Manifest>, String> {
    let (s, base) = (spec.clone(), source.to_path_buf());
    let store = root.join(crate::store::STORE_DIR);
    let mut manifest = tokio::task::spawn_blocking(move || {
        deploy_common::upload::Manifest::build(&s, &base).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("internal error: {e}"))??;
    manifest.entries.retain(|e| !e.local.starts_with(&store));
    let manifest = Arc::new(manifest);
    deploy_common::upload::keep(spec, Arc::clone(&manifest)).await;
    Ok(manifest)
}

/// Every (app, node)'s route, names checked.
fn routes(
    scenario: &Scenario,
    options: &Options,
) -> Result<HashMap<(String, String), Route>, ApplyError> {
    let mut routes = HashMap::new();
    for app in &scenario.apps {
        if !napp::valid_name(&app.name) {
            return Err(ApplyError::BadName {
                what: "application",
                name: app.name.clone(),
            });
        }
        for node in &app.nodes {
            routes.insert(
                (app.name.clone(), node.clone()),
                route(&app.name, node, options)?,
            );
        }
    }
    Ok(routes)
}

/// Every NodeApp's current version (`scenario get`), and the steps that failed to tell.
pub async fn current(
    scenario: &Scenario,
    transport: Arc<dyn Transport>,
    options: &Options,
) -> Result<(VersionMap, Vec<StepResult>), ApplyError> {
    if !napp::valid_name(&scenario.name) {
        return Err(ApplyError::BadName {
            what: "scenario",
            name: scenario.name.clone(),
        });
    }
    let checked = Checked {
        routes: routes(scenario, options)?,
        scripts: HashMap::new(),
    };
    let mut runner = Runner::new(transport, options);
    let from = runner.steps.len();
    let map = current_versions(&mut runner, scenario, &checked, "get").await;
    let failed = runner.steps.drain(from..).filter(|s| !s.ok).collect();
    Ok((map, failed))
}

async fn check(
    scenario: &Scenario,
    phases: &[Phase],
    options: &Options,
) -> Result<Checked, ApplyError> {
    if !napp::valid_name(&scenario.name) {
        return Err(ApplyError::BadName {
            what: "scenario",
            name: scenario.name.clone(),
        });
    }
    let routes = routes(scenario, options)?;
    let mut scripts = HashMap::new();
    for step in phases.iter().flat_map(|p| &p.stages).flat_map(|s| &s.steps) {
        if scripts.contains_key(&step.script) {
            continue;
        }
        let text = std::fs::read(&step.script).map_err(|source| ApplyError::Script {
            app: step.app.clone(),
            path: step.script.display().to_string(),
            source,
        })?;
        scripts.insert(
            step.script.clone(),
            base64::engine::general_purpose::STANDARD.encode(text),
        );
    }
    if phases.iter().any(|p| p.push_sources) {
        for app in &scenario.apps {
            let spec = source_spec(&app.name, &scenario.name);
            let manifest = walk(&spec, &app.source, &scenario.root)
                .await
                .map_err(|reason| ApplyError::Source {
                    app: app.name.clone(),
                    path: app.source.display().to_string(),
                    reason,
                })?;
            let (files, bytes) = manifest.totals();
            tracing::info!(app = %app.name, files, bytes, "sources to push");
        }
    }
    Ok(Checked { routes, scripts })
}

/// Runs `target` of `scenario` on its nodes (see the module documentation). An error
/// means nothing was sent (or, for [`ApplyError::Store`], that the run's version could
/// not be recorded); failed steps are in the report.
pub async fn apply(
    scenario: &Scenario,
    target: &PlanTarget,
    message: Option<&str>,
    transport: Arc<dyn Transport>,
    options: &Options,
) -> Result<Report, ApplyError> {
    let plan = plan(scenario, target, message).map_err(Box::new)?;
    let checked = check(scenario, &plan.phases, options).await?;
    let mut runner = Runner::new(transport, options);
    let name = &scenario.name;
    let message = message.unwrap_or_default();
    let mut stopped: Option<String> = None;
    let mut record = false;
    let mut always = false;
    let nodes_of = |app: &str| -> Vec<(String, Route)> {
        scenario
            .apps
            .iter()
            .filter(|a| a.name == app)
            .flat_map(|a| &a.nodes)
            .filter_map(|n| {
                checked
                    .routes
                    .get(&(app.to_owned(), n.clone()))
                    .map(|r| (n.clone(), r.clone()))
            })
            .collect()
    };
    let per_app = |phase: &Phase, action: Action, message: &str| -> Vec<Job> {
        scenario
            .apps
            .iter()
            .map(|app| {
                let mut req = request(NappSpec {
                    action,
                    scenario: name.clone(),
                    app: app.name.clone(),
                    message: message.to_owned(),
                    ..NappSpec::default()
                });
                if action == Action::Push {
                    req.upload = Some(Box::new(source_spec(&app.name, name)));
                }
                Job {
                    target: phase.target.clone(),
                    action,
                    app: app.name.clone(),
                    script: String::new(),
                    order: None,
                    request: req,
                    nodes: nodes_of(&app.name),
                }
            })
            .collect()
    };
    'phases: for phase in &plan.phases {
        if phase.push_sources {
            record = true;
            let text = if message.is_empty() {
                "prepare"
            } else {
                message
            };
            let jobs = per_app(phase, Action::Push, text);
            if !runner.stage(&phase.target, Action::Push, None, jobs).await && !options.keep_going {
                stopped = Some("pushing the sources failed".into());
                break 'phases;
            }
        }
        for stage in &phase.stages {
            // (app, file) → its nodes, in the stage's order.
            let mut jobs: Vec<Job> = Vec::new();
            for step in &stage.steps {
                let Some(route) = checked.routes.get(&(step.app.clone(), step.node.clone())) else {
                    continue;
                };
                // One request per node: each names its node (a group's agents name
                // themselves, by their host name).
                let mut env = caller_env(step, name);
                if matches!(route, Route::Group { .. }) {
                    env.retain(|k, _| !k.ends_with("_NODENAME"));
                }
                let spec = NappSpec {
                    action: Action::Script,
                    scenario: name.clone(),
                    app: step.app.clone(),
                    target: step.target.clone(),
                    file: step.file.clone(),
                    script: checked
                        .scripts
                        .get(&step.script)
                        .cloned()
                        .unwrap_or_default(),
                    env,
                    ..NappSpec::default()
                };
                jobs.push(Job {
                    target: phase.target.clone(),
                    action: Action::Script,
                    app: step.app.clone(),
                    script: step.file.clone(),
                    order: Some(stage.order),
                    request: request(spec),
                    nodes: vec![(step.node.clone(), route.clone())],
                });
            }
            let ok = runner
                .stage(&phase.target, Action::Script, Some(stage.order), jobs)
                .await;
            if !ok && !options.keep_going {
                stopped = Some(format!(
                    "a script of target {:?}, order {} failed; later orders were not run (--keep-going runs them)",
                    phase.target, stage.order
                ));
                break 'phases;
            }
        }
        if phase.target == "commit" {
            record = true;
            always = true;
            let jobs = per_app(phase, Action::Commit, message);
            if !runner
                .stage(&phase.target, Action::Commit, None, jobs)
                .await
                && !options.keep_going
            {
                stopped = Some("commit failed".into());
                break 'phases;
            }
        }
        if phase.remove_after {
            let jobs = per_app(phase, Action::Purge, message);
            runner.stage(&phase.target, Action::Purge, None, jobs).await;
            if let Some(store) = &options.store {
                store.forget(name).await.map_err(Box::new)?;
            }
        }
    }
    if let Some(reason) = &stopped {
        runner.emit(ApplyEvent::Stopped {
            reason: reason.clone(),
        });
    }
    let mut versions = VersionMap::new();
    let mut recorded = None;
    // Versions are asked only if something reached a node (a refused push changed nothing).
    let reached = runner
        .steps
        .iter()
        .any(|s| s.ok && matches!(s.action.as_str(), "push" | "commit"));
    if record && reached {
        versions = current_versions(&mut runner, scenario, &checked, "versions").await;
        if let Some(store) = &options.store {
            let last = store
                .list(name, 0, 1)
                .await
                .map_err(Box::new)?
                .versions
                .into_iter()
                .next();
            let changed = last.as_ref().is_none_or(|l| l.map != versions);
            if !versions.is_empty() && (always || changed) {
                let text = if message.is_empty() {
                    target.name()
                } else {
                    message
                };
                let version = ScenarioVersion::new(name, text, versions.clone(), None);
                store.append(&version).await.map_err(Box::new)?;
                recorded = Some(version);
            }
        }
    }
    let ok = runner.steps.iter().all(|s| s.ok);
    Ok(Report {
        scenario: name.clone(),
        target: target.name().to_owned(),
        ok,
        stopped,
        steps: runner.steps,
        versions,
        recorded,
    })
}

/// Asks every NodeApp its current version (`napp versions`, limit 1).
async fn current_versions(
    runner: &mut Runner<'_>,
    scenario: &Scenario,
    checked: &Checked,
    phase: &str,
) -> VersionMap {
    let jobs = scenario
        .apps
        .iter()
        .map(|app| Job {
            target: phase.to_owned(),
            action: Action::Versions,
            app: app.name.clone(),
            script: String::new(),
            order: None,
            request: request(NappSpec {
                action: Action::Versions,
                scenario: scenario.name.clone(),
                app: app.name.clone(),
                limit: Some(1),
                ..NappSpec::default()
            }),
            nodes: app
                .nodes
                .iter()
                .filter_map(|n| {
                    checked
                        .routes
                        .get(&(app.name.clone(), n.clone()))
                        .map(|r| (n.clone(), r.clone()))
                })
                .collect(),
        })
        .collect();
    let from = runner.steps.len();
    runner.stage(phase, Action::Versions, None, jobs).await;
    let mut map = VersionMap::new();
    for step in runner.steps.iter().skip(from) {
        if step.ok && !step.version.is_empty() {
            map.entry(step.node.clone())
                .or_default()
                .insert(step.app.clone(), step.version.clone());
        }
    }
    map
}

/// `scenario reset -v PREFIX -m MSG`: every NodeApp of the recorded version back to its
/// version then (revert-style: each node records it again), and a new scenario version
/// with the result. Nodes named by a proxy (a group's agents) are reset through it.
pub async fn reset(
    scenario: &Scenario,
    prefix: &str,
    message: &str,
    transport: Arc<dyn Transport>,
    options: &Options,
) -> Result<Report, ApplyError> {
    let Some(store) = &options.store else {
        return Err(Box::new(StoreError::Remote("no scenario store".into())).into());
    };
    let name = &scenario.name;
    let version = store.get(name, prefix).await.map_err(Box::new)?;
    // The routes of the nodes as the scenario writes them; others are a proxy's agents.
    let mut known: HashMap<String, Route> = HashMap::new();
    for app in &scenario.apps {
        for node in &app.nodes {
            if let Ok(route) = route(&app.name, node, options) {
                known.insert(node.clone(), route);
            }
        }
    }
    let mut jobs: Vec<Job> = Vec::new();
    for (node, apps) in &version.map {
        let route = match (known.get(node), &options.proxy) {
            (Some(route), _) => route.clone(),
            (None, Some(proxy)) => Route::ViaProxy {
                proxy: proxy.clone(),
                host: node.clone(),
            },
            (None, None) => {
                return Err(ApplyError::BadNode {
                    app: apps.keys().next().cloned().unwrap_or_default(),
                    node: node.clone(),
                    reason: "not in deployment.yaml: a proxy's agent? give --proxy".into(),
                })
            }
        };
        for (app, v) in apps {
            jobs.push(Job {
                target: "reset".into(),
                action: Action::Reset,
                app: app.clone(),
                script: String::new(),
                order: None,
                request: request(NappSpec {
                    action: Action::Reset,
                    scenario: name.clone(),
                    app: app.clone(),
                    version: v.clone(),
                    message: message.to_owned(),
                    ..NappSpec::default()
                }),
                nodes: vec![(node.clone(), route.clone())],
            });
        }
    }
    let mut runner = Runner::new(transport, options);
    runner.stage("reset", Action::Reset, None, jobs).await;
    let ok = runner.steps.iter().all(|s| s.ok);
    let mut map = VersionMap::new();
    for step in runner
        .steps
        .iter()
        .filter(|s| s.ok && !s.version.is_empty())
    {
        map.entry(step.node.clone())
            .or_default()
            .insert(step.app.clone(), step.version.clone());
    }
    let mut recorded = None;
    if ok {
        let new = ScenarioVersion::new(name, message, map.clone(), Some(version.id.clone()));
        store.append(&new).await.map_err(Box::new)?;
        recorded = Some(new);
    }
    Ok(Report {
        scenario: name.clone(),
        target: "reset".into(),
        ok,
        stopped: (!ok).then(|| "some NodeApps could not be reset; no version recorded".into()),
        steps: runner.steps,
        versions: map,
        recorded,
    })
}

/// One `napp` order (get, versions, reset) to one node, for `deploy-client napp …`:
/// the node's reply body, or why there is none.
pub async fn napp_one(
    node: &str,
    spec: NappSpec,
    transport: Arc<dyn Transport>,
    options: &Options,
) -> Result<StepResult, ApplyError> {
    let route = route(&spec.app, node, options)?;
    let action = spec.action;
    let app = spec.app.clone();
    let job = Job {
        target: action.as_str().to_owned(),
        action,
        app,
        script: String::new(),
        order: None,
        request: Request {
            follow: false,
            ..request(spec)
        },
        nodes: vec![(node.to_owned(), route)],
    };
    let mut runner = Runner::new(transport, options);
    runner.stage(action.as_str(), action, None, vec![job]).await;
    runner
        .steps
        .into_iter()
        .next()
        .ok_or_else(|| ApplyError::BadNode {
            app: String::new(),
            node: node.to_owned(),
            reason: "no result".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::{App, Script};
    use deploy_common::order::Reply;
    use deploy_common::transport::BoxFuture;
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Records when each script starts and ends; `fail.sh` exits 3; scripts of order 1
    /// take longer than the others.
    #[derive(Default)]
    struct Fake {
        log: Mutex<Vec<String>>,
    }

    impl Transport for Fake {
        fn deliver<'a>(
            &'a self,
            target: &'a Target,
            request: &'a Request,
            _events: mpsc::Sender<deploy_common::wire::message::TaggedEvent>,
        ) -> BoxFuture<'a, Outcome> {
            Box::pin(async move {
                let spec = request.napp.as_deref().unwrap();
                let who = format!("{} {} {}", spec.file, spec.app, target.port);
                self.log.lock().unwrap().push(format!("start {who}"));
                let slow = spec.file.starts_with("slow");
                tokio::time::sleep(Duration::from_millis(if slow { 100 } else { 20 })).await;
                self.log.lock().unwrap().push(format!("end {who}"));
                let code = if spec.file == "fail.sh" { "3" } else { "0" };
                let ret = if code == "0" { "true" } else { "false" };
                let mut body = Map::new();
                body.insert("return".into(), ret.into());
                body.insert("code".into(), code.into());
                body.insert("output".into(), "b2sK".into());
                Outcome::Reply(Reply::ok(body))
            })
        }
    }

    fn scenario(dir: &std::path::Path, scripts: &[(&str, &str, i64)]) -> Scenario {
        let apps = ["a", "b"]
            .iter()
            .map(|name| App {
                name: name.to_string(),
                description: String::new(),
                source: dir.to_path_buf(),
                script_dir: dir.to_path_buf(),
                nodes: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
                scripts: scripts
                    .iter()
                    .filter(|(app, _, _)| app == name)
                    .map(|(_, file, order)| {
                        let path: PathBuf = dir.join(file);
                        std::fs::write(&path, "true").unwrap();
                        Script {
                            target: "go".into(),
                            file: file.to_string(),
                            order: *order,
                            path,
                        }
                    })
                    .collect(),
            })
            .collect();
        Scenario {
            root: dir.to_path_buf(),
            name: "s".into(),
            description: String::new(),
            apps,
            warnings: Vec::new(),
        }
    }

    async fn run(scen: &Scenario, keep_going: bool) -> (Report, Vec<String>) {
        let fake = Arc::new(Fake::default());
        let options = Options {
            keep_going,
            ..Options::default()
        };
        let report = apply(
            scen,
            &PlanTarget::parse(Some("go")),
            None,
            Arc::clone(&fake) as Arc<dyn Transport>,
            &options,
        )
        .await
        .unwrap();
        let log = fake.log.lock().unwrap().clone();
        (report, log)
    }

    #[tokio::test]
    async fn a_stage_runs_at_once_and_waits_for_all_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let scen = scenario(
            dir.path(),
            &[
                ("a", "slow1.sh", 1),
                ("b", "fast1.sh", 1),
                ("b", "two.sh", 2),
            ],
        );
        let (report, log) = run(&scen, false).await;
        assert!(report.ok, "{report:?}");
        assert_eq!(report.steps.len(), 6);
        let last_end1 = log
            .iter()
            .rposition(|l| l.starts_with("end slow1"))
            .unwrap();
        let first_two = log.iter().position(|l| l.starts_with("start two")).unwrap();
        assert!(last_end1 < first_two, "{log:?}");
        // Both apps of order 1 started before either ended: one stage, in parallel.
        let first_end = log.iter().position(|l| l.starts_with("end")).unwrap();
        assert_eq!(
            log[..first_end]
                .iter()
                .filter(|l| l.starts_with("start"))
                .count(),
            4,
            "{log:?}"
        );
        assert!(report.steps.iter().all(|s| s.output == "ok\n"));
    }

    #[tokio::test]
    async fn a_failure_stops_later_orders_unless_keep_going() {
        let dir = tempfile::tempdir().unwrap();
        let scen = scenario(dir.path(), &[("a", "fail.sh", 1), ("b", "two.sh", 2)]);
        let (report, log) = run(&scen, false).await;
        assert!(!report.ok);
        assert!(report.stopped.is_some());
        assert!(!log.iter().any(|l| l.contains("two.sh")), "{log:?}");
        let failed: Vec<&StepResult> = report.steps.iter().filter(|s| !s.ok).collect();
        assert_eq!(failed.len(), 2);
        assert_eq!(failed[0].code, Some(3));
        assert_eq!(
            (failed[0].app.as_str(), failed[0].target.as_str()),
            ("a", "go")
        );

        let (report, log) = run(&scen, true).await;
        assert!(!report.ok && report.stopped.is_none());
        assert_eq!(
            log.iter().filter(|l| l.starts_with("end two.sh")).count(),
            2
        );
    }

    #[tokio::test]
    async fn groups_need_a_proxy_and_ssh_is_refused_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let mut scen = scenario(dir.path(), &[("a", "x.sh", 1)]);
        scen.apps[0].nodes = vec!["@web".into()];
        let e = apply(
            &scen,
            &PlanTarget::parse(Some("go")),
            None,
            Arc::new(Fake::default()),
            &Options::default(),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("node \"@web\": a group of a proxy"),
            "{e}"
        );
        scen.apps[0].nodes = vec!["ssh://root@h".into()];
        let e = apply(
            &scen,
            &PlanTarget::parse(Some("go")),
            None,
            Arc::new(Fake::default()),
            &Options::default(),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("does not take scenarios to ssh://"),
            "{e}"
        );
    }
}
