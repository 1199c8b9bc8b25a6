//! Upstash's script dialect over plain Redis (PROTOCOL.md §10). Upstash takes a shebang flag
//! of its own, `#!lua flags=allow-key-locking`, which `@upstash/ratelimit` sends and plain
//! Redis refuses ("Unexpected flag in script shebang"). Such a script goes to Redis without
//! the flags Redis does not know ([`compat::redis_script`]), so Redis knows it by another SHA;
//! clients keep the SHA they computed, so:
//!
//! ```text
//! EVAL / EVAL_RO <script> …     the script rewritten; its SHA pair remembered
//! SCRIPT LOAD <script>          the same, and the answer is the client's SHA, not Redis'
//! EVALSHA / EVALSHA_RO <sha> …  a remembered client SHA is sent as Redis' one
//! SCRIPT EXISTS <sha> …         likewise
//! ```
//!
//! The pairs are a pure function of the script text, so one table serves every instance; an
//! EVALSHA of a pair this replica has not seen gets Redis' NOSCRIPT, and the client's fallback
//! (SCRIPT LOAD or EVAL, as the SDKs do) teaches it the pair. The table is bounded: when full it
//! starts over, which costs one NOSCRIPT round trip per script at most.

use std::collections::HashMap;
use std::sync::Mutex;

use redis::Value;
use redisgate_core::command::Command;
use redisgate_core::compat;

/// Most SHA pairs remembered: a tenant can only add pairs of scripts it sent (each client SHA
/// is computed here from the text), but it could send many.
const MAX_PAIRS: usize = 10_000;

/// The client's SHA → Redis' SHA, for scripts sent rewritten.
#[derive(Default)]
pub struct Scripts {
    pairs: Mutex<HashMap<String, String>>,
}

/// The SHA a `SCRIPT LOAD` answer must carry instead of Redis' (the client's).
pub struct ClientSha(String);

impl Scripts {
    /// `cmd` as it goes to Redis, and what to put back in its answer.
    pub fn prepare(&self, cmd: Command) -> (Command, Option<ClientSha>) {
        let (script_at, load) = match cmd.name() {
            "EVAL" | "EVAL_RO" => (1, false),
            "SCRIPT" if cmd.arg_is(0, "LOAD") => (2, true),
            "EVALSHA" | "EVALSHA_RO" => return (self.translate(cmd, 1..2), None),
            "SCRIPT" if cmd.arg_is(0, "EXISTS") => {
                let n = cmd.parts().len();
                return (self.translate(cmd, 2..n), None);
            }
            _ => return (cmd, None),
        };
        let Some(rewritten) = cmd.parts().get(script_at).and_then(|s| compat::redis_script(s)) else {
            return (cmd, None);
        };
        let client = compat::script_sha(&cmd.parts()[script_at]);
        self.remember(client.clone(), compat::script_sha(&rewritten));
        let mut parts = cmd.parts().to_vec();
        parts[script_at] = rewritten;
        let cmd = Command::new(parts).expect("a command keeps its name");
        (cmd, load.then_some(ClientSha(client)))
    }

    fn remember(&self, client: String, redis: String) {
        let mut pairs = self.pairs.lock().expect("script pairs lock");
        if pairs.len() >= MAX_PAIRS {
            pairs.clear();
        }
        pairs.insert(client, redis);
    }

    /// `cmd` with the client SHAs among `at` replaced by Redis' ones.
    fn translate(&self, cmd: Command, at: std::ops::Range<usize>) -> Command {
        let pairs = self.pairs.lock().expect("script pairs lock");
        if pairs.is_empty() {
            return cmd;
        }
        let found: Vec<(usize, String)> = cmd.parts()
            [at.start.min(cmd.parts().len())..at.end.min(cmd.parts().len())]
            .iter()
            .enumerate()
            .filter_map(|(i, sha)| {
                let sha = std::str::from_utf8(sha).ok()?.to_ascii_lowercase();
                pairs.get(&sha).map(|redis| (at.start + i, redis.clone()))
            })
            .collect();
        drop(pairs);
        if found.is_empty() {
            return cmd;
        }
        let mut parts = cmd.parts().to_vec();
        for (i, redis) in found {
            parts[i] = redis.into_bytes();
        }
        Command::new(parts).expect("a command keeps its name")
    }
}

impl ClientSha {
    /// Puts the client's SHA in a successful `SCRIPT LOAD` answer; errors pass unchanged.
    pub fn apply(self, reply: &mut Value) {
        if matches!(reply, Value::BulkString(_) | Value::SimpleString(_)) {
            *reply = Value::BulkString(self.0.into_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(parts: &[&str]) -> Command {
        Command::from_strs(parts).unwrap()
    }

    fn text(c: &Command, i: usize) -> String {
        String::from_utf8(c.parts()[i].clone()).unwrap()
    }

    #[test]
    fn upstash_scripts_keep_the_clients_sha() {
        let scripts = Scripts::default();
        let body = "#!lua flags=allow-key-locking\nreturn 1";
        let client = compat::script_sha(body.as_bytes());
        let redis = compat::script_sha(b"#!lua\nreturn 1");
        // Before the pair is known, EVALSHA goes as it is (Redis answers NOSCRIPT).
        let (c, _) = scripts.prepare(cmd(&["EVALSHA", &client, "0"]));
        assert_eq!(text(&c, 1), client);
        // SCRIPT LOAD sends the rewritten script and answers the client's SHA.
        let (c, fix) = scripts.prepare(cmd(&["SCRIPT", "LOAD", body]));
        assert_eq!(text(&c, 2), "#!lua\nreturn 1");
        let mut reply = Value::BulkString(redis.clone().into_bytes());
        fix.expect("a load is answered with the client's SHA").apply(&mut reply);
        assert_eq!(reply, Value::BulkString(client.clone().into_bytes()));
        // Then EVALSHA and SCRIPT EXISTS of the client's SHA reach Redis' one.
        let (c, _) = scripts.prepare(cmd(&["evalsha", &client.to_uppercase(), "0"]));
        assert_eq!(text(&c, 1), redis);
        let (c, _) = scripts.prepare(cmd(&["SCRIPT", "EXISTS", "abc", &client]));
        assert_eq!((text(&c, 2), text(&c, 3)), ("abc".to_owned(), redis.clone()));
        // Anything but a SHA (an error reply) is left alone; other scripts pass untouched.
        let (_, fix) = scripts.prepare(cmd(&["SCRIPT", "LOAD", body]));
        let mut other = Value::Nil;
        fix.unwrap().apply(&mut other);
        assert_eq!(other, Value::Nil);
        let (c, fix) = scripts.prepare(cmd(&["EVAL", "return 1", "0"]));
        assert!(fix.is_none());
        assert_eq!(text(&c, 1), "return 1");
        let (c, _) = scripts.prepare(cmd(&["GET", "k"]));
        assert_eq!(c, cmd(&["GET", "k"]));
    }
}
