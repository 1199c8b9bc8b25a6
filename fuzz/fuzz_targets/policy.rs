//! The command policy on any command: total, deterministic, monotone in the access, and never
//! allowing in a script what the scope may not run. The input is parts separated by 0 bytes;
//! a first byte below 0x80 puts a catalog command (and one of its subcommands) in front, so
//! the fuzzer spends its time on known names rather than guessing them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redisgate_core::catalog::COMMANDS;
use redisgate_core::command::Command;
use redisgate_core::policy::{Access, allowed_in_script, check, stream_read_blocks};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let mut parts: Vec<Vec<u8>> = Vec::new();
    if pick < 0x80 {
        let c = &COMMANDS[usize::from(pick) * COMMANDS.len() / 0x80];
        parts.push(c.name.as_bytes().to_vec());
        if let Some(s) = rest.first().filter(|_| !c.subcommands.is_empty()) {
            parts.push(c.subcommands[usize::from(*s) % c.subcommands.len()].name.as_bytes().to_vec());
        }
    }
    parts.extend(rest.split(|&b| b == 0).map(<[u8]>::to_vec));
    let Some(cmd) = Command::new(parts) else { return };
    let [admin, rw, ro] = [Access::Admin, Access::ReadWrite, Access::ReadOnly].map(|a| check(&cmd, a));
    assert_eq!(ro, check(&cmd, Access::ReadOnly), "deterministic");
    assert!(ro.is_err() || rw.is_ok(), "read-only may, read-write may not: {cmd:?}");
    assert!(rw.is_err() || admin.is_ok(), "read-write may, admin may not: {cmd:?}");
    // Every refusal is a Redis-style error line.
    for r in [&admin, &rw, &ro] {
        if let Err(e) = r {
            let text = e.to_string();
            assert!(text.starts_with("ERR ") || text.starts_with("NOPERM "), "{text}");
        }
    }
    let sub = cmd.args().first().map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
    let script = |a| allowed_in_script(cmd.name(), sub.as_deref(), a);
    assert!(!script(Access::ReadOnly));
    assert!(!script(Access::ReadWrite) || script(Access::Admin));
    let _ = stream_read_blocks(cmd.args(), cmd.name() == "XREADGROUP");
});
