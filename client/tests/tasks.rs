//! `deploy-client tasks list|wait ID [SECS]|cancel ID [HOST...]`: the short form of
//! `--order=tasks`, against a real agent's background task.

use deploy_testkit::{AgentConfig, Sandbox};
use serde_json::Value;

use crate::util::{client, Output};

fn json(out: &Output) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"))
}

/// A background task started with `--background` is waited for, listed and (once
/// done) refused a cancel through the short form.
#[tokio::test]
async fn a_background_task_through_the_short_form() {
    let sb = Sandbox::new();
    let agent = AgentConfig::new(&sb).server("allow_run", "on").start(&sb);
    let host = agent.addr().to_string();
    let key = "--key-cipher=agentsecret";
    let out = client(
        &[
            "--hosts",
            &host,
            key,
            "--order=run",
            "--background",
            "--format=json",
            "--",
            "sh",
            "-c",
            "echo hi; exit 3",
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 0, "{out:#?}");
    let id = json(&out)[&host]["run"]["content"]["task"]
        .as_str()
        .unwrap_or_else(|| panic!("no task id: {out:#?}"))
        .to_owned();

    let out = client(
        &["tasks", "wait", &id, "5", &host, key, "--format=json"],
        None,
    )
    .await;
    assert_eq!(out.status, 1, "the task failed, so does the wait: {out:#?}");
    let body = &json(&out)[&host]["tasks"]["content"];
    assert_eq!(body["state"], "done", "{out:#?}");
    assert_eq!(body["code"], "3", "{out:#?}");

    let out = client(&["tasks", "list", &host, key, "--format=json"], None).await;
    assert_eq!(out.status, 0, "{out:#?}");
    let list = json(&out)[&host]["tasks"]["content"]["tasks"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no list: {out:#?}"));
    assert!(list.contains(&id), "{list}");

    let out = client(&["tasks", "bogus", &host, key], None).await;
    assert_ne!(out.status, 0, "{out:#?}");
    assert!(out.stderr.contains("usage"), "{out:#?}");
}
