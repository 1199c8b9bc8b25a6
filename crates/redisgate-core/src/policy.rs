//! Which commands may pass through the gateway (PROTOCOL.md §2 and §10).
//!
//! Every command, whatever form it came in (path, body, pipeline, multi-exec), goes through
//! [`check`] before anything is sent to Redis. The gateway shares one multiplexed connection
//! per backend among all requests, so a command that changes or pins connection state
//! (SELECT, AUTH, CLIENT, MULTI, a blocking pop, SUBSCRIBE ...) would corrupt every other
//! request on that connection: those are refused here and never reach Redis.
//!
//! The classes of all commands are in [`crate::catalog`]; this module holds the rules.
//!
//! Commands the catalog does not know are refused, with Redis' own `ERR unknown command` text.
//! Forwarding them as "may write" (as this gateway once did) lets every command a newer backend
//! adds through to every read-write token unreviewed — a new blocking or admin command would
//! reach the shared connection the day the backend is upgraded. Refusing costs nothing a client
//! can rely on: to a client a name the gateway does not know and one the backend does not know
//! answer alike (`ERR unknown command ...`, which SDKs surface as a Redis error), so the README's
//! promise that missing commands come back as Redis' `ERR unknown command` still holds. The
//! catalog lists the commands the Upstash SDKs send that plain Redis 7.0 lacks (hash-field TTLs,
//! `HGETEX`, `JSON.*`), so those still reach a backend that has them.

pub use crate::catalog::Class;
use crate::catalog::{self, BLOCKING, BLOCKING_FLAG, NOSCRIPT};
use crate::command::Command;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Every command that is safe on a shared connection ("Standard" token in Upstash;
    /// standalone tokens and admin-scoped API keys).
    Admin,
    /// Like `Admin` without the gated commands (flushing, script and function management).
    /// Runs scripts, as Upstash's standard token does (@upstash/ratelimit runs EVALSHA).
    ReadWrite,
    /// Read commands only, minus keyspace-wide scans and scripts ("Read Only" token in Upstash).
    ReadOnly,
}

/// Why a command was refused. The text keeps Redis' error-code style.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("ERR command '{command}' is not available over REST: {reason}")]
    NotAvailable { command: String, reason: &'static str },
    #[error("NOPERM this token has no permissions to run the '{command}' command")]
    NoPermission { command: String },
    /// A name the catalog does not have, in Redis' own words (see the module doc).
    #[error("ERR unknown command '{command}'")]
    UnknownCommand { command: String },
    /// A known command with a subcommand the catalog does not have, in Redis' own words.
    #[error("ERR unknown subcommand '{sub}'. Try {command} HELP.")]
    UnknownSubcommand { command: &'static str, sub: String },
}

const UNKNOWN: &str = "RedisGate does not know this command";

/// The class of a command name (upper case). For a command whose class depends on its
/// subcommand it is the strictest of them (`SCRIPT` is refused because `SCRIPT DEBUG` is);
/// [`check`] looks at the subcommand. A name the catalog lacks is refused.
pub fn class(name: &str) -> Class {
    catalog::find(name).map_or(Class::Refused(UNKNOWN), |s| s.class)
}

/// The class of `name` (upper case) called with subcommand `sub` (any case).
pub fn class_of(name: &str, sub: Option<&[u8]>) -> Class {
    catalog::resolve(name, sub).map_or(Class::Refused(UNKNOWN), |s| s.class)
}

/// Checks one command against the gateway's rules and the token's access.
pub fn check(cmd: &Command, access: Access) -> Result<(), Refusal> {
    let parent = cmd.spec().ok_or_else(|| Refusal::UnknownCommand { command: shown(&cmd.parts()[0]) })?;
    let name = parent.name;
    let (spec, sub) = match cmd.args().first() {
        Some(sub) if !parent.subcommands.is_empty() => match parent.subcommand(sub) {
            Some(spec) => (spec, Some(spec.name)),
            // CLIENT, CONFIG ...: refused whatever follows, a future subcommand too.
            None if parent.subcommands.iter().all(|s| matches!(s.class, Class::Refused(_))) => (parent, None),
            None => return Err(Refusal::UnknownSubcommand { command: parent.name, sub: shown(sub) }),
        },
        _ => (parent, None),
    };
    let class = match spec.class {
        Class::Refused(_) => spec.class,
        _ if spec.has(BLOCKING_FLAG) && blocks(cmd) => Class::Refused(BLOCKING),
        c => c,
    };
    if let Class::Refused(reason) = class {
        let command = sub.map_or_else(|| name.to_owned(), |sub| format!("{name} {sub}"));
        return Err(Refusal::NotAvailable { command, reason });
    }
    if permits(class, access) {
        return Ok(());
    }
    // Lower case, a subcommand after `|`: as Redis' own ACL errors name it.
    let command = sub.map_or_else(|| name.to_owned(), |sub| format!("{name}|{sub}"));
    Err(Refusal::NoPermission { command: command.to_ascii_lowercase() })
}

/// Whether `access` may run a command of `class` (refused classes: nobody).
fn permits(class: Class, access: Access) -> bool {
    match (class, access) {
        (Class::Refused(_), _) => false,
        (Class::Read, _) | (_, Access::Admin) => true,
        (Class::ExpensiveRead | Class::Write | Class::Script, Access::ReadWrite) => true,
        (Class::Gated, Access::ReadWrite) | (_, Access::ReadOnly) => false,
    }
}

/// Whether a script run under `access` may call `name` (upper case) with subcommand `sub`
/// (upper case; `None` for a command without subcommands). The per-scope Redis ACL users that
/// scripts run as are generated from this (over [`catalog::entries`]), so a script can do
/// no more than its key could do directly:
/// - read-only keys run no scripts at all, so nothing is allowed for them;
/// - refused commands, unknown ones and scripts themselves are never allowed (a script
///   calling SELECT or CLIENT would change the shared connection's state just the same;
///   Redis refuses scripts within scripts anyway);
/// - gated commands only for admin keys, as outside scripts;
/// - commands Redis flags `noscript` are never allowed (Redis refuses them in scripts).
///
/// Blocking commands do not block inside a script, but they stay refused: the ACL is a list of
/// what a key may do, and the same key may not run them directly.
pub fn allowed_in_script(name: &str, sub: Option<&str>, access: Access) -> bool {
    if access == Access::ReadOnly {
        return false;
    }
    let Ok(spec) = catalog::resolve(name, sub.map(str::as_bytes)) else { return false };
    !spec.has(NOSCRIPT) && !matches!(spec.class, Class::Script) && permits(spec.class, access)
}

/// Blocking commands refused in [`check`] whatever their arguments, except those whose grammar
/// says when they block.
fn blocks(cmd: &Command) -> bool {
    match cmd.name() {
        "XREAD" => stream_read_blocks(cmd.args(), false),
        "XREADGROUP" => stream_read_blocks(cmd.args(), true),
        // WAIT, BLPOP ... are refused by class already; anything else Redis flags `blocking`
        // has no grammar here, so it is taken to block.
        _ => true,
    }
}

/// Whether XREAD (`group` false) or XREADGROUP options ask to block, walked exactly as Redis'
/// own parser (`xreadCommand` in t_stream.c) walks them:
///
/// ```text
/// XREAD      [COUNT n] [BLOCK ms] STREAMS key.. id..
/// XREADGROUP GROUP g c [COUNT n] [BLOCK ms] [NOACK] STREAMS key.. id..
/// ```
/// Options come in any order, each keyword followed by its values, so a group or consumer
/// named `STREAMS` or `BLOCK` is a value, not a keyword: `XREADGROUP GROUP g STREAMS BLOCK 0
/// STREAMS s >` blocks (consumer `STREAMS`). A keyword is one only with its values after it, as
/// in Redis; everything after STREAMS is keys and ids. A token that is no option we know is
/// taken to block: Redis 7 answers it with a syntax error, but a newer Redis may have an option
/// there (8.4 adds `CLAIM` to XREADGROUP) with BLOCK after it, and a refusal is the safe guess.
pub fn stream_read_blocks(args: &[Vec<u8>], group: bool) -> bool {
    let is = |a: &[u8], word: &str| a.eq_ignore_ascii_case(word.as_bytes());
    let mut i = 0;
    while i < args.len() {
        let more = args.len() - i - 1;
        let a = &args[i];
        if is(a, "BLOCK") && more >= 1 {
            return true;
        } else if is(a, "STREAMS") && more >= 1 {
            return false;
        } else if is(a, "COUNT") && more >= 1 {
            i += 1;
        } else if group && is(a, "GROUP") && more >= 2 {
            i += 2;
        } else if !(group && is(a, "NOACK")) {
            return true;
        }
        i += 1;
    }
    // Options ran out before STREAMS: Redis answers a syntax error.
    false
}

/// A client-sent name or subcommand for an error text: lossy UTF-8, at most 128 characters (as
/// Redis shortens it), never the arguments after it (they may be values the client wants kept
/// out of logs).
fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(parts: &[&str], access: Access) -> Result<(), Refusal> {
        check(&Command::from_strs(parts).unwrap(), access)
    }

    const ALL: [Access; 3] = [Access::Admin, Access::ReadWrite, Access::ReadOnly];

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
            "role",
        ] {
            for access in ALL {
                assert!(matches!(run(&[cmd, "x"], access), Err(Refusal::NotAvailable { .. })), "{cmd}");
            }
        }
        assert_eq!(
            run(&["script", "debug", "yes"], Access::Admin).unwrap_err().to_string(),
            "ERR command 'SCRIPT DEBUG' is not available over REST: \
             it changes the state of the shared backend connection"
        );
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
        assert!(
            run(&["XREADGROUP", "GROUP", "BLOCK", "STREAMS", "STREAMS", "s", ">"], Access::ReadWrite).is_ok()
        );
    }

    #[test]
    fn a_consumer_named_streams_does_not_hide_block() {
        // Consumer "STREAMS" of group g, then BLOCK 0: this blocks in Redis.
        let attack = ["XREADGROUP", "GROUP", "g", "STREAMS", "BLOCK", "0", "STREAMS", "s", ">"];
        assert_eq!(
            run(&attack, Access::Admin),
            Err(Refusal::NotAvailable { command: "XREADGROUP".into(), reason: BLOCKING })
        );
        // A group named BLOCK, a consumer named COUNT, then the real BLOCK.
        let attack = ["XREADGROUP", "GROUP", "BLOCK", "COUNT", "NOACK", "BLOCK", "1", "STREAMS", "s", ">"];
        assert!(run(&attack, Access::Admin).is_err());
        // A COUNT whose value is "STREAMS", then BLOCK.
        assert!(
            run(&["XREAD", "COUNT", "STREAMS", "BLOCK", "0", "STREAMS", "s", "0"], Access::Admin).is_err()
        );
        // An option this Redis does not have may come before BLOCK in a newer one.
        assert!(
            run(
                &["XREADGROUP", "GROUP", "g", "c", "CLAIM", "10", "BLOCK", "0", "STREAMS", "s", ">"],
                Access::Admin
            )
            .is_err()
        );
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
        assert!(run(&["keys", "*"], Access::ReadWrite).is_ok());
        assert!(run(&["object", "encoding", "k"], Access::ReadOnly).is_ok());
        assert!(run(&["XINFO", "STREAM", "s"], Access::ReadOnly).is_ok());
        assert!(run(&["MEMORY", "USAGE", "k"], Access::ReadOnly).is_ok());
        assert!(run(&["MEMORY", "PURGE"], Access::Admin).is_err());
    }

    #[test]
    fn unknown_commands_are_refused_in_redis_words() {
        for access in ALL {
            assert_eq!(
                run(&["NoSuchCommand", "secret-value"], access).unwrap_err().to_string(),
                "ERR unknown command 'NoSuchCommand'",
                "the arguments are never echoed"
            );
            assert_eq!(
                run(&["object", "frobnicate", "k"], access).unwrap_err().to_string(),
                "ERR unknown subcommand 'frobnicate'. Try OBJECT HELP."
            );
        }
        assert_eq!(class("NOSUCHCOMMAND"), Class::Refused(UNKNOWN));
    }

    #[test]
    fn scripts_run_with_read_write_and_are_managed_by_admin() {
        for script in [
            &["EVAL", "return 1", "0"][..],
            &["evalsha", "abc", "0"],
            &["EVAL_RO", "return 1", "0"],
            &["EVALSHA_RO", "abc", "0"],
            &["FCALL", "f", "0"],
            &["FCALL_RO", "f", "0"],
            &["SCRIPT", "LOAD", "return 1"],
            &["script", "exists", "abc"],
            &["FUNCTION", "LOAD", "#!lua name=x"],
        ] {
            assert!(run(script, Access::Admin).is_ok(), "{script:?}");
            assert!(run(script, Access::ReadWrite).is_ok(), "{script:?}");
            assert!(
                matches!(run(script, Access::ReadOnly), Err(Refusal::NoPermission { .. })),
                "read-only keys run no script: {script:?}"
            );
        }
        for gated in [
            &["FLUSHALL"][..],
            &["flushdb", "async"],
            &["SCRIPT", "FLUSH"],
            &["SCRIPT", "KILL"],
            &["FUNCTION", "FLUSH"],
            &["function", "delete", "lib"],
            &["FUNCTION", "RESTORE", "x"],
            &["FUNCTION", "KILL"],
        ] {
            assert!(run(gated, Access::Admin).is_ok(), "{gated:?}");
            for access in [Access::ReadWrite, Access::ReadOnly] {
                assert!(matches!(run(gated, access), Err(Refusal::NoPermission { .. })), "{gated:?}");
            }
        }
        assert_eq!(
            run(&["script", "flush"], Access::ReadWrite).unwrap_err().to_string(),
            "NOPERM this token has no permissions to run the 'script|flush' command"
        );
        for read in [&["FUNCTION", "LIST"][..], &["FUNCTION", "DUMP"], &["function", "stats"]] {
            assert!(run(read, Access::ReadOnly).is_ok(), "{read:?}");
        }
    }

    #[test]
    fn what_scripts_may_call_follows_the_scope() {
        use Access::*;
        assert!(allowed_in_script("SET", None, ReadWrite));
        assert!(allowed_in_script("GET", None, Admin));
        assert!(!allowed_in_script("GET", None, ReadOnly), "read-only keys run no scripts");
        assert!(!allowed_in_script("FLUSHALL", None, ReadWrite));
        assert!(allowed_in_script("FLUSHALL", None, Admin));
        assert!(allowed_in_script("KEYS", None, ReadWrite));
        assert!(allowed_in_script("OBJECT", Some("ENCODING"), ReadWrite));
        for never in [("SELECT", None), ("CLIENT", Some("KILL")), ("CONFIG", Some("SET")), ("EVAL", None)] {
            assert!(!allowed_in_script(never.0, never.1, Admin), "{never:?}");
        }
        assert!(!allowed_in_script("SCRIPT", Some("FLUSH"), Admin), "noscript in Redis");
        assert!(!allowed_in_script("BLMPOP", None, Admin), "refused outside scripts");
        assert!(!allowed_in_script("NOSUCHCOMMAND", None, Admin));
        assert!(!allowed_in_script("OBJECT", Some("NOSUCH"), Admin));
    }
}
