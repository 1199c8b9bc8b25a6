//! The libraries people build on the Upstash SDK, unchanged, against RedisGate with a read-write
//! key: `@upstash/ratelimit` (fixed window, sliding window, token bucket, cached fixed window,
//! `getRemaining`, `resetUsedTokens`, multi-region fixed and sliding window over two instances) and `@upstash/lock`. Runs
//! `tests/node/upstash-libs.mjs` with Node; `scripts/test.sh` installs Node and the pinned
//! packages (`npm ci` in `tests/node`). Without them this test fails: it never passes silently.

use std::time::Duration;

use serde_json::json;

use crate::common::repo_root;
use crate::instances::Tenant;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstash_ratelimit_and_lock_work_with_a_read_write_key() {
    let dir = repo_root().join("tests/node");
    assert!(
        dir.join("node_modules/@upstash/ratelimit").exists(),
        "tests/node has no node_modules: run scripts/test.sh, or `npm ci --prefix tests/node`"
    );
    let gate = crate::api::control_plane().await;
    let tenant = Tenant::new(&gate, "libs@example.com").await;
    let (s, second) = tenant
        .api
        .post(
            &format!("/api/organizations/{}/redis-instances", tenant.org),
            json!({"name": "second region", "memory_mb": 16}),
        )
        .await;
    assert_eq!((s, second["status"].as_str()), (201, Some("running")), "{second}");
    let (key, _) = tenant.key(json!({"name": "libs", "scope": "read-write"})).await;
    let urls = [tenant.instance.as_str(), second["id"].as_str().unwrap()]
        .map(|id| format!("{}/redis/{id}", gate.base))
        .join(",");

    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("upstash-libs.mjs").current_dir(&dir).env("UPSTASH_URLS", &urls).env("UPSTASH_TOKEN", &key);
    let (status, report) = crate::common::run_to_report(&mut cmd, RUN_TIMEOUT, "the Node run").await;
    assert!(status.success(), "the Upstash libraries failed ({status}):\n{report}");
    let parts = [
        "fixedWindow",
        "slidingWindow",
        "tokenBucket",
        "cachedFixedWindow",
        "multi-region fixedWindow",
        "multi-region slidingWindow",
    ]
    .map(|a| format!("ok ratelimit {a}"));
    for line in parts.iter().map(String::as_str).chain(["ok lock"]) {
        assert!(report.lines().any(|l| l == line), "`{line}` missing:\n{report}");
    }
    println!("{report}");
    drop(tenant);
    gate.shutdown().await;
}
