//! Which commands may pass through the gateway (PROTOCOL.md §2 and §10).
//!
//! Every command, whatever form it came in (path, body, pipeline, multi-exec), goes through
//! [`check`] before anything is sent to Redis. The gateway shares one multiplexed connection
//! per backend among all requests, so a command that changes or pins connection state
//! (SELECT, AUTH, CLIENT, MULTI, a blocking pop, SUBSCRIBE ...) would corrupt every other
//! request on that connection: those are refused here and never reach Redis.

use crate::command::Command;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Every command that is safe on a shared connection ("Standard" token in Upstash;
    /// standalone tokens and admin-scoped API keys).
    Admin,
    /// Like `Admin` without the gated commands (flushing, scripts and functions).
    ReadWrite,
    /// Read commands only, minus keyspace-wide scans ("Read Only" token in Upstash).
    ReadOnly,
}

/// How the gateway treats a command name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Reads data; allowed for read-only tokens.
    Read,
    /// A read that walks the whole keyspace; refused for read-only tokens, as Upstash does.
    ExpensiveRead,
    /// Anything else, including commands we do not know: unknown means "may write".
    Write,
    /// Writes that wipe data or run arbitrary code (which could wipe data): admin access only.
    /// Scripts are gated with FLUSHALL because a script can call FLUSHALL itself.
    Gated,
    /// Never forwarded; the reason is shown to the client.
    Refused(&'static str),
}

/// Why a command was refused. The text keeps Redis' error-code style.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("ERR command '{command}' is not available over REST: {reason}")]
    NotAvailable { command: String, reason: &'static str },
    #[error("NOPERM this token has no permissions to run the '{command}' command")]
    NoPermission { command: String },
}

const CONNECTION_STATE: &str = "it changes the state of the shared backend connection";
const TRANSACTION: &str = "send the whole transaction to the /multi-exec endpoint instead";
const PUBSUB: &str = "use the /subscribe, /psubscribe or /monitor streaming endpoints instead";
const BLOCKING: &str = "blocking commands would hold the shared backend connection";
const ADMIN: &str = "server administration is not exposed to tokens";
const REPLICATION: &str = "replication commands are not exposed to tokens";

/// The class of a command name (upper case).
pub fn class(name: &str) -> Class {
    use Class::*;
    match name {
        // Connection state. PING and ECHO are the only connection commands allowed (§10).
        "AUTH" | "HELLO" | "SELECT" | "CLIENT" | "RESET" | "QUIT" | "READONLY" | "READWRITE" | "ASKING" => {
            Refused(CONNECTION_STATE)
        }
        "MULTI" | "EXEC" | "DISCARD" | "WATCH" | "UNWATCH" => Refused(TRANSACTION),
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE"
        | "MONITOR" => Refused(PUBSUB),
        "BLPOP" | "BRPOP" | "BRPOPLPUSH" | "BLMOVE" | "BLMPOP" | "BZPOPMIN" | "BZPOPMAX" | "BZMPOP"
        | "WAIT" | "WAITAOF" => Refused(BLOCKING),
        "SYNC" | "PSYNC" | "REPLICAOF" | "SLAVEOF" | "REPLCONF" | "FAILOVER" => Refused(REPLICATION),
        // MIGRATE opens a connection from the Redis server to any host: never let tokens do that.
        "SHUTDOWN" | "DEBUG" | "CONFIG" | "SAVE" | "BGSAVE" | "BGREWRITEAOF" | "MODULE" | "ACL"
        | "CLUSTER" | "SWAPDB" | "MIGRATE" | "LATENCY" | "SLOWLOG" | "PFDEBUG" | "PFSELFTEST"
        | "RESTORE-ASKING" => Refused(ADMIN),

        "KEYS" | "SCAN" => ExpensiveRead,

        "FLUSHALL" | "FLUSHDB" | "EVAL" | "EVALSHA" | "SCRIPT" | "FUNCTION" | "FCALL" => Gated,

        // Reads (Redis' `readonly` flag), grouped by data type.
        "GET"
        | "GETRANGE"
        | "SUBSTR"
        | "MGET"
        | "STRLEN"
        | "GETBIT"
        | "BITCOUNT"
        | "BITPOS"
        | "BITFIELD_RO"
        | "LCS"
        | "EXISTS"
        | "TYPE"
        | "TTL"
        | "PTTL"
        | "EXPIRETIME"
        | "PEXPIRETIME"
        | "DUMP"
        | "RANDOMKEY"
        | "DBSIZE"
        | "TOUCH"
        | "OBJECT"
        | "MEMORY"
        | "SORT_RO"
        | "HGET"
        | "HMGET"
        | "HGETALL"
        | "HKEYS"
        | "HVALS"
        | "HLEN"
        | "HEXISTS"
        | "HSTRLEN"
        | "HRANDFIELD"
        | "HSCAN"
        | "HTTL"
        | "HPTTL"
        | "HEXPIRETIME"
        | "HPEXPIRETIME"
        | "LRANGE"
        | "LINDEX"
        | "LLEN"
        | "LPOS"
        | "SMEMBERS"
        | "SISMEMBER"
        | "SMISMEMBER"
        | "SCARD"
        | "SRANDMEMBER"
        | "SINTER"
        | "SINTERCARD"
        | "SUNION"
        | "SDIFF"
        | "SSCAN"
        | "ZRANGE"
        | "ZRANGEBYSCORE"
        | "ZRANGEBYLEX"
        | "ZREVRANGE"
        | "ZREVRANGEBYSCORE"
        | "ZREVRANGEBYLEX"
        | "ZCARD"
        | "ZCOUNT"
        | "ZLEXCOUNT"
        | "ZSCORE"
        | "ZMSCORE"
        | "ZRANK"
        | "ZREVRANK"
        | "ZRANDMEMBER"
        | "ZSCAN"
        | "ZINTER"
        | "ZUNION"
        | "ZDIFF"
        | "ZINTERCARD"
        | "XRANGE"
        | "XREVRANGE"
        | "XLEN"
        | "XREAD"
        | "XINFO"
        | "XPENDING"
        | "GEOPOS"
        | "GEODIST"
        | "GEOHASH"
        | "GEORADIUS_RO"
        | "GEORADIUSBYMEMBER_RO"
        | "GEOSEARCH"
        | "PFCOUNT"
        | "EVAL_RO"
        | "EVALSHA_RO"
        | "FCALL_RO"
        | "PING"
        | "ECHO"
        | "TIME"
        | "INFO"
        | "COMMAND"
        | "LOLWUT"
        | "PUBSUB"
        | "JSON.GET"
        | "JSON.MGET"
        | "JSON.TYPE"
        | "JSON.STRLEN"
        | "JSON.OBJKEYS"
        | "JSON.OBJLEN"
        | "JSON.ARRLEN"
        | "JSON.ARRINDEX"
        | "JSON.RESP" => Read,

        _ => Write,
    }
}

/// Checks one command against the gateway's rules and the token's access.
pub fn check(cmd: &Command, access: Access) -> Result<(), Refusal> {
    let name = cmd.name();
    let class = match class(name) {
        // XREAD/XREADGROUP block only with a BLOCK option, which comes before STREAMS.
        Class::Read | Class::Write if matches!(name, "XREAD" | "XREADGROUP") && blocks(cmd) => {
            Class::Refused(BLOCKING)
        }
        c => c,
    };
    let allowed = match (class, access) {
        (Class::Refused(reason), _) => {
            return Err(Refusal::NotAvailable { command: name.to_owned(), reason });
        }
        (Class::Read, _) | (_, Access::Admin) => true,
        (Class::ExpensiveRead | Class::Write, Access::ReadWrite) => true,
        (Class::Gated, Access::ReadWrite) | (_, Access::ReadOnly) => false,
    };
    if allowed { Ok(()) } else { Err(Refusal::NoPermission { command: name.to_ascii_lowercase() }) }
}

fn blocks(cmd: &Command) -> bool {
    cmd.args()
        .iter()
        .take_while(|a| !a.eq_ignore_ascii_case(b"STREAMS"))
        .any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(parts: &[&str], access: Access) -> Result<(), Refusal> {
        check(&Command::from_strs(parts).unwrap(), access)
    }

    #[test]
    fn connection_state_is_refused_for_everyone() {
        for cmd in [
            "select",
            "AUTH",
            "hello",
            "client",
            "reset",
            "quit",
            "multi",
            "exec",
            "watch",
            "blpop",
            "subscribe",
            "monitor",
            "replicaof",
            "config",
            "shutdown",
            "migrate",
        ] {
            assert!(
                matches!(run(&[cmd, "x"], Access::ReadWrite), Err(Refusal::NotAvailable { .. })),
                "{cmd}"
            );
        }
    }

    #[test]
    fn blocking_stream_reads_are_refused() {
        assert!(run(&["XREAD", "COUNT", "1", "STREAMS", "s", "0"], Access::ReadOnly).is_ok());
        assert!(run(&["xread", "block", "0", "STREAMS", "s", "$"], Access::ReadWrite).is_err());
        assert!(
            run(&["XREADGROUP", "GROUP", "g", "c", "BLOCK", "5", "STREAMS", "s", ">"], Access::ReadWrite)
                .is_err()
        );
        // A stream *named* BLOCK after STREAMS does not make the read blocking.
        assert!(run(&["XREAD", "STREAMS", "BLOCK", "0"], Access::ReadWrite).is_ok());
    }

    #[test]
    fn read_only_tokens_run_reads_only() {
        assert!(run(&["get", "k"], Access::ReadOnly).is_ok());
        assert!(run(&["ping"], Access::ReadOnly).is_ok());
        assert_eq!(
            run(&["set", "k", "v"], Access::ReadOnly).unwrap_err().to_string(),
            "NOPERM this token has no permissions to run the 'set' command"
        );
        assert!(run(&["keys", "*"], Access::ReadOnly).is_err());
        assert!(run(&["NOSUCHCOMMAND"], Access::ReadOnly).is_err());
        assert!(run(&["keys", "*"], Access::ReadWrite).is_ok());
    }

    #[test]
    fn flushing_and_scripts_need_admin() {
        for cmd in ["flushall", "FLUSHDB", "eval", "evalsha", "script", "function", "fcall"] {
            assert!(run(&[cmd, "x"], Access::Admin).is_ok(), "{cmd}");
            assert!(
                matches!(run(&[cmd, "x"], Access::ReadWrite), Err(Refusal::NoPermission { .. })),
                "{cmd}"
            );
            assert!(run(&[cmd, "x"], Access::ReadOnly).is_err(), "{cmd}");
        }
        // Read-only scripts cannot write (Redis enforces it), so they stay open.
        assert!(run(&["EVAL_RO", "return 1", "0"], Access::ReadWrite).is_ok());
        assert!(run(&["FCALL_RO", "f", "0"], Access::ReadOnly).is_ok());
    }
}
