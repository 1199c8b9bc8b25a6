//! What a local instance's `redis.conf` takes away from hostile tenants, checked on a real
//! server through its default user (the one the gateway uses).

use redisgate_core::ids::InstanceId;
use redisgate_core::provision::Provisioner as _;
use redisgate_provision::local::BUSY_REPLY_THRESHOLD;
use redisgate_provision::{LocalOptions, LocalProvisioner};

use crate::support::*;

async fn config_get(conn: &mut redis::aio::MultiplexedConnection, name: &str) -> String {
    let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(conn).await.unwrap();
    assert_eq!(pair.len(), 2, "CONFIG GET {name}: {pair:?}");
    pair[1].clone()
}

/// A DUMP payload of a hash whose listpack header claims 3 elements (a hash needs an even
/// count) while holding 2; the envelope (RDB version and CRC-64) is valid, so only a deep
/// check of the payload can refuse it.
fn crafted_hash_dump(valid: &[u8]) -> Vec<u8> {
    const RDB_TYPE_HASH_LISTPACK: u8 = 16;
    assert_eq!(valid[0], RDB_TYPE_HASH_LISTPACK, "a small hash dumps as a listpack");
    let mut bad = valid[..valid.len() - 8].to_vec();
    // type (1) + string length (1) + listpack total bytes (4), then the element count (LE).
    assert_eq!(bad[6], 2, "one field and its value");
    bad[6] = 3;
    let crc = crc::Crc::<u64>::new(&crc::CRC_64_REDIS).checksum(&bad);
    bad.extend_from_slice(&crc.to_le_bytes());
    bad
}

#[tokio::test]
async fn local_instances_refuse_reconfiguration_debugging_modules_and_bad_payloads() {
    let root = tempfile::tempdir().unwrap();
    let options = LocalOptions { max_reply_bytes: 8 * MIB, ..LocalOptions::default() };
    let p = LocalProvisioner::new(root.path().to_path_buf(), Events::default().sink(), options);
    let url = p.start(&spec(InstanceId::new(), 64 * MIB)).await.unwrap();
    let mut conn = connect(url.expose()).await.unwrap();

    for (name, want) in [
        ("sanitize-dump-payload", "yes".to_owned()),
        ("enable-debug-command", "no".to_owned()),
        ("enable-module-command", "no".to_owned()),
        ("enable-protected-configs", "no".to_owned()),
        ("busy-reply-threshold", BUSY_REPLY_THRESHOLD.as_millis().to_string()),
        ("client-output-buffer-limit", format!("normal {} 0 0", 32 * MIB)),
    ] {
        let got = config_get(&mut conn, name).await;
        assert!(got.starts_with(&want), "{name} is {got:?}, want {want:?}");
    }
    let refused = |r: redis::RedisResult<redis::Value>| r.expect_err("refused").to_string();
    assert!(
        refused(redis::cmd("DEBUG").arg("SLEEP").arg("0").query_async(&mut conn).await).contains("DEBUG")
    );
    assert!(
        refused(redis::cmd("MODULE").arg("LOAD").arg("/nonexistent.so").query_async(&mut conn).await)
            .contains("MODULE")
    );
    assert!(
        refused(redis::cmd("CONFIG").arg("SET").arg("dir").arg("/tmp").query_async(&mut conn).await)
            .contains("protected")
    );

    redis::cmd("HSET").arg("h").arg("f").arg("v").query_async::<()>(&mut conn).await.unwrap();
    let dump: Vec<u8> = redis::cmd("DUMP").arg("h").query_async(&mut conn).await.unwrap();
    let restore = |key: &str, payload: Vec<u8>| {
        let mut conn = conn.clone();
        let key = key.to_owned();
        async move { redis::cmd("RESTORE").arg(key).arg(0).arg(payload).query_async::<()>(&mut conn).await }
    };
    // The untouched payload restores: the refusal below is about the crafted bytes.
    restore("copy", dump.clone()).await.unwrap();
    let e = restore("crafted", crafted_hash_dump(&dump)).await.expect_err("crafted payload refused");
    assert!(e.to_string().contains("Bad data format"), "{e}");
    let exists: i64 = redis::cmd("EXISTS").arg("crafted").query_async(&mut conn).await.unwrap();
    assert_eq!(exists, 0);
    p.shutdown().await;
}
