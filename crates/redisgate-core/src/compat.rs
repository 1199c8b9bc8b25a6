//! Places where Upstash answers differently from plain Redis, emulated in the gateway
//! (PROTOCOL.md §10). SDK users' code relies on these, so a gateway over real Redis must
//! behave as Upstash does:
//!
//! - `UNLINK` with no keys answers `0` (Redis: wrong number of arguments);
//! - `COPY k k` answers `0` (Redis: "source and destination objects are the same");
//! - `ZRANGE`/`ZRANGESTORE` accept `LIMIT offset count` on a plain rank range (Redis requires
//!   BYSCORE or BYLEX): the limit applies to the ranks selected. This runs as one Lua script,
//!   so it stays atomic and works inside `/multi-exec`;
//! - a script's shebang may name Upstash's own flag (`#!lua flags=allow-key-locking`, which
//!   `@upstash/ratelimit` sends): [`redis_script`] drops the flags Redis does not know, and the
//!   gateway keeps answering to the SHA the client computed ([`script_sha`]).

use redis::Value;

use crate::command::Command;

/// What to do with a command after the Upstash rules are applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Send this command to Redis.
    Forward(Command),
    /// Answer with this value without asking Redis.
    Reply(Value),
}

/// Rank range with LIMIT, resolved against ZCARD inside Redis.
/// KEYS: [dst,] src. ARGV: start, stop, offset, count, then ZRANGE flags (REV, WITHSCORES).
const ZRANGE_LIMIT_LUA: &str = r"
local n = redis.call('ZCARD', KEYS[#KEYS])
local s, e = tonumber(ARGV[1]), tonumber(ARGV[2])
local off, cnt = tonumber(ARGV[3]), tonumber(ARGV[4])
if not (s and e and off and cnt) then
  return redis.error_reply('ERR value is not an integer or out of range')
end
if s < 0 then s = n + s end
if e < 0 then e = n + e end
if s < 0 then s = 0 end
if off < 0 then s = n else s = s + off end
if cnt >= 0 and s + cnt - 1 < e then e = s + cnt - 1 end
if e < s or s >= n then s, e = 1, 0 end
local args
if #KEYS == 2 then args = {'ZRANGESTORE', KEYS[1], KEYS[2], s, e} else args = {'ZRANGE', KEYS[1], s, e} end
for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
return redis.call(unpack(args))
";

/// Applies the Upstash rules to one command.
pub fn plan(cmd: Command) -> Plan {
    match cmd.name() {
        "UNLINK" if cmd.args().is_empty() => Plan::Reply(Value::Int(0)),
        "COPY" if copies_onto_itself(&cmd) => Plan::Reply(Value::Int(0)),
        "ZRANGE" => zrange_limit(&cmd, 1).map_or(Plan::Forward(cmd), Plan::Forward),
        "ZRANGESTORE" => zrange_limit(&cmd, 2).map_or(Plan::Forward(cmd), Plan::Forward),
        _ => Plan::Forward(cmd),
    }
}

fn copies_onto_itself(cmd: &Command) -> bool {
    let a = cmd.args();
    a.len() >= 2 && a[0] == a[1] && !cmd.has_flag("DB")
}

/// `ZRANGE key start stop [REV] LIMIT off cnt [WITHSCORES]` without BYSCORE/BYLEX, rewritten
/// into the Lua script above; `None` when the command is not of that shape.
fn zrange_limit(cmd: &Command, nkeys: usize) -> Option<Command> {
    let a = cmd.args();
    if a.len() < nkeys + 2 || cmd.has_flag("BYSCORE") || cmd.has_flag("BYLEX") {
        return None;
    }
    let opts = &a[nkeys + 2..];
    let at = opts.iter().position(|o| o.eq_ignore_ascii_case(b"LIMIT"))?;
    let (off, cnt) = (opts.get(at + 1)?, opts.get(at + 2)?);
    let mut parts: Vec<Vec<u8>> =
        vec![b"EVAL".to_vec(), ZRANGE_LIMIT_LUA.as_bytes().to_vec(), nkeys.to_string().into_bytes()];
    parts.extend_from_slice(&a[..nkeys + 2]);
    parts.push(off.clone());
    parts.push(cnt.clone());
    parts.extend(opts.iter().enumerate().filter(|(i, _)| !(at..at + 3).contains(i)).map(|(_, o)| o.clone()));
    Command::new(parts)
}

/// The flags a Redis 7 script shebang may name. Upstash adds its own (`allow-key-locking`),
/// which plain Redis refuses with "Unexpected flag in script shebang".
const REDIS_SCRIPT_FLAGS: [&str; 5] =
    ["no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys"];

/// `script` with the shebang flags Redis does not know dropped; `None` when it names none
/// (the script is sent as it is). Only the first line changes:
///
/// ```text
/// #!lua flags=allow-key-locking,no-writes   ->   #!lua flags=no-writes
/// #!lua flags=allow-key-locking             ->   #!lua
/// ```
pub fn redis_script(script: &[u8]) -> Option<Vec<u8>> {
    let end = script.iter().position(|b| *b == b'\n').unwrap_or(script.len());
    let line = std::str::from_utf8(&script[..end]).ok()?;
    if !line.starts_with("#!lua") {
        return None;
    }
    let mut changed = false;
    let parts: Vec<String> = line
        .split(' ')
        .filter_map(|part| {
            let Some(flags) = part.strip_prefix("flags=") else { return Some(part.to_owned()) };
            let known: Vec<&str> = flags.split(',').filter(|f| REDIS_SCRIPT_FLAGS.contains(f)).collect();
            changed |= known.len() != flags.split(',').filter(|f| !f.is_empty()).count();
            (!known.is_empty()).then(|| format!("flags={}", known.join(",")))
        })
        .collect();
    if !changed {
        return None;
    }
    let mut out = parts.join(" ").into_bytes();
    out.extend_from_slice(&script[end..]);
    Some(out)
}

/// The SHA-1 Redis (and a client computing EVALSHA's argument) gives a script: lower-case hex.
pub fn script_sha(script: &[u8]) -> String {
    use sha1::Digest as _;
    hex::encode(sha1::Sha1::digest(script))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(parts: &[&str]) -> Plan {
        plan(Command::from_strs(parts).unwrap())
    }

    #[test]
    fn unlink_without_keys_is_zero() {
        assert_eq!(p(&["unlink"]), Plan::Reply(Value::Int(0)));
        assert!(matches!(p(&["unlink", "a"]), Plan::Forward(_)));
    }

    #[test]
    fn copy_onto_itself_is_zero() {
        assert_eq!(p(&["COPY", "k", "k"]), Plan::Reply(Value::Int(0)));
        assert!(matches!(p(&["COPY", "k", "k", "DB", "1"]), Plan::Forward(_)));
        assert!(matches!(p(&["COPY", "k", "j"]), Plan::Forward(_)));
    }

    #[test]
    fn zrange_limit_becomes_a_script() {
        let Plan::Forward(c) = p(&["zrange", "z", "0", "-1", "REV", "limit", "1", "2", "WITHSCORES"]) else {
            panic!()
        };
        assert_eq!(c.name(), "EVAL");
        let tail: Vec<&[u8]> = c.args()[1..].iter().map(Vec::as_slice).collect();
        assert_eq!(tail, [&b"1"[..], b"z", b"0", b"-1", b"1", b"2", b"REV", b"WITHSCORES"]);
        let Plan::Forward(c) = p(&["ZRANGESTORE", "d", "z", "0", "2", "LIMIT", "1", "1"]) else { panic!() };
        assert_eq!(c.args()[1], b"2");
        for untouched in
            [&["zrange", "z", "0", "1"][..], &["zrange", "z", "0", "5", "BYSCORE", "LIMIT", "0", "1"]]
        {
            assert_eq!(p(untouched), Plan::Forward(Command::from_strs(untouched).unwrap()));
        }
    }

    #[test]
    fn upstash_shebang_flags_are_dropped_and_the_rest_kept() {
        let r = |s: &str| redis_script(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(r("#!lua flags=allow-key-locking\nreturn 1").as_deref(), Some("#!lua\nreturn 1"));
        assert_eq!(
            r("#!lua flags=allow-key-locking,no-writes\nreturn 1").as_deref(),
            Some("#!lua flags=no-writes\nreturn 1")
        );
        assert_eq!(r("#!lua flags=no-writes\nreturn 1"), None, "nothing to change");
        assert_eq!(r("return 1"), None, "no shebang");
        assert_eq!(r("#!lua name=lib\nredis.register_function('f', f)"), None, "function libraries");
        assert_eq!(r("#!lua flags=allow-key-locking").as_deref(), Some("#!lua"));
    }

    #[test]
    fn script_shas_are_redis_ones() {
        // Redis: SCRIPT LOAD "return 1" -> e0e1f9fabfc9d4800c877a703b823ac0578ff8db
        assert_eq!(script_sha(b"return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}
