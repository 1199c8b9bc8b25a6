//! A local instance's files: the `redis.conf` RedisGate writes, the password it keeps, and the
//! loopback port it listens on.
//!
//! The password is the one piece of state that must outlive RedisGate restarts (clients hold
//! URLs with it, and the AOF belongs to it), so it is read back from the existing
//! `redis.conf`; every other line is derived from the spec and rewritten on each start, which
//! lets a moved root, a resized instance or a re-picked port take effect.

use redisgate_core::instance::EvictionPolicy;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(crate) const CONF_FILE: &str = "redis.conf";
pub(crate) const LOG_FILE: &str = "redis.log";
/// Redis reports configuration errors on stderr before it opens its logfile.
pub(crate) const STDERR_FILE: &str = "redis.stderr";

/// A password for a Redis user RedisGate creates (an instance's `requirepass`, its scope
/// users): 32 random bytes, hex-encoded so it needs no quoting in `redis.conf` or an ACL rule
/// nor escaping in a URL.
pub fn generate_password() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
    Ok(hex::encode(bytes))
}

/// What survives from an earlier run of the instance.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Previous {
    pub password: Option<String>,
    pub port: Option<u16>,
}

/// Reads `requirepass` and `port` back from an existing `redis.conf`; no file means a new
/// instance.
pub(crate) fn read_previous(conf: &Path) -> io::Result<Previous> {
    let text = match fs::read_to_string(conf) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Previous::default()),
        Err(e) => return Err(e),
    };
    Ok(parse_previous(&text))
}

fn parse_previous(text: &str) -> Previous {
    let mut prev = Previous::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("requirepass"), Some(pw), None) if !pw.starts_with('"') => {
                prev.password = Some(pw.to_owned())
            }
            (Some("port"), Some(port), None) => prev.port = port.parse().ok().filter(|p| *p != 0),
            _ => {}
        }
    }
    prev
}

/// Creates `dir` (and its parents) and makes sure only our user can enter it: it holds the
/// password and the data.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            fs::set_permissions(dir, Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

/// How long a script or function runs before Redis answers other clients `-BUSY` and starts
/// accepting SCRIPT KILL / FUNCTION KILL (`busy-reply-threshold`). Until then a running script
/// blocks the server completely, so the gateway's kill cannot land earlier than this: the
/// gateway's `backend.script_timeout` (default 5 s) is only honoured when it is at least this.
/// 1 s instead of Redis' 5 s also makes other requests to a stuck instance fail fast with BUSY
/// instead of queueing behind the script.
pub const BUSY_REPLY_THRESHOLD: std::time::Duration = std::time::Duration::from_millis(1000);

/// Everything `redis.conf` says.
pub(crate) struct ConfValues<'a> {
    pub password: &'a str,
    pub port: u16,
    pub memory_bytes: u64,
    pub eviction_policy: EvictionPolicy,
    pub dir: &'a Path,
    /// The largest reply the gateway encodes (`http.max_response_bytes`).
    pub max_reply_bytes: u64,
}

/// The `client-output-buffer-limit normal` hard limit for a gateway that encodes replies up
/// to `max_reply_bytes`. Redis closes a connection whose pending output passes the limit, and
/// the gateway's connection is shared by every request to the instance, so the limit must sit
/// well above any reply the gateway would still serve:
/// - RESP is at most about twice the JSON the gateway bounds (`:1\r\n` vs `1,`, `$0\r\n\r\n`
///   vs `"",`), so one servable reply needs up to 2 × `max_reply_bytes` of output buffer;
/// - a second such reply may be queued behind it before the gateway has read the first: × 2.
///
/// Above 4 × `max_reply_bytes` no reply could be served anyway, so Redis stops building it
/// there instead of growing its memory (and ours) without bound (the default is unlimited).
fn output_buffer_hard_limit(max_reply_bytes: u64) -> u64 {
    max_reply_bytes.saturating_mul(4)
}

impl ConfValues<'_> {
    pub(crate) fn render(&self) -> io::Result<String> {
        let dir = quote(self.dir)?;
        let log = quote(&self.dir.join(LOG_FILE))?;
        Ok(format!(
            "# Written by RedisGate at every start: edits are overwritten; requirepass is kept.\n\
             # No rename-command: RedisGate's gateway decides which commands clients may run.\n\
             bind 127.0.0.1\n\
             port {port}\n\
             protected-mode yes\n\
             daemonize no\n\
             supervised no\n\
             requirepass {password}\n\
             maxmemory {memory}\n\
             maxmemory-policy {policy}\n\
             appendonly yes\n\
             appendfsync everysec\n\
             save \"\"\n\
             # Written only when RedisGate asks for a backup (BGSAVE), and moved away then.\n\
             dbfilename dump.rdb\n\
             dir {dir}\n\
             logfile {log}\n\
             always-show-logo no\n\
             # Hostile tenants: no way to reconfigure, debug or extend the server, and a crafted\n\
             # RESTORE payload is checked before Redis trusts it.\n\
             enable-protected-configs no\n\
             enable-debug-command no\n\
             enable-module-command no\n\
             sanitize-dump-payload yes\n\
             # Bounds one reply (see output_buffer_hard_limit in conf.rs).\n\
             client-output-buffer-limit normal {hard} 0 0\n\
             # The gateway's script timeout relies on SCRIPT KILL being accepted from here on.\n\
             busy-reply-threshold {busy}\n",
            port = self.port,
            password = self.password,
            memory = self.memory_bytes,
            policy = self.eviction_policy.as_str(),
            hard = output_buffer_hard_limit(self.max_reply_bytes),
            busy = BUSY_REPLY_THRESHOLD.as_millis(),
        ))
    }
}

/// A path as a double-quoted `redis.conf` argument.
fn quote(path: &Path) -> io::Result<String> {
    let s = path.to_str().ok_or_else(|| {
        io::Error::new(ErrorKind::InvalidInput, "the data directory path is not valid UTF-8")
    })?;
    if s.chars().any(char::is_control) {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "the data directory path contains control characters",
        ));
    }
    Ok(format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// Writes `contents` to `path` with mode 0600, atomically: a crash mid-write must never leave
/// a conf without the password that the AOF and the clients' URLs depend on.
pub(crate) fn write_private_file(path: &Path, contents: &str) -> io::Result<()> {
    let tmp = tmp_path(path);
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    // A conf created by an older or hand-made setup may be more open than ours.
    fs::set_permissions(path, Permissions::from_mode(0o600))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A loopback port that is free right now: `preferred` if nobody holds it, otherwise one the
/// kernel picks. Someone may take it before redis-server binds it; the caller retries then.
pub(crate) fn pick_port(preferred: Option<u16>) -> io::Result<u16> {
    if let Some(port) = preferred
        && TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok()
    {
        return Ok(port);
    }
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_64_hex_chars_and_random() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn render_then_parse_round_trips() {
        let dir = Path::new("/data/x y/\"q\"");
        let eviction_policy = EvictionPolicy::AllkeysLfu;
        let values = ConfValues {
            password: "abcd",
            port: 7001,
            memory_bytes: 1 << 20,
            eviction_policy,
            dir,
            max_reply_bytes: 1 << 20,
        };
        let text = values.render().unwrap();
        assert!(text.contains("dir \"/data/x y/\\\"q\\\"\"\n"));
        assert!(text.contains("maxmemory 1048576\n"));
        assert!(text.contains("maxmemory-policy allkeys-lfu\n"));
        assert!(text.contains("save \"\"\n"));
        assert!(text.contains("client-output-buffer-limit normal 4194304 0 0\n"));
        assert!(text.contains("busy-reply-threshold 1000\n"));
        assert_eq!(parse_previous(&text), Previous { password: Some("abcd".to_owned()), port: Some(7001) });
    }

    #[test]
    fn private_file_and_dir_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let file = dir.join(CONF_FILE);
        write_private_file(&file, "one").unwrap();
        write_private_file(&file, "two").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "two");
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_previous(&dir.join("missing")).unwrap(), Previous::default());
    }

    #[test]
    fn pick_port_prefers_a_free_port_and_avoids_a_taken_one() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().port();
        assert_ne!(pick_port(Some(taken)).unwrap(), taken);
        let free = pick_port(None).unwrap();
        assert_eq!(pick_port(Some(free)).unwrap(), free);
    }
}
