//! The official Upstash Python SDK (`upstash-redis`) against a real RedisGate: runs the pytest
//! suite in `tests/python` with `UPSTASH_REDIS_REST_URL` / `UPSTASH_REDIS_REST_TOKEN` pointing at
//! a gateway on port 0 in front of a private `redis-server`.
//!
//! The Python interpreter comes from `REDISGATE_TEST_PYTHON` (a venv with
//! `tests/python/requirements.txt` installed; `scripts/python-venv.sh` makes one and prints its
//! python). Without it this test fails: it never passes silently.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{Gate, Redis, TOKEN, repo_root, settings};

/// Upper bound for the whole pytest run (it normally takes a few seconds).
const PYTEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The interpreter to run pytest with. A relative path with a `/` is taken from the repository
/// root (cargo runs tests from the crate directory); a bare name is looked up in `PATH`.
pub fn python() -> OsString {
    let Some(p) = std::env::var_os("REDISGATE_TEST_PYTHON").filter(|p| !p.is_empty()) else {
        panic!(
            "REDISGATE_TEST_PYTHON is not set, so the Python SDK tests (tests/python) cannot run. \
             Run the suite through scripts/test.sh (which creates the venv), or create it yourself \
             and point the variable at its python:\n    \
             export REDISGATE_TEST_PYTHON=\"$(scripts/python-venv.sh | tail -n1)\""
        );
    };
    let path = PathBuf::from(&p);
    if path.is_relative() && path.components().count() > 1 { repo_root().join(path).into() } else { p }
}

/// Runs the pytest suite against `url` with `token`; fails with pytest's whole report.
async fn run_pytest(url: &str, token: &str) {
    run_pytest_with::<&str>(url, token, &[]).await;
}

/// [`run_pytest`] for a Redis Cluster behind the gateway: each test's keys share a hash tag
/// (`REDISGATE_TEST_ONE_SLOT`), as a cluster application's related keys do.
pub async fn run_pytest_one_slot(url: &str, token: &str) {
    run_pytest_with(url, token, &[("REDISGATE_TEST_ONE_SLOT", "1")]).await;
}

/// [`run_pytest`] with more environment variables (an `https://` URL's CA bundle, …).
pub async fn run_pytest_with<V: AsRef<std::ffi::OsStr>>(url: &str, token: &str, env: &[(&str, V)]) {
    let python = python();
    let root = repo_root().canonicalize().expect("repository root");
    let mut cmd = tokio::process::Command::new(&python);
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/python"])
        .current_dir(&root)
        .env("UPSTASH_REDIS_REST_URL", url)
        .env("UPSTASH_REDIS_REST_TOKEN", token)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(PYTEST_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!(
            "could not run {python:?} -m pytest (REDISGATE_TEST_PYTHON): {e}. \
             Create the venv with scripts/python-venv.sh and point REDISGATE_TEST_PYTHON at its python."
        ),
        Err(_) => panic!("pytest in {} did not finish within {PYTEST_TIMEOUT:?}", root.display()),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!(
        "$ {} -m pytest -q tests/python   (cwd {}, UPSTASH_REDIS_REST_URL={url})\n\
         --- pytest stdout ---\n{stdout}\n--- pytest stderr ---\n{stderr}",
        python.to_string_lossy(),
        root.display(),
    );
    assert!(out.status.success(), "the Python SDK suite failed ({}):\n{report}", out.status);
    // Exit status 0 with nothing run would mean the suite went missing.
    assert!(
        stdout.lines().any(|l| l.contains(" passed") && !l.contains(" failed")),
        "pytest exited 0 but reported no passed tests:\n{report}"
    );
    println!("{report}");
}

/// Standalone mode: the protocol at `/`, a configured token.
#[tokio::test(flavor = "multi_thread")]
async fn upstash_redis_python_sdk() {
    let redis = Redis::start().await;
    let gate = Gate::start(settings(&redis)).await;
    run_pytest(&gate.base, TOKEN).await;
    gate.shutdown().await;
}

/// The platform: an instance RedisGate runs, reached at `/redis/{id}` with a read-write API
/// key, the scope an application gets (the suite's read-your-writes case runs EVAL, which
/// read-write keys may, as Upstash's standard token).
#[tokio::test(flavor = "multi_thread")]
async fn upstash_redis_python_sdk_through_an_instance() {
    let gate = crate::api::control_plane().await;
    let tenant = crate::instances::Tenant::new(&gate, "sdk@example.com").await;
    let (key, _) = tenant.key(serde_json::json!({"name": "sdk", "scope": "read-write"})).await;
    run_pytest(&format!("{}/redis/{}", gate.base, tenant.instance), &key).await;
    drop(tenant);
    gate.shutdown().await;
}
