//! Schemathesis against `/openapi.json`: every management operation, fed generated valid and
//! invalid input by an authenticated deployment administrator, answers without a 5xx, and every
//! non-2xx answer is JSON with an `error` string (the check in `tests/schemathesis/hooks.py`).
//!
//! Path parameters are pinned to real objects (an organization, an instance, a key, the user
//! himself) so that the generated requests reach the handlers instead of stopping at a 404.
//! The run is bounded by examples per operation and by time, so CI stays short.

use std::time::Duration;

use serde_json::json;

use crate::common::{Redis, repo_root};
use crate::instances::Tenant;
use crate::python_sdk::python;

/// Generated cases per operation and phase; with ~30 operations this is a few thousand requests.
const MAX_EXAMPLES: u32 = 25;
/// Upper bound for the whole schemathesis run.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread")]
async fn openapi_operations_answer_json_errors_and_no_5xx() {
    let redis = Redis::start().await;
    let gate = crate::api::control_plane().await;
    let tenant = Tenant::external(&gate, "fuzz@example.com", &redis.url()).await;
    let (_, key_id) = tenant.key(json!({"name": "fuzz", "scope": "read-write"})).await;
    let (_, me) = tenant.api.get("/auth/me").await;
    let user_id = me["user"]["id"].as_str().unwrap().to_owned();
    let session = tenant.api.token.clone().unwrap();

    // Operation ids are unique (OpenAPI requires it; schemathesis keys its settings on them).
    let (_, doc) = tenant.api.get("/openapi.json").await;
    let mut ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "duplicate operation ids: {doc}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"
base-url = "{base}"
headers = {{ Authorization = "Bearer {session}" }}
hooks = "hooks"
workers = 1
continue-on-failure = true
generation.max-examples = {MAX_EXAMPLES}
generation.database = "none"
phases.stateful.enabled = false

[checks]
enabled = false
not_a_server_error.enabled = true
json_error_body.enabled = true

[parameters]
"path.org_id" = "{org}"
"path.instance_id" = "{instance}"
"path.key_id" = "{key_id}"
"path.user_id" = "{user_id}"
"path.plan" = "pro"

# Logging out would end the session every other case runs with, and deleting the organization
# every object the path parameters point at: both have tests of their own.
[[operations]]
include-operation-id = ["auth_logout", "organizations_delete"]
enabled = false
"#,
            base = gate.base,
            org = tenant.org,
            instance = tenant.instance,
        ),
    )
    .unwrap();

    let mut cmd = tokio::process::Command::new(python());
    cmd.args(["-c", "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())"])
        .arg("--config-file")
        .arg(&config)
        .args(["run", &gate.url("/openapi.json"), "--no-color", "--seed", "1"])
        // The hooks module is found through PYTHONPATH; schemathesis keeps its cache in the
        // working directory, a temporary one.
        .current_dir(dir.path())
        .env("PYTHONPATH", repo_root().join("tests/schemathesis"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let (status, report) = crate::common::run_to_report(&mut cmd, RUN_TIMEOUT, "schemathesis").await;
    assert!(status.success(), "schemathesis found failures ({status}):\n{report}");
    // A run that tested nothing would also exit 0.
    assert!(report.contains("passed") && !report.contains("No operations"), "nothing was tested:\n{report}");
    println!("{report}");
    drop(tenant);
    gate.shutdown().await;
}
