//! The command catalog: every command name the gateway knows, with its [`Class`] and the
//! `COMMAND INFO` flags Redis gives it. It is the one list of commands in RedisGate: the
//! policy ([`crate::policy`]), the script ACLs ([`crate::policy::allowed_in_script`]) and the
//! metrics' closed set of command labels all read it.
//!
//! Commands whose class depends on the subcommand (`SCRIPT LOAD` vs `SCRIPT FLUSH`) carry a
//! table of subcommands; the parent's own class is the strictest of theirs, which is what a
//! caller asking about the bare name gets.
//!
//! The flags are checked against a real redis-server (`tests/it/commands.rs` compares
//! `COMMAND INFO` with this table), so a Redis upgrade that adds a command or changes one's
//! flags fails the test until the table says what to do with it. Entries Redis 7.0 lacks say
//! where they come from ([`Origin`]): newer Redis versions (hash-field TTLs, `HGETEX` ...) and
//! the JSON module Upstash serves; a backend without them answers `ERR unknown command` itself.

use std::collections::HashMap;
use std::sync::OnceLock;

use Class::*;
use rustc_hash::FxBuildHasher;

/// How the gateway treats a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Reads data; allowed for read-only tokens.
    Read,
    /// A read that walks the whole keyspace; refused for read-only tokens, as Upstash does.
    ExpensiveRead,
    /// May write data: read-write and admin tokens.
    Write,
    /// Runs or loads a script or function (EVAL, EVALSHA, FCALL, their `_RO` forms, SCRIPT LOAD,
    /// FUNCTION LOAD): read-write and admin tokens. Read-only tokens run no script, not even a
    /// `_RO` one: a script is the way around the read-only bans on KEYS and SCAN, and an endless
    /// one stalls the instance. What a script may call is [`crate::policy::allowed_in_script`].
    Script,
    /// Wipes data or manages the scripts other clients rely on (FLUSHALL, FLUSHDB, SCRIPT FLUSH,
    /// FUNCTION DELETE ...): admin access only.
    Gated,
    /// Never forwarded; the reason is shown to the client.
    Refused(&'static str),
}

/// Why commands of a class are refused: the sentence shown to clients.
pub const CONNECTION_STATE: &str = "it changes the state of the shared backend connection";
pub const TRANSACTION: &str = "send the whole transaction to the /multi-exec endpoint instead";
pub const PUBSUB: &str =
    "use the /subscribe, /psubscribe, /ssubscribe or /monitor streaming endpoints instead";
pub const BLOCKING: &str = "blocking commands would hold the shared backend connection";
pub const ADMIN: &str = "server administration is not exposed to tokens";
pub const REPLICATION: &str = "replication commands are not exposed to tokens";
// Short names for the table below.
const CONN: &str = CONNECTION_STATE;
const TX: &str = TRANSACTION;
const SUB: &str = PUBSUB;
const REPL: &str = REPLICATION;

/// Redis' `readonly` flag.
pub const READONLY: u8 = 1;
/// Redis' `write` flag.
pub const WRITE: u8 = 1 << 1;
/// Redis' `admin` flag.
pub const ADMIN_FLAG: u8 = 1 << 2;
/// Redis' `blocking` flag: the command may block (for XREAD/XREADGROUP: with BLOCK).
pub const BLOCKING_FLAG: u8 = 1 << 3;
/// Redis' `noscript` flag: not callable from a script.
pub const NOSCRIPT: u8 = 1 << 4;
/// Redis' `pubsub` flag.
pub const PUBSUB_FLAG: u8 = 1 << 5;

/// The `COMMAND INFO` flags the catalog keeps, by Redis' name. Other flags (`fast`, `denyoom`,
/// `loading` ...) change nothing about what a tenant may run.
pub const TRACKED_FLAGS: [(u8, &str); 6] = [
    (READONLY, "readonly"),
    (WRITE, "write"),
    (ADMIN_FLAG, "admin"),
    (BLOCKING_FLAG, "blocking"),
    (NOSCRIPT, "noscript"),
    (PUBSUB_FLAG, "pubsub"),
];

const NONE: u8 = 0;
const R: u8 = READONLY;
const W: u8 = WRITE;
const A: u8 = ADMIN_FLAG;
const B: u8 = BLOCKING_FLAG;
const N: u8 = NOSCRIPT;
const P: u8 = PUBSUB_FLAG;

/// Where a command comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Redis itself, since this version (7.0 for everything Redis 7.0 has).
    Redis { major: u8, minor: u8 },
    /// A module (Upstash serves RedisJSON's commands).
    Module(&'static str),
}

/// One command (or subcommand) of the catalog.
#[derive(Debug)]
pub struct Spec {
    /// Upper case, as [`crate::command::Command::name`] spells it.
    pub name: &'static str,
    pub class: Class,
    /// [`TRACKED_FLAGS`] bits, as `COMMAND INFO` gives them.
    pub flags: u8,
    pub origin: Origin,
    /// Sorted by name; empty for a command without subcommands.
    pub subcommands: &'static [Spec],
}

impl Spec {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The subcommand named `sub`, ignoring ASCII case.
    pub fn subcommand(&self, sub: &[u8]) -> Option<&'static Spec> {
        let i = self
            .subcommands
            .binary_search_by(|s| s.name.bytes().cmp(sub.iter().map(u8::to_ascii_uppercase)))
            .ok()?;
        Some(&self.subcommands[i])
    }

    const fn since(self, major: u8, minor: u8) -> Spec {
        Spec { origin: Origin::Redis { major, minor }, ..self }
    }

    const fn module(self, name: &'static str) -> Spec {
        Spec { origin: Origin::Module(name), ..self }
    }
}

const fn cmd(name: &'static str, class: Class, flags: u8) -> Spec {
    Spec { name, class, flags, origin: Origin::Redis { major: 7, minor: 0 }, subcommands: &[] }
}

/// A command with subcommands; Redis gives the parent itself no flags.
const fn parent(name: &'static str, class: Class, subcommands: &'static [Spec]) -> Spec {
    Spec { subcommands, ..cmd(name, class, NONE) }
}

/// Why a command is not in the catalog.
#[derive(Debug, Clone, Copy)]
pub enum Unknown {
    Command,
    /// The parent is known, the subcommand is not.
    Subcommand(&'static Spec),
}

/// The command `name` (upper case).
pub fn find(name: &str) -> Option<&'static Spec> {
    index(name).map(|i| &COMMANDS[i])
}

/// The position of `name` (upper case) in [`COMMANDS`]: a dense index for per-command slots.
pub fn index(name: &str) -> Option<usize> {
    // Every request's commands are looked up here: a hash of the name and one comparison,
    // where a binary search over the catalog compared eight names or so. Fx is safe here: the
    // table is fixed, no name a client sends is ever inserted.
    static INDEX: OnceLock<HashMap<&'static str, usize, FxBuildHasher>> = OnceLock::new();
    INDEX.get_or_init(|| COMMANDS.iter().enumerate().map(|(i, s)| (s.name, i)).collect()).get(name).copied()
}

/// The entry that decides about `name` called with first argument `sub`: the subcommand's for
/// a command with subcommands, the parent's when no subcommand is given (Redis then answers a
/// wrong-number-of-arguments error).
pub fn resolve(name: &str, sub: Option<&[u8]>) -> Result<&'static Spec, Unknown> {
    let spec = find(name).ok_or(Unknown::Command)?;
    match sub {
        Some(sub) if !spec.subcommands.is_empty() => spec.subcommand(sub).ok_or(Unknown::Subcommand(spec)),
        _ => Ok(spec),
    }
}

/// Every (command, subcommand) pair of the catalog, parents with subcommands included as
/// `(name, None)`: what per-scope ACL rules are generated from.
pub fn entries() -> impl Iterator<Item = (&'static Spec, Option<&'static Spec>)> {
    COMMANDS
        .iter()
        .flat_map(|c| std::iter::once((c, None)).chain(c.subcommands.iter().map(move |s| (c, Some(s)))))
}

/// The catalog, sorted by name. Classes follow the rules in [`crate::policy`]; flags are
/// Redis 7.0's `COMMAND INFO` (or the later version's, for a later command).
pub static COMMANDS: &[Spec] = &[
    parent(
        "ACL",
        Refused(ADMIN),
        &[
            cmd("CAT", Refused(ADMIN), N),
            cmd("DELUSER", Refused(ADMIN), A | N),
            cmd("DRYRUN", Refused(ADMIN), A | N),
            cmd("GENPASS", Refused(ADMIN), N),
            cmd("GETUSER", Refused(ADMIN), A | N),
            cmd("HELP", Refused(ADMIN), NONE),
            cmd("LIST", Refused(ADMIN), A | N),
            cmd("LOAD", Refused(ADMIN), A | N),
            cmd("LOG", Refused(ADMIN), A | N),
            cmd("SAVE", Refused(ADMIN), A | N),
            cmd("SETUSER", Refused(ADMIN), A | N),
            cmd("USERS", Refused(ADMIN), A | N),
            cmd("WHOAMI", Refused(ADMIN), N),
        ],
    ),
    cmd("APPEND", Write, W),
    cmd("ASKING", Refused(CONN), NONE),
    cmd("AUTH", Refused(CONN), N),
    cmd("BGREWRITEAOF", Refused(ADMIN), A | N),
    cmd("BGSAVE", Refused(ADMIN), A | N),
    cmd("BITCOUNT", Read, R),
    cmd("BITFIELD", Write, W),
    cmd("BITFIELD_RO", Read, R),
    cmd("BITOP", Write, W),
    cmd("BITPOS", Read, R),
    cmd("BLMOVE", Refused(BLOCKING), W | B | N),
    cmd("BLMPOP", Refused(BLOCKING), W | B),
    cmd("BLPOP", Refused(BLOCKING), W | B | N),
    cmd("BRPOP", Refused(BLOCKING), W | B | N),
    cmd("BRPOPLPUSH", Refused(BLOCKING), W | B | N),
    cmd("BZMPOP", Refused(BLOCKING), W | B),
    cmd("BZPOPMAX", Refused(BLOCKING), W | B | N),
    cmd("BZPOPMIN", Refused(BLOCKING), W | B | N),
    parent(
        "CLIENT",
        Refused(CONN),
        &[
            cmd("CACHING", Refused(CONN), N),
            cmd("GETNAME", Refused(CONN), N),
            cmd("GETREDIR", Refused(CONN), N),
            cmd("HELP", Refused(CONN), NONE),
            cmd("ID", Refused(CONN), N),
            cmd("INFO", Refused(CONN), N),
            cmd("KILL", Refused(CONN), A | N),
            cmd("LIST", Refused(CONN), A | N),
            cmd("NO-EVICT", Refused(CONN), A | N),
            cmd("NO-TOUCH", Refused(CONN), N).since(7, 2),
            cmd("PAUSE", Refused(CONN), A | N),
            cmd("REPLY", Refused(CONN), N),
            cmd("SETINFO", Refused(CONN), N).since(7, 2),
            cmd("SETNAME", Refused(CONN), N),
            cmd("TRACKING", Refused(CONN), N),
            cmd("TRACKINGINFO", Refused(CONN), N),
            cmd("UNBLOCK", Refused(CONN), A | N),
            cmd("UNPAUSE", Refused(CONN), A | N),
        ],
    ),
    parent(
        "CLUSTER",
        Refused(ADMIN),
        &[
            cmd("ADDSLOTS", Refused(ADMIN), A),
            cmd("ADDSLOTSRANGE", Refused(ADMIN), A),
            cmd("BUMPEPOCH", Refused(ADMIN), A),
            cmd("COUNT-FAILURE-REPORTS", Refused(ADMIN), A),
            cmd("COUNTKEYSINSLOT", Refused(ADMIN), NONE),
            cmd("DELSLOTS", Refused(ADMIN), A),
            cmd("DELSLOTSRANGE", Refused(ADMIN), A),
            cmd("FAILOVER", Refused(ADMIN), A),
            cmd("FLUSHSLOTS", Refused(ADMIN), A),
            cmd("FORGET", Refused(ADMIN), A),
            cmd("GETKEYSINSLOT", Refused(ADMIN), NONE),
            cmd("HELP", Refused(ADMIN), NONE),
            cmd("INFO", Refused(ADMIN), NONE),
            cmd("KEYSLOT", Refused(ADMIN), NONE),
            cmd("LINKS", Refused(ADMIN), NONE),
            cmd("MEET", Refused(ADMIN), A),
            cmd("MYID", Refused(ADMIN), NONE),
            cmd("NODES", Refused(ADMIN), NONE),
            cmd("REPLICAS", Refused(ADMIN), A),
            cmd("REPLICATE", Refused(ADMIN), A),
            cmd("RESET", Refused(ADMIN), A | N),
            cmd("SAVECONFIG", Refused(ADMIN), A),
            cmd("SET-CONFIG-EPOCH", Refused(ADMIN), A),
            cmd("SETSLOT", Refused(ADMIN), A),
            cmd("SHARDS", Refused(ADMIN), NONE),
            cmd("SLAVES", Refused(ADMIN), A),
            cmd("SLOTS", Refused(ADMIN), NONE),
        ],
    ),
    parent(
        "COMMAND",
        Read,
        &[
            cmd("COUNT", Read, NONE),
            cmd("DOCS", Read, NONE),
            cmd("GETKEYS", Read, NONE),
            cmd("GETKEYSANDFLAGS", Read, NONE),
            cmd("HELP", Read, NONE),
            cmd("INFO", Read, NONE),
            cmd("LIST", Read, NONE),
        ],
    ),
    parent(
        "CONFIG",
        Refused(ADMIN),
        &[
            cmd("GET", Refused(ADMIN), A | N),
            cmd("HELP", Refused(ADMIN), NONE),
            cmd("RESETSTAT", Refused(ADMIN), A | N),
            cmd("REWRITE", Refused(ADMIN), A | N),
            cmd("SET", Refused(ADMIN), A | N),
        ],
    ),
    cmd("COPY", Write, W),
    cmd("DBSIZE", Read, R),
    cmd("DEBUG", Refused(ADMIN), A | N),
    cmd("DECR", Write, W),
    cmd("DECRBY", Write, W),
    cmd("DEL", Write, W),
    cmd("DISCARD", Refused(TX), N),
    cmd("DUMP", Read, R),
    cmd("ECHO", Read, NONE),
    cmd("EVAL", Script, N),
    cmd("EVALSHA", Script, N),
    cmd("EVALSHA_RO", Script, R | N),
    cmd("EVAL_RO", Script, R | N),
    cmd("EXEC", Refused(TX), N),
    cmd("EXISTS", Read, R),
    cmd("EXPIRE", Write, W),
    cmd("EXPIREAT", Write, W),
    cmd("EXPIRETIME", Read, R),
    cmd("FAILOVER", Refused(REPL), A | N),
    cmd("FCALL", Script, N),
    cmd("FCALL_RO", Script, R | N),
    cmd("FLUSHALL", Gated, W),
    cmd("FLUSHDB", Gated, W),
    parent(
        "FUNCTION",
        Gated,
        &[
            cmd("DELETE", Gated, W | N),
            cmd("DUMP", Read, N),
            cmd("FLUSH", Gated, W | N),
            cmd("HELP", Read, NONE),
            cmd("KILL", Gated, N),
            cmd("LIST", Read, N),
            cmd("LOAD", Script, W | N),
            cmd("RESTORE", Gated, W | N),
            cmd("STATS", Read, N),
        ],
    ),
    cmd("GEOADD", Write, W),
    cmd("GEODIST", Read, R),
    cmd("GEOHASH", Read, R),
    cmd("GEOPOS", Read, R),
    cmd("GEORADIUS", Write, W),
    cmd("GEORADIUSBYMEMBER", Write, W),
    cmd("GEORADIUSBYMEMBER_RO", Read, R),
    cmd("GEORADIUS_RO", Read, R),
    cmd("GEOSEARCH", Read, R),
    cmd("GEOSEARCHSTORE", Write, W),
    cmd("GET", Read, R),
    cmd("GETBIT", Read, R),
    cmd("GETDEL", Write, W),
    cmd("GETEX", Write, W),
    cmd("GETRANGE", Read, R),
    cmd("GETSET", Write, W),
    cmd("HDEL", Write, W),
    cmd("HELLO", Refused(CONN), N),
    cmd("HEXISTS", Read, R),
    cmd("HEXPIRE", Write, W).since(7, 4),
    cmd("HEXPIREAT", Write, W).since(7, 4),
    cmd("HEXPIRETIME", Read, R).since(7, 4),
    cmd("HGET", Read, R),
    cmd("HGETALL", Read, R),
    cmd("HGETDEL", Write, W).since(8, 0),
    cmd("HGETEX", Write, W).since(8, 0),
    cmd("HINCRBY", Write, W),
    cmd("HINCRBYFLOAT", Write, W),
    cmd("HKEYS", Read, R),
    cmd("HLEN", Read, R),
    cmd("HMGET", Read, R),
    cmd("HMSET", Write, W),
    cmd("HPERSIST", Write, W).since(7, 4),
    cmd("HPEXPIRE", Write, W).since(7, 4),
    cmd("HPEXPIREAT", Write, W).since(7, 4),
    cmd("HPEXPIRETIME", Read, R).since(7, 4),
    cmd("HPTTL", Read, R).since(7, 4),
    cmd("HRANDFIELD", Read, R),
    cmd("HSCAN", Read, R),
    cmd("HSET", Write, W),
    cmd("HSETEX", Write, W).since(8, 0),
    cmd("HSETNX", Write, W),
    cmd("HSTRLEN", Read, R),
    cmd("HTTL", Read, R).since(7, 4),
    cmd("HVALS", Read, R),
    cmd("INCR", Write, W),
    cmd("INCRBY", Write, W),
    cmd("INCRBYFLOAT", Write, W),
    cmd("INFO", Read, NONE),
    cmd("JSON.ARRAPPEND", Write, W).module("ReJSON"),
    cmd("JSON.ARRINDEX", Read, R).module("ReJSON"),
    cmd("JSON.ARRINSERT", Write, W).module("ReJSON"),
    cmd("JSON.ARRLEN", Read, R).module("ReJSON"),
    cmd("JSON.ARRPOP", Write, W).module("ReJSON"),
    cmd("JSON.ARRTRIM", Write, W).module("ReJSON"),
    cmd("JSON.CLEAR", Write, W).module("ReJSON"),
    cmd("JSON.DEL", Write, W).module("ReJSON"),
    cmd("JSON.FORGET", Write, W).module("ReJSON"),
    cmd("JSON.GET", Read, R).module("ReJSON"),
    cmd("JSON.MERGE", Write, W).module("ReJSON"),
    cmd("JSON.MGET", Read, R).module("ReJSON"),
    cmd("JSON.MSET", Write, W).module("ReJSON"),
    cmd("JSON.NUMINCRBY", Write, W).module("ReJSON"),
    cmd("JSON.NUMMULTBY", Write, W).module("ReJSON"),
    cmd("JSON.OBJKEYS", Read, R).module("ReJSON"),
    cmd("JSON.OBJLEN", Read, R).module("ReJSON"),
    cmd("JSON.RESP", Read, R).module("ReJSON"),
    cmd("JSON.SET", Write, W).module("ReJSON"),
    cmd("JSON.STRAPPEND", Write, W).module("ReJSON"),
    cmd("JSON.STRLEN", Read, R).module("ReJSON"),
    cmd("JSON.TOGGLE", Write, W).module("ReJSON"),
    cmd("JSON.TYPE", Read, R).module("ReJSON"),
    cmd("KEYS", ExpensiveRead, R),
    cmd("LASTSAVE", Read, NONE),
    parent(
        "LATENCY",
        Refused(ADMIN),
        &[
            cmd("DOCTOR", Refused(ADMIN), A | N),
            cmd("GRAPH", Refused(ADMIN), A | N),
            cmd("HELP", Refused(ADMIN), NONE),
            cmd("HISTOGRAM", Refused(ADMIN), A | N),
            cmd("HISTORY", Refused(ADMIN), A | N),
            cmd("LATEST", Refused(ADMIN), A | N),
            cmd("RESET", Refused(ADMIN), A | N),
        ],
    ),
    cmd("LCS", Read, R),
    cmd("LINDEX", Read, R),
    cmd("LINSERT", Write, W),
    cmd("LLEN", Read, R),
    cmd("LMOVE", Write, W),
    cmd("LMPOP", Write, W),
    cmd("LOLWUT", Read, R),
    cmd("LPOP", Write, W),
    cmd("LPOS", Read, R),
    cmd("LPUSH", Write, W),
    cmd("LPUSHX", Write, W),
    cmd("LRANGE", Read, R),
    cmd("LREM", Write, W),
    cmd("LSET", Write, W),
    cmd("LTRIM", Write, W),
    parent(
        "MEMORY",
        Refused(ADMIN),
        &[
            cmd("DOCTOR", Read, NONE),
            cmd("HELP", Read, NONE),
            cmd("MALLOC-STATS", Refused(ADMIN), NONE),
            cmd("PURGE", Refused(ADMIN), NONE),
            cmd("STATS", Read, NONE),
            cmd("USAGE", Read, R),
        ],
    ),
    cmd("MGET", Read, R),
    cmd("MIGRATE", Refused(ADMIN), W),
    parent(
        "MODULE",
        Refused(ADMIN),
        &[
            cmd("HELP", Refused(ADMIN), NONE),
            cmd("LIST", Refused(ADMIN), A | N),
            cmd("LOAD", Refused(ADMIN), A | N),
            cmd("LOADEX", Refused(ADMIN), A | N),
            cmd("UNLOAD", Refused(ADMIN), A | N),
        ],
    ),
    cmd("MONITOR", Refused(SUB), A | N),
    cmd("MOVE", Write, W),
    cmd("MSET", Write, W),
    cmd("MSETNX", Write, W),
    cmd("MULTI", Refused(TX), N),
    parent(
        "OBJECT",
        Read,
        &[
            cmd("ENCODING", Read, R),
            cmd("FREQ", Read, R),
            cmd("HELP", Read, NONE),
            cmd("IDLETIME", Read, R),
            cmd("REFCOUNT", Read, R),
        ],
    ),
    cmd("PERSIST", Write, W),
    cmd("PEXPIRE", Write, W),
    cmd("PEXPIREAT", Write, W),
    cmd("PEXPIRETIME", Read, R),
    cmd("PFADD", Write, W),
    cmd("PFCOUNT", Read, R),
    cmd("PFDEBUG", Refused(ADMIN), W | A),
    cmd("PFMERGE", Write, W),
    cmd("PFSELFTEST", Refused(ADMIN), A),
    cmd("PING", Read, NONE),
    cmd("PSETEX", Write, W),
    cmd("PSUBSCRIBE", Refused(SUB), N | P),
    cmd("PSYNC", Refused(REPL), A | N),
    cmd("PTTL", Read, R),
    cmd("PUBLISH", Write, P),
    parent(
        "PUBSUB",
        Read,
        &[
            cmd("CHANNELS", Read, P),
            cmd("HELP", Read, NONE),
            cmd("NUMPAT", Read, P),
            cmd("NUMSUB", Read, P),
            cmd("SHARDCHANNELS", Read, P),
            cmd("SHARDNUMSUB", Read, P),
        ],
    ),
    cmd("PUNSUBSCRIBE", Refused(SUB), N | P),
    cmd("QUIT", Refused(CONN), N),
    cmd("RANDOMKEY", Read, R),
    cmd("READONLY", Refused(CONN), NONE),
    cmd("READWRITE", Refused(CONN), NONE),
    cmd("RENAME", Write, W),
    cmd("RENAMENX", Write, W),
    cmd("REPLCONF", Refused(REPL), A | N),
    cmd("REPLICAOF", Refused(REPL), A | N),
    cmd("RESET", Refused(CONN), N),
    cmd("RESTORE", Write, W),
    cmd("RESTORE-ASKING", Refused(ADMIN), W),
    cmd("ROLE", Refused(REPL), N),
    cmd("RPOP", Write, W),
    cmd("RPOPLPUSH", Write, W),
    cmd("RPUSH", Write, W),
    cmd("RPUSHX", Write, W),
    cmd("SADD", Write, W),
    cmd("SAVE", Refused(ADMIN), A | N),
    cmd("SCAN", ExpensiveRead, R),
    cmd("SCARD", Read, R),
    parent(
        "SCRIPT",
        Refused(CONN),
        &[
            cmd("DEBUG", Refused(CONN), N),
            cmd("EXISTS", Script, N),
            cmd("FLUSH", Gated, N),
            cmd("HELP", Read, NONE),
            cmd("KILL", Gated, N),
            cmd("LOAD", Script, N),
        ],
    ),
    cmd("SDIFF", Read, R),
    cmd("SDIFFSTORE", Write, W),
    cmd("SELECT", Refused(CONN), NONE),
    cmd("SET", Write, W),
    cmd("SETBIT", Write, W),
    cmd("SETEX", Write, W),
    cmd("SETNX", Write, W),
    cmd("SETRANGE", Write, W),
    cmd("SHUTDOWN", Refused(ADMIN), A | N),
    cmd("SINTER", Read, R),
    cmd("SINTERCARD", Read, R),
    cmd("SINTERSTORE", Write, W),
    cmd("SISMEMBER", Read, R),
    cmd("SLAVEOF", Refused(REPL), A | N),
    parent(
        "SLOWLOG",
        Refused(ADMIN),
        &[
            cmd("GET", Refused(ADMIN), A),
            cmd("HELP", Refused(ADMIN), NONE),
            cmd("LEN", Refused(ADMIN), A),
            cmd("RESET", Refused(ADMIN), A),
        ],
    ),
    cmd("SMEMBERS", Read, R),
    cmd("SMISMEMBER", Read, R),
    cmd("SMOVE", Write, W),
    cmd("SORT", Write, W),
    cmd("SORT_RO", Read, R),
    cmd("SPOP", Write, W),
    cmd("SPUBLISH", Write, P),
    cmd("SRANDMEMBER", Read, R),
    cmd("SREM", Write, W),
    cmd("SSCAN", Read, R),
    cmd("SSUBSCRIBE", Refused(SUB), N | P),
    cmd("STRLEN", Read, R),
    cmd("SUBSCRIBE", Refused(SUB), N | P),
    cmd("SUBSTR", Read, R),
    cmd("SUNION", Read, R),
    cmd("SUNIONSTORE", Write, W),
    cmd("SUNSUBSCRIBE", Refused(SUB), N | P),
    cmd("SWAPDB", Refused(ADMIN), W),
    cmd("SYNC", Refused(REPL), A | N),
    cmd("TIME", Read, NONE),
    cmd("TOUCH", Read, R),
    cmd("TTL", Read, R),
    cmd("TYPE", Read, R),
    cmd("UNLINK", Write, W),
    cmd("UNSUBSCRIBE", Refused(SUB), N | P),
    cmd("UNWATCH", Refused(TX), N),
    cmd("WAIT", Refused(BLOCKING), N),
    cmd("WAITAOF", Refused(BLOCKING), N).since(7, 2),
    cmd("WATCH", Refused(TX), N),
    cmd("XACK", Write, W),
    cmd("XACKDEL", Write, W).since(8, 2),
    cmd("XADD", Write, W),
    cmd("XAUTOCLAIM", Write, W),
    cmd("XCLAIM", Write, W),
    cmd("XDEL", Write, W),
    cmd("XDELEX", Write, W).since(8, 2),
    parent(
        "XGROUP",
        Write,
        &[
            cmd("CREATE", Write, W),
            cmd("CREATECONSUMER", Write, W),
            cmd("DELCONSUMER", Write, W),
            cmd("DESTROY", Write, W),
            cmd("HELP", Read, NONE),
            cmd("SETID", Write, W),
        ],
    ),
    parent(
        "XINFO",
        Read,
        &[cmd("CONSUMERS", Read, R), cmd("GROUPS", Read, R), cmd("HELP", Read, NONE), cmd("STREAM", Read, R)],
    ),
    cmd("XLEN", Read, R),
    cmd("XPENDING", Read, R),
    cmd("XRANGE", Read, R),
    cmd("XREAD", Read, R | B),
    cmd("XREADGROUP", Write, W | B),
    cmd("XREVRANGE", Read, R),
    cmd("XSETID", Write, W),
    cmd("XTRIM", Write, W),
    cmd("ZADD", Write, W),
    cmd("ZCARD", Read, R),
    cmd("ZCOUNT", Read, R),
    cmd("ZDIFF", Read, R),
    cmd("ZDIFFSTORE", Write, W),
    cmd("ZINCRBY", Write, W),
    cmd("ZINTER", Read, R),
    cmd("ZINTERCARD", Read, R),
    cmd("ZINTERSTORE", Write, W),
    cmd("ZLEXCOUNT", Read, R),
    cmd("ZMPOP", Write, W),
    cmd("ZMSCORE", Read, R),
    cmd("ZPOPMAX", Write, W),
    cmd("ZPOPMIN", Write, W),
    cmd("ZRANDMEMBER", Read, R),
    cmd("ZRANGE", Read, R),
    cmd("ZRANGEBYLEX", Read, R),
    cmd("ZRANGEBYSCORE", Read, R),
    cmd("ZRANGESTORE", Write, W),
    cmd("ZRANK", Read, R),
    cmd("ZREM", Write, W),
    cmd("ZREMRANGEBYLEX", Write, W),
    cmd("ZREMRANGEBYRANK", Write, W),
    cmd("ZREMRANGEBYSCORE", Write, W),
    cmd("ZREVRANGE", Read, R),
    cmd("ZREVRANGEBYLEX", Read, R),
    cmd("ZREVRANGEBYSCORE", Read, R),
    cmd("ZREVRANK", Read, R),
    cmd("ZSCAN", Read, R),
    cmd("ZSCORE", Read, R),
    cmd("ZUNION", Read, R),
    cmd("ZUNIONSTORE", Write, W),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::class;

    fn strictness(c: Class) -> u8 {
        match c {
            Read => 0,
            ExpensiveRead => 1,
            Write => 2,
            Script => 3,
            Gated => 4,
            Refused(_) => 5,
        }
    }

    fn all() -> impl Iterator<Item = (String, &'static Spec)> {
        entries().map(|(c, s)| match s {
            Some(s) => (format!("{}|{}", c.name, s.name), s),
            None => (c.name.to_owned(), c),
        })
    }

    #[test]
    fn tables_are_sorted_upper_case_and_unique() {
        for table in std::iter::once(COMMANDS).chain(COMMANDS.iter().map(|c| c.subcommands)) {
            assert!(table.windows(2).all(|w| w[0].name < w[1].name), "{:?} not sorted", table[0].name);
            assert!(table.iter().all(|c| c.name == c.name.to_ascii_uppercase()));
        }
        assert_eq!(find("GET").map(|s| s.name), Some("GET"));
        assert_eq!(index("ZUNIONSTORE"), Some(COMMANDS.len() - 1));
        assert!(find("get").is_none(), "callers pass upper case");
    }

    /// What Redis' flags say about a command must agree with its class. Redis' flags come from
    /// the table, which `tests/it/commands.rs` checks against a real server.
    #[test]
    fn classes_agree_with_flags() {
        for (name, spec) in all() {
            let c = spec.class;
            if spec.has(BLOCKING_FLAG) {
                assert!(
                    c == Refused(BLOCKING) || ["XREAD", "XREADGROUP"].contains(&name.as_str()),
                    "{name} blocks: refused, or its grammar is known to policy::blocks"
                );
            }
            if spec.has(ADMIN_FLAG) {
                assert!(matches!(c, Refused(_)), "{name} is an admin command");
            }
            if spec.has(PUBSUB_FLAG) {
                assert!(
                    c == Refused(SUB) || name.starts_with("PUBSUB|") || name.ends_with("PUBLISH"),
                    "{name}: subscribing holds the connection; introspection and publishing do not"
                );
            }
            if spec.has(WRITE) {
                assert!(strictness(c) >= strictness(Write), "{name} writes but is {c:?}");
            }
            if c == Read {
                assert!(!spec.has(WRITE), "{name}");
            }
        }
    }

    #[test]
    fn a_parent_is_as_strict_as_its_subcommands() {
        for c in COMMANDS.iter().filter(|c| !c.subcommands.is_empty()) {
            let strictest = c.subcommands.iter().map(|s| s.class).max_by_key(|s| strictness(*s)).unwrap();
            assert_eq!(c.class, strictest, "{}", c.name);
            assert_eq!(class(c.name), strictest, "{}", c.name);
            if let Refused(reason) = c.class
                && c.subcommands.iter().all(|s| matches!(s.class, Refused(_)))
            {
                assert!(c.subcommands.iter().all(|s| s.class == Refused(reason)), "{}", c.name);
            }
        }
    }

    #[test]
    fn subcommands_resolve_in_any_case() {
        assert_eq!(resolve("SCRIPT", Some(b"flush")).unwrap().class, Gated);
        assert_eq!(resolve("SCRIPT", Some(b"Load")).unwrap().class, Script);
        assert_eq!(resolve("SCRIPT", None).unwrap().name, "SCRIPT");
        assert_eq!(resolve("GET", Some(b"FLUSH")).unwrap().name, "GET", "no subcommands: an argument");
        assert!(
            matches!(resolve("OBJECT", Some(b"NOPE")), Err(Unknown::Subcommand(p)) if p.name == "OBJECT")
        );
        assert!(matches!(resolve("NOPE", None), Err(Unknown::Command)));
    }
}
