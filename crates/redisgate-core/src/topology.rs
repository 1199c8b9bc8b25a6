//! Sentinel and Cluster instances: what their owner registers ([`Topology`]), and the Redis
//! Cluster rules the gateway routes by ([`key_slot`], [`first_key`] of a command's parts). No I/O.
//!
//! A topology is stored sealed (it holds passwords), as a standalone instance's URL is; the
//! addresses in it, and every address the servers announce later, pass the deployment's
//! egress policy before anything is dialled.

use serde::{Deserialize, Serialize};

/// Most addresses (sentinels or seed nodes) one instance may list.
pub const MAX_ADDRESSES: usize = 16;

/// The servers of a `sentinel` or `cluster` instance, with their credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Topology {
    Sentinel(SentinelSpec),
    Cluster(ClusterSpec),
}

/// A primary and its replicas under Redis Sentinel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SentinelSpec {
    /// `host:port` of each sentinel (`[v6]:port` for IPv6).
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub master_name: String,
    /// The sentinels' own ACL user and password (`requirepass` / `sentinel sentinel-pass`).
    #[serde(default)]
    pub sentinel_username: Option<String>,
    #[serde(default)]
    pub sentinel_password: Option<String>,
    /// The data nodes' user and password.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// TLS to sentinels and data nodes (verified against the platform's roots).
    #[serde(default)]
    pub tls: bool,
    /// Read-only commands may be answered by a replica (possibly a little behind).
    #[serde(default)]
    pub read_from_replicas: bool,
}

/// A Redis Cluster, found through any of its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// `host:port` of some of the cluster's nodes; the rest are discovered.
    pub seeds: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub tls: bool,
}

/// Why a topology cannot be used; `field` names the request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub reason: &'static str,
}

impl Topology {
    /// The addresses the owner listed (sentinels or seeds).
    pub fn addresses(&self) -> &[String] {
        match self {
            Topology::Sentinel(s) => &s.sentinels,
            Topology::Cluster(c) => &c.seeds,
        }
    }

    /// Checks the shape: 1 to [`MAX_ADDRESSES`] `host:port` addresses, a sane master name.
    pub fn validate(&self) -> Result<(), Invalid> {
        let (field, addrs) = match self {
            Topology::Sentinel(s) => ("sentinels", &s.sentinels),
            Topology::Cluster(c) => ("seeds", &c.seeds),
        };
        if addrs.is_empty() || addrs.len() > MAX_ADDRESSES {
            return Err(Invalid { field, reason: "must list 1 to 16 host:port addresses" });
        }
        if addrs.iter().any(|a| parse_address(a).is_none()) {
            return Err(Invalid { field, reason: "each address must be host:port" });
        }
        if let Topology::Sentinel(s) = self {
            let name = &s.master_name;
            if name.is_empty() || name.len() > 200 || name.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(Invalid {
                    field: "master_name",
                    reason: "must be 1 to 200 characters without spaces",
                });
            }
        }
        Ok(())
    }
}

/// `host:port` (or `[v6]:port`) split into host (brackets removed) and port.
pub fn parse_address(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    valid.then(|| (host.to_owned(), port))
}

/// A `redis://` or `rediss://` URL for one server of a topology, credentials percent-encoded.
pub fn node_url(host: &str, port: u16, tls: bool, username: Option<&str>, password: Option<&str>) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let scheme = if tls { "rediss" } else { "redis" };
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    let auth = match (username, password) {
        (_, None) => String::new(),
        (user, Some(pw)) => format!(
            "{}:{}@",
            utf8_percent_encode(user.unwrap_or(""), NON_ALPHANUMERIC),
            utf8_percent_encode(pw, NON_ALPHANUMERIC)
        ),
    };
    format!("{scheme}://{auth}{host}:{port}")
}

/// Redis Cluster's slot count.
pub const SLOTS: u16 = 16384;

/// The cluster slot of `key`: CRC16 (XMODEM) of the key, or of its `{hash tag}` when it has a
/// non-empty one, modulo 16384 (the Redis Cluster specification).
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The key a cluster routes `cmd` by: its first key. A node checks that all of a command's
/// keys share the slot (answering `CROSSSLOT` otherwise), so the first one is enough to pick
/// the node. `None` for commands without keys.
pub fn first_key<A: AsRef<[u8]>>(parts: &[A]) -> Option<&[u8]> {
    let (name, args) = parts.split_first()?;
    let name = name.as_ref();
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    let after_count = |count_at: usize| -> Option<&[u8]> {
        let n: usize = std::str::from_utf8(args.get(count_at)?.as_ref()).ok()?.parse().ok()?;
        if n == 0 { None } else { args.get(count_at + 1).map(AsRef::as_ref) }
    };
    if ["EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"].iter().any(|n| is(n)) {
        return after_count(1);
    }
    if ["ZMPOP", "LMPOP", "SINTERCARD", "ZDIFF", "ZINTER", "ZINTERCARD", "ZUNION"].iter().any(|n| is(n)) {
        return after_count(0);
    }
    if is("XREAD") || is("XREADGROUP") {
        let streams = args.iter().position(|a| a.as_ref().eq_ignore_ascii_case(b"STREAMS"))?;
        return args.get(streams + 1).map(AsRef::as_ref);
    }
    if is("BITOP") || is("OBJECT") || is("XGROUP") || is("XINFO") {
        return args.get(1).map(AsRef::as_ref);
    }
    if is("MEMORY") {
        let usage = args.first().is_some_and(|a| a.as_ref().eq_ignore_ascii_case(b"USAGE"));
        return if usage { args.get(1).map(AsRef::as_ref) } else { None };
    }
    if KEYLESS.iter().any(|n| is(n)) {
        return None;
    }
    args.first().map(AsRef::as_ref)
}

/// Commands without keys whose arguments must not be taken for one.
const KEYLESS: &[&str] = &[
    "PING",
    "ECHO",
    "TIME",
    "INFO",
    "DBSIZE",
    "KEYS",
    "SCAN",
    "RANDOMKEY",
    "FLUSHALL",
    "FLUSHDB",
    "PUBLISH",
    "SCRIPT",
    "FUNCTION",
    "COMMAND",
    "CONFIG",
    "LASTSAVE",
    "LOLWUT",
    "CLIENT",
    "ACL",
    "CLUSTER",
    "READONLY",
    "READWRITE",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "WAIT",
    "WAITAOF",
    "SLOWLOG",
    "LATENCY",
    "PUBSUB",
    "MODULE",
    "SWAPDB",
    "SELECT",
    "AUTH",
    "HELLO",
    "QUIT",
    "RESET",
    "DEBUG",
    "MONITOR",
    "SHUTDOWN",
    "REPLICAOF",
    "SLAVEOF",
    "ROLE",
    "MULTI",
    "EXEC",
    "DISCARD",
    "UNWATCH",
    "FAILOVER",
    "SUBSCRIBE",
    "PSUBSCRIBE",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd<'a>(parts: &'a [&'a str]) -> Vec<&'a [u8]> {
        parts.iter().map(|p| p.as_bytes()).collect()
    }

    #[test]
    fn slots_follow_the_cluster_specification() {
        // Values from `CLUSTER KEYSLOT` on a real Redis.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn first_keys() {
        assert_eq!(first_key(&cmd(&["GET", "k"])), Some(&b"k"[..]));
        assert_eq!(first_key(&cmd(&["mset", "a", "1", "b", "2"])), Some(&b"a"[..]));
        assert_eq!(first_key(&cmd(&["EVAL", "return 1", "1", "k", "v"])), Some(&b"k"[..]));
        assert_eq!(first_key(&cmd(&["EVAL", "return 1", "0"])), None);
        assert_eq!(first_key(&cmd(&["ZUNION", "2", "a", "b"])), Some(&b"a"[..]));
        assert_eq!(first_key(&cmd(&["XREAD", "COUNT", "2", "STREAMS", "s", "0"])), Some(&b"s"[..]));
        assert_eq!(first_key(&cmd(&["BITOP", "AND", "d", "a"])), Some(&b"d"[..]));
        assert_eq!(first_key(&cmd(&["MEMORY", "USAGE", "k"])), Some(&b"k"[..]));
        assert_eq!(first_key(&cmd(&["PUBLISH", "ch", "m"])), None);
        assert_eq!(first_key(&cmd(&["SCAN", "0"])), None);
        assert_eq!(first_key(&cmd(&["PING"])), None);
    }

    #[test]
    fn addresses_and_urls() {
        assert_eq!(parse_address("10.0.0.1:26379"), Some(("10.0.0.1".into(), 26379)));
        assert_eq!(parse_address("[::1]:7000"), Some(("::1".into(), 7000)));
        for bad in ["host", "::1:7000", "h:0", "h:x", ":1", "a b:1", "h@x:1"] {
            assert_eq!(parse_address(bad), None, "{bad}");
        }
        assert_eq!(node_url("h", 1, false, None, None), "redis://h:1");
        assert_eq!(node_url("::1", 1, true, Some("u"), Some("p@ss")), "rediss://u:p%40ss@[::1]:1");
        assert_eq!(node_url("h", 1, false, None, Some("pw")), "redis://:pw@h:1");
    }

    #[test]
    fn validation() {
        let mut s = SentinelSpec {
            sentinels: vec!["127.0.0.1:26379".into()],
            master_name: "mymaster".into(),
            sentinel_username: None,
            sentinel_password: None,
            username: None,
            password: None,
            tls: false,
            read_from_replicas: false,
        };
        assert_eq!(Topology::Sentinel(s.clone()).validate(), Ok(()));
        s.master_name = "my master".into();
        assert_eq!(Topology::Sentinel(s.clone()).validate().unwrap_err().field, "master_name");
        let c = ClusterSpec { seeds: vec![], username: None, password: None, tls: false };
        assert_eq!(Topology::Cluster(c).validate().unwrap_err().field, "seeds");
    }
}
