//! LocalProvisioner against real redis-server processes.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use redisgate_core::ids::InstanceId;
use redisgate_core::instance::InstanceStatus;
use redisgate_core::provision::{ProvisionError, Provisioner};
use redisgate_provision::{LocalOptions, LocalProvisioner};

use crate::support::*;

fn provisioner(
    root: &std::path::Path,
    events: &Events,
    options: LocalOptions,
) -> std::sync::Arc<LocalProvisioner> {
    LocalProvisioner::new(root.to_path_buf(), events.sink(), options)
}

fn failed_reason(result: Result<impl std::fmt::Debug, ProvisionError>) -> String {
    match result {
        Err(ProvisionError::Failed(reason)) => {
            eprintln!("REASON: {reason}");
            reason
        }
        other => panic!("expected ProvisionError::Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn start_serves_set_get_and_a_second_start_returns_the_same_server() {
    let root = tempfile::tempdir().unwrap();
    let events = Events::default();
    let p = provisioner(root.path(), &events, LocalOptions::default());
    let id = InstanceId::new();

    let url = p.start(&spec(id, 64 * MIB)).await.unwrap();
    set(&url, "greeting", "hello").await;
    assert_eq!(get(&url, "greeting").await.as_deref(), Some("hello"));

    let pid = p.pid(id).expect("running");
    assert!(alive(pid));
    let again = p.start(&spec(id, 64 * MIB)).await.unwrap();
    assert_eq!(again, url);
    assert_eq!(p.pid(id), Some(pid));

    let dir = root.path().join(id.to_string());
    assert_eq!(p.data_dir(id), dir);
    assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    let conf_path = dir.join("redis.conf");
    assert_eq!(fs::metadata(&conf_path).unwrap().permissions().mode() & 0o777, 0o600);
    let conf = fs::read_to_string(&conf_path).unwrap();
    let (password, port) = parts(&url);
    assert_eq!(password.len(), 64);
    for line in [
        "bind 127.0.0.1".to_owned(),
        format!("port {port}"),
        format!("requirepass {password}"),
        format!("maxmemory {}", 64 * MIB),
        "maxmemory-policy noeviction".to_owned(),
        "appendonly yes".to_owned(),
        "appendfsync everysec".to_owned(),
        "save \"\"".to_owned(),
        "protected-mode yes".to_owned(),
        "daemonize no".to_owned(),
    ] {
        assert!(conf.lines().any(|l| l == line), "redis.conf lacks {line:?}");
    }
    assert!(!conf.lines().any(|l| l.starts_with("rename-command")));

    p.shutdown().await;
    assert!(!alive(pid));
    assert!(events.all().is_empty(), "no status changes on a clean run: {:?}", events.all());
}

#[tokio::test]
async fn requirepass_and_maxmemory_are_enforced() {
    let root = tempfile::tempdir().unwrap();
    let p = provisioner(root.path(), &Events::default(), LocalOptions::default());
    let id = InstanceId::new();
    let url = p.start(&spec(id, 32 * MIB)).await.unwrap();
    let (_, port) = parts(&url);

    let mut anonymous = connect(&format!("redis://127.0.0.1:{port}")).await.unwrap();
    let err = redis::cmd("PING").query_async::<String>(&mut anonymous).await.unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");

    let mut conn = connect(url.expose()).await.unwrap();
    let maxmemory: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("maxmemory").query_async(&mut conn).await.unwrap();
    assert_eq!(maxmemory, ["maxmemory".to_owned(), (32 * MIB).to_string()]);
    let policy: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(&mut conn).await.unwrap();
    assert_eq!(policy[1], "noeviction");
    let aof: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(&mut conn).await.unwrap();
    assert_eq!(aof[1], "yes");
    let bind: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("bind").query_async(&mut conn).await.unwrap();
    assert_eq!(bind[1], "127.0.0.1");
    p.shutdown().await;
}

#[tokio::test]
async fn data_and_password_survive_a_redisgate_restart() {
    let root = tempfile::tempdir().unwrap();
    let id = InstanceId::new();
    let events = Events::default();

    let first = provisioner(root.path(), &events, LocalOptions::default());
    let url = first.start(&spec(id, 64 * MIB)).await.unwrap();
    set(&url, "kept", "across restarts").await;
    let pid = first.pid(id).unwrap();
    first.shutdown().await;
    assert!(!alive(pid), "shutdown stops the server");
    assert_eq!(first.pid(id), None);
    drop(first);

    let second = provisioner(root.path(), &events, LocalOptions::default());
    let url2 = second.start(&spec(id, 64 * MIB)).await.unwrap();
    assert_eq!(parts(&url2).0, parts(&url).0, "same password");
    assert_eq!(get(&url2, "kept").await.as_deref(), Some("across restarts"));

    // The port of the last run is taken now: a new one is picked, the data still comes back.
    let (_, port2) = parts(&url2);
    second.shutdown().await;
    let squatter = TcpListener::bind(("127.0.0.1", port2)).unwrap();
    let third = provisioner(root.path(), &events, LocalOptions::default());
    let url3 = third.start(&spec(id, 128 * MIB)).await.unwrap();
    let (password3, port3) = parts(&url3);
    assert_ne!(port3, port2);
    assert_eq!(password3, parts(&url).0);
    assert_eq!(get(&url3, "kept").await.as_deref(), Some("across restarts"));
    // A new size takes effect on the next start.
    let mut conn = connect(url3.expose()).await.unwrap();
    let maxmemory: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("maxmemory").query_async(&mut conn).await.unwrap();
    assert_eq!(maxmemory[1], (128 * MIB).to_string());
    third.shutdown().await;
    drop(squatter);
    assert!(events.all().is_empty(), "{:?}", events.all());
}

#[tokio::test]
async fn a_server_left_over_from_a_dead_redisgate_is_shut_down_before_restarting() {
    let root = tempfile::tempdir().unwrap();
    let id = InstanceId::new();
    let first = provisioner(root.path(), &Events::default(), LocalOptions::default());
    let url = first.start(&spec(id, 64 * MIB)).await.unwrap();
    set(&url, "k", "v").await;
    first.shutdown().await;

    // What a SIGKILLed RedisGate leaves behind: its server, still running on the instance's conf.
    let conf = root.path().join(id.to_string()).join("redis.conf");
    let mut orphan =
        tokio::process::Command::new("redis-server").arg(&conf).kill_on_drop(true).spawn().unwrap();
    eventually(Duration::from_secs(10), "orphan answers", || async {
        match connect(url.expose()).await {
            Ok(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;

    let second = provisioner(root.path(), &Events::default(), LocalOptions::default());
    let url2 = second.start(&spec(id, 64 * MIB)).await.unwrap();
    let status =
        tokio::time::timeout(Duration::from_secs(5), orphan.wait()).await.expect("orphan exits").unwrap();
    assert!(status.success(), "orphan shut down cleanly: {status}");
    assert_eq!(get(&url2, "k").await.as_deref(), Some("v"));
    assert_ne!(second.pid(id), orphan.id());
    second.shutdown().await;
}

#[tokio::test]
async fn a_killed_server_is_restarted_on_the_same_url() {
    let root = tempfile::tempdir().unwrap();
    let events = Events::default();
    let p = provisioner(root.path(), &events, fast_options());
    let id = InstanceId::new();
    let url = p.start(&spec(id, 64 * MIB)).await.unwrap();
    let (password, _) = parts(&url);
    set(&url, "before", "crash").await;
    let pid = p.pid(id).unwrap();

    kill9(pid);
    eventually(Duration::from_secs(10), "Error then Running", || {
        let statuses = events.statuses();
        async move { statuses == [InstanceStatus::Error, InstanceStatus::Running] }
    })
    .await;
    let all = events.all();
    assert!(all.iter().all(|(eid, _, _)| *eid == id));
    let reason = all[0].2.as_deref().unwrap();
    assert!(reason.starts_with("redis-server exited (") && reason.ends_with("; restarting"), "{reason}");
    assert!(reason.contains("9"), "names the signal: {reason}");
    assert_eq!(all[1].2, None);

    let new_pid = p.pid(id).expect("running again");
    assert_ne!(new_pid, pid);
    assert_eq!(p.start(&spec(id, 64 * MIB)).await.unwrap(), url, "same URL");
    set(&url, "after", "crash").await;
    assert_eq!(get(&url, "after").await.as_deref(), Some("crash"));

    for (_, _, reason) in events.all() {
        assert!(!reason.unwrap_or_default().contains(&password));
    }
    p.shutdown().await;
    assert!(!alive(new_pid));
    assert_eq!(events.all().len(), 2, "shutdown is not a crash: {:?}", events.all());
}

#[tokio::test]
async fn a_crash_loop_ends_in_error_and_a_later_start_retries() {
    let root = tempfile::tempdir().unwrap();
    let events = Events::default();
    let options = LocalOptions { max_restarts: 1, ..fast_options() };
    let p = provisioner(root.path(), &events, options);
    let id = InstanceId::new();
    let url = p.start(&spec(id, 64 * MIB)).await.unwrap();

    kill9(p.pid(id).unwrap());
    eventually(Duration::from_secs(10), "first restart", || {
        let statuses = events.statuses();
        async move { statuses.last() == Some(&InstanceStatus::Running) }
    })
    .await;
    kill9(p.pid(id).unwrap());
    eventually(Duration::from_secs(10), "giving up", || {
        let n = events.all().len();
        async move { n == 3 }
    })
    .await;
    let (_, status, reason) = events.all().pop().unwrap();
    assert_eq!(status, InstanceStatus::Error);
    let reason = reason.unwrap();
    assert!(reason.contains("not restarting it again"), "{reason}");
    assert_eq!(p.pid(id), None);
    // Nothing more happens on its own.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events.all().len(), 3);

    let url2 = p.start(&spec(id, 64 * MIB)).await.unwrap();
    assert_eq!(parts(&url2).0, parts(&url).0);
    set(&url2, "k", "v").await;
    p.shutdown().await;
}

#[tokio::test]
async fn destroy_stops_the_server_and_removes_its_data() {
    let root = tempfile::tempdir().unwrap();
    let p = provisioner(root.path(), &Events::default(), LocalOptions::default());
    let id = InstanceId::new();
    let other = InstanceId::new();
    let url = p.start(&spec(id, 64 * MIB)).await.unwrap();
    let url_other = p.start(&spec(other, 64 * MIB)).await.unwrap();
    let pid = p.pid(id).unwrap();
    let dir = root.path().join(id.to_string());
    assert!(dir.exists());

    p.destroy(id).await.unwrap();
    assert!(!dir.exists());
    assert!(!alive(pid));
    assert_eq!(p.pid(id), None);
    assert!(connect(url.expose()).await.is_err());
    // Idempotent, and the other instance is untouched.
    p.destroy(id).await.unwrap();
    set(&url_other, "k", "v").await;

    // An instance this provisioner never ran (say, before a restart) still loses its files.
    let stale = InstanceId::new();
    let stale_dir = root.path().join(stale.to_string());
    fs::create_dir_all(stale_dir.join("appendonlydir")).unwrap();
    p.destroy(stale).await.unwrap();
    assert!(!stale_dir.exists());
    p.destroy(InstanceId::new()).await.unwrap();

    // A destroyed instance starts afresh: a new password, no data.
    let fresh = p.start(&spec(id, 64 * MIB)).await.unwrap();
    assert_ne!(parts(&fresh).0, parts(&url).0);
    p.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_everything_and_refuses_new_starts() {
    let root = tempfile::tempdir().unwrap();
    let events = Events::default();
    let p = provisioner(root.path(), &events, fast_options());
    let ids = [InstanceId::new(), InstanceId::new()];
    let mut pids = Vec::new();
    for id in ids {
        p.start(&spec(id, 16 * MIB)).await.unwrap();
        pids.push(p.pid(id).unwrap());
    }
    p.shutdown().await;
    for pid in pids {
        assert!(!alive(pid));
    }
    for id in ids {
        let dir = root.path().join(id.to_string());
        assert!(dir.join("redis.conf").exists(), "data kept");
        let log = fs::read_to_string(dir.join("redis.log")).unwrap();
        assert!(log.contains("Received SIGTERM"), "stopped gracefully, not killed: {log}");
        assert!(log.contains("ready to exit"), "{log}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(events.all().is_empty(), "no restarts after shutdown: {:?}", events.all());
    let reason = failed_reason(p.start(&spec(ids[0], 16 * MIB)).await);
    assert!(reason.contains("shutting down"), "{reason}");
}

#[tokio::test]
async fn a_missing_binary_fails_with_a_reason() {
    let root = tempfile::tempdir().unwrap();
    let options =
        LocalOptions { redis_server: "/nonexistent/redis-server".into(), ..LocalOptions::default() };
    let p = provisioner(root.path(), &Events::default(), options);
    let id = InstanceId::new();
    let reason = failed_reason(p.start(&spec(id, 16 * MIB)).await);
    assert!(reason.contains("/nonexistent/redis-server"), "{reason}");
    assert!(reason.contains("No such file"), "{reason}");
    assert_no_password(root.path(), id, &reason);
}

#[tokio::test]
async fn a_config_error_is_reported_from_stderr_without_the_password() {
    let root = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    // A real redis-server refusing its configuration (the errors go to stderr).
    let wrapper = bin.path().join("redis-bad-memory");
    script(&wrapper, "#!/bin/sh\nexec redis-server \"$1\" --maxmemory not-a-size");
    let p = provisioner(
        root.path(),
        &Events::default(),
        LocalOptions { redis_server: wrapper, ..LocalOptions::default() },
    );
    let id = InstanceId::new();
    let reason = failed_reason(p.start(&spec(id, 16 * MIB)).await);
    assert!(reason.contains("redis-server exited"), "{reason}");
    assert!(reason.contains("memory value"), "{reason}");
    assert_no_password(root.path(), id, &reason);

    // A server that prints its config (password included) must not get it into the reason.
    let leaky = bin.path().join("redis-leaky");
    script(&leaky, "#!/bin/sh\ngrep requirepass \"$1\" >&2\nexit 3");
    let p = provisioner(
        root.path(),
        &Events::default(),
        LocalOptions { redis_server: leaky, ..LocalOptions::default() },
    );
    let reason = failed_reason(p.start(&spec(id, 16 * MIB)).await);
    assert!(reason.contains("requirepass <redacted>"), "{reason}");
    assert!(reason.contains("exit status: 3"), "{reason}");
    assert_no_password(root.path(), id, &reason);

    let reason = failed_reason(p.start(&spec(id, 0)).await);
    assert!(reason.contains("memory_bytes"), "{reason}");
}

#[tokio::test]
async fn a_corrupt_aof_is_reported_from_the_logfile() {
    let root = tempfile::tempdir().unwrap();
    let id = InstanceId::new();
    let p = provisioner(root.path(), &Events::default(), LocalOptions::default());
    let url = p.start(&spec(id, 16 * MIB)).await.unwrap();
    set(&url, "k", "v").await;
    p.shutdown().await;

    let manifest = root.path().join(id.to_string()).join("appendonlydir/appendonly.aof.manifest");
    assert!(manifest.exists());
    fs::write(&manifest, "this is not a manifest\n").unwrap();
    let p = provisioner(root.path(), &Events::default(), LocalOptions::default());
    let reason = failed_reason(p.start(&spec(id, 16 * MIB)).await);
    assert!(reason.starts_with("redis-server exited"), "{reason}");
    assert!(reason.to_lowercase().contains("manifest"), "{reason}");
    assert_no_password(root.path(), id, &reason);
    assert_eq!(p.pid(id), None);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let root = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let sleeper = bin.path().join("redis-sleeper");
    script(&sleeper, "#!/bin/sh\nexec sleep 30");
    let options = LocalOptions {
        redis_server: sleeper,
        start_timeout: Duration::from_millis(500),
        ..LocalOptions::default()
    };
    let p = provisioner(root.path(), &Events::default(), options);
    let id = InstanceId::new();
    let started = std::time::Instant::now();
    let reason = failed_reason(p.start(&spec(id, 16 * MIB)).await);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(reason.contains("did not answer PING within 500ms"), "{reason}");
    assert_no_password(root.path(), id, &reason);
}

fn assert_no_password(root: &std::path::Path, id: InstanceId, text: &str) {
    let conf = fs::read_to_string(root.join(id.to_string()).join("redis.conf")).unwrap();
    let password = conf.lines().find_map(|l| l.strip_prefix("requirepass ")).unwrap();
    assert!(!text.contains(password), "password leaked into: {text}");
}

#[tokio::test]
async fn a_port_grabbed_before_redis_binds_it_is_picked_again() {
    let root = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    // Loses the race for its port once, as a real redis-server would report it.
    let racer = bin.path().join("redis-racer");
    script(
        &racer,
        "#!/bin/sh\n\
         marker=\"$(dirname \"$1\")/lost-once\"\n\
         if [ ! -e \"$marker\" ]; then\n\
           touch \"$marker\"\n\
           echo '1:M 01 Jan 2026 00:00:00.000 # Warning: Could not create server TCP listening socket 127.0.0.1:1: bind: Address already in use' >&2\n\
           exit 1\n\
         fi\n\
         exec redis-server \"$1\"",
    );
    let p = provisioner(
        root.path(),
        &Events::default(),
        LocalOptions { redis_server: racer, ..LocalOptions::default() },
    );
    let id = InstanceId::new();
    let url = p.start(&spec(id, 16 * MIB)).await.unwrap();
    assert!(root.path().join(id.to_string()).join("lost-once").exists());
    set(&url, "k", "v").await;
    p.shutdown().await;
}
