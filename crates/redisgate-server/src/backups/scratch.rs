//! The scratch `redis-server` backups and restores go through, and the key-by-key copy.
//!
//! One way that works for every source and target: a private `redis-server` (its own 0700
//! temporary directory, a unix socket there and no TCP port, no persistence but the RDB it is
//! started on or asked to SAVE) holds the data in between, and keys move with DUMP + PTTL on
//! one side and RESTORE … REPLACE on the other. DUMP's payload carries the type and the
//! value exactly (every type, streams with their groups included); PTTL taken right after
//! DUMP gives the TTL to the millisecond.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::backend::Backend;

/// The RDB file the scratch server loads and saves.
const RDB_FILE: &str = "dump.rdb";
/// Keys per SCAN step, and so per pipelined DUMP batch held in memory at once.
const SCAN_COUNT: usize = 256;

/// A running scratch server; stopped (killed) and its directory removed when dropped.
pub struct Scratch {
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
    conn: MultiplexedConnection,
}

impl Scratch {
    /// Starts a scratch server in a new directory under `work`, on `rdb` (moved in) or empty,
    /// holding at most `max_memory` bytes (writes past that fail with OOM; loading an RDB is
    /// not held to it, so the caller bounds the file instead).
    pub async fn start(
        redis_server: &Path,
        work: &Path,
        rdb: Option<&Path>,
        max_memory: u64,
        timeout: Duration,
    ) -> Result<Scratch, String> {
        let dir = tempfile::Builder::new()
            .prefix("s")
            .tempdir_in(work)
            .map_err(|e| format!("creating a scratch directory: {e}"))?;
        if let Some(rdb) = rdb {
            tokio::fs::rename(rdb, dir.path().join(RDB_FILE))
                .await
                .map_err(|e| format!("moving the RDB into place: {e}"))?;
        }
        let socket = dir.path().join("redis.sock");
        let arg = |p: &Path| p.to_str().map(str::to_owned).ok_or("the work directory is not UTF-8");
        let mut cmd = tokio::process::Command::new(redis_server);
        cmd.args(["--port", "0", "--unixsocket"])
            .arg(arg(&socket)?)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(arg(dir.path())?)
            .args(["--dbfilename", RDB_FILE, "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--maxmemory", &max_memory.to_string(), "--maxmemory-policy", "noeviction"])
            .args(["--enable-debug-command", "no", "--enable-module-command", "no"])
            .args(["--sanitize-dump-payload", "yes", "--logfile"])
            .arg(arg(&dir.path().join("redis.log"))?)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("starting {}: {e}", redis_server.display()))?;
        let client = redis::Client::open(format!("redis+unix://{}", arg(&socket)?))
            .map_err(|e| format!("scratch server address: {e}"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(match rdb {
                    Some(_) => format!(
                        "the RDB could not be loaded (redis-server exited with {status}; an RDB from a newer Redis cannot be read by this one)"
                    ),
                    None => format!("the scratch redis-server exited with {status}"),
                });
            }
            // SAVE and big keys take their time: only the operation's own timeout applies.
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
            if socket.exists()
                && let Ok(mut conn) = client.get_multiplexed_async_connection_with_config(&config).await
            {
                // LOADING while it reads the RDB: wait on.
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return Ok(Scratch { _child: child, dir, conn });
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err("the scratch redis-server did not become ready in time".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn side(&self) -> Side<'_> {
        Side::Conn(self.conn.clone())
    }

    /// SAVEs and answers the RDB's path (inside the scratch directory).
    pub async fn save(&self) -> Result<PathBuf, String> {
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("SAVE").query_async(&mut conn).await.map_err(|e| format!("SAVE: {e}"))?;
        Ok(self.dir.path().join(RDB_FILE))
    }
}

/// One end of a copy: the scratch server, or an instance through its backend (for a
/// cluster, each primary is scanned and RESTOREs go to each key's slot).
pub enum Side<'a> {
    Conn(MultiplexedConnection),
    Backend(&'a Backend),
}

impl Side<'_> {
    async fn run(&self, cmd: &redis::Cmd) -> Result<Value, String> {
        match self {
            Side::Conn(c) => c.clone().send_packed_command(cmd).await.map_err(|e| e.to_string()),
            Side::Backend(b) => b.run(cmd).await.map_err(|e| e.to_string()),
        }
        .and_then(|v| match v {
            Value::ServerError(e) => Err(e.to_string()),
            v => Ok(v),
        })
    }

    /// Runs `cmds` as one pipelined write where one server takes them all, else each on its
    /// own (a routed instance: each key to its node); every reply, error replies included.
    async fn batch(&self, cmds: &[redis::Cmd]) -> Result<Vec<Value>, String> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for cmd in cmds {
            pipe.add_command(cmd.clone());
        }
        match self {
            Side::Conn(c) => {
                c.clone().send_packed_commands(&pipe, 0, cmds.len()).await.map_err(|e| e.to_string())
            }
            Side::Backend(b) if b.routed().is_none() => {
                b.run_batch(&pipe, cmds.len()).await.map_err(|e| e.to_string())
            }
            Side::Backend(b) => {
                let each = futures_util::future::join_all(cmds.iter().map(|c| b.run(c))).await;
                each.into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
            }
        }
    }

    /// The servers holding the keys: itself, or a routed instance's primaries.
    fn servers(&self) -> Vec<ServerRef<'_>> {
        match self {
            Side::Conn(c) => vec![ServerRef::Conn(c.clone())],
            Side::Backend(b) => match b.routed() {
                Some(routed) => routed.primaries().into_iter().map(ServerRef::Owned).collect(),
                None => vec![ServerRef::Borrowed(b)],
            },
        }
    }

    /// FLUSHALL on every server; ASYNC, so a big dataset is freed in the background instead of
    /// blocking the server (and outlasting the connection's response timeout).
    pub async fn flush_all(&self) -> Result<(), String> {
        for server in self.servers() {
            let flush = redis::cmd("FLUSHALL").arg("ASYNC").to_owned();
            server.side().run(&flush).await.map_err(|e| format!("FLUSHALL: {e}"))?;
        }
        Ok(())
    }
}

enum ServerRef<'a> {
    Conn(MultiplexedConnection),
    Borrowed(&'a Backend),
    Owned(std::sync::Arc<Backend>),
}

impl ServerRef<'_> {
    fn side(&self) -> Side<'_> {
        match self {
            ServerRef::Conn(c) => Side::Conn(c.clone()),
            ServerRef::Borrowed(b) => Side::Backend(b),
            ServerRef::Owned(b) => Side::Backend(b),
        }
    }
}

/// Copies every key of `from` into `to` (RESTORE … REPLACE), answering how many were copied.
/// Keys that expire or vanish during the copy are skipped. A key written to `from` during the
/// copy may or may not be copied, depending on where SCAN is (SCAN guarantees only the keys
/// present from start to end).
pub async fn copy_keys(from: &Side<'_>, to: &Side<'_>) -> Result<u64, String> {
    let mut copied = 0u64;
    for server in from.servers() {
        let source = server.side();
        let mut cursor: u64 = 0;
        loop {
            let reply = source
                .run(redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(SCAN_COUNT))
                .await
                .map_err(|e| format!("SCAN: {e}"))?;
            let (next, keys) = scan_reply(reply)?;
            // DUMP and PTTL of each key side by side in one pipeline: the TTL is read right
            // after the value, on the same connection.
            let reads: Vec<redis::Cmd> = keys
                .iter()
                .flat_map(|k| {
                    [
                        redis::cmd("DUMP").arg(k.as_slice()).to_owned(),
                        redis::cmd("PTTL").arg(k.as_slice()).to_owned(),
                    ]
                })
                .collect();
            let replies = source.batch(&reads).await.map_err(|e| format!("DUMP: {e}"))?;
            let mut restores = Vec::with_capacity(keys.len());
            for (key, pair) in keys.iter().zip(replies.chunks(2)) {
                if let Some((payload, ttl)) = dumped(pair)? {
                    let mut cmd = redis::cmd("RESTORE");
                    cmd.arg(key.as_slice()).arg(ttl).arg(payload).arg("REPLACE");
                    restores.push(cmd);
                }
            }
            for r in to.batch(&restores).await.map_err(|e| format!("RESTORE: {e}"))? {
                if let Value::ServerError(e) = r {
                    return Err(format!("RESTORE: {e}"));
                }
                copied += 1;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(copied)
}

fn scan_reply(reply: Value) -> Result<(u64, Vec<Vec<u8>>), String> {
    let bad = || "an unexpected SCAN reply".to_owned();
    let Value::Array(mut parts) = reply else { return Err(bad()) };
    if parts.len() != 2 {
        return Err(bad());
    }
    let keys = match parts.pop() {
        Some(Value::Array(keys)) => keys
            .into_iter()
            .map(|k| match k {
                Value::BulkString(b) => Ok(b),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(bad()),
    };
    let cursor = match parts.pop() {
        Some(Value::BulkString(b)) => {
            std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?
        }
        _ => return Err(bad()),
    };
    Ok((cursor, keys))
}

/// A key's DUMP payload and the TTL RESTORE takes (0: none) from its DUMP and PTTL replies;
/// `None` when the key is gone or about to expire.
fn dumped(pair: &[Value]) -> Result<Option<(&[u8], i64)>, String> {
    let payload = match pair.first() {
        Some(Value::BulkString(b)) => b.as_slice(),
        Some(Value::Nil) => return Ok(None),
        Some(Value::ServerError(e)) => return Err(format!("DUMP: {e}")),
        _ => return Err("an unexpected DUMP reply".into()),
    };
    match pair.get(1) {
        Some(Value::Int(-1)) => Ok(Some((payload, 0))),
        Some(Value::Int(ms)) if *ms > 0 => Ok(Some((payload, *ms))),
        Some(Value::Int(_)) => Ok(None),
        _ => Err("an unexpected PTTL reply".into()),
    }
}

/// `redis-check-rdb` on `file`: `Ok` when it reads it to the end. The binary is found next to
/// `redis-server` (Debian ships both) or on `PATH`.
pub async fn check_rdb(program: &Path, file: &Path, timeout: Duration) -> Result<(), RdbCheck> {
    let program = which::which(program).map_err(|_| RdbCheck::Unavailable)?;
    let run = tokio::process::Command::new(program)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(_)) => Err(RdbCheck::Invalid),
        Ok(Err(_)) => Err(RdbCheck::Unavailable),
        Err(_) => Err(RdbCheck::Invalid),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RdbCheck {
    /// Not a readable RDB file.
    Invalid,
    /// `redis-check-rdb` is missing or could not run.
    Unavailable,
}
