//! Places where Upstash answers differently from plain Redis, emulated in the gateway
//! (PROTOCOL.md §10). SDK users' code relies on these, so a gateway over real Redis must
//! behave as Upstash does:
//!
//! - `UNLINK` with no keys answers `0` (Redis: wrong number of arguments);
//! - `COPY k k` answers `0` (Redis: "source and destination objects are the same");
//! - `ZRANGE`/`ZRANGESTORE` accept `LIMIT offset count` on a plain rank range (Redis requires
//!   BYSCORE or BYLEX): the limit applies to the ranks selected. This runs as one Lua script,
//!   so it stays atomic and works inside `/multi-exec`.

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
}
