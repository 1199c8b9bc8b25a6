//! `request::parse` on any input: the JSON body form, the path form with a query, and the
//! `/pipeline` and `/multi-exec` batches. It must never panic, and what it returns must keep
//! the parser's promises (a command has a name; a batch respects the limit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use redisgate_core::request::{ParseLimits, Request, parse};

const LIMITS: ParseLimits = ParseLimits { max_batch_commands: 8 };

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else { return };
    // The path form: path and query are the text before the first 0xFF, the body after it.
    let (head, body) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let text = String::from_utf8_lossy(head);
    let parsed = match form % 4 {
        0 => parse("/", None, rest, LIMITS),
        1 => parse("/pipeline", None, rest, LIMITS),
        2 => parse("/multi-exec", None, rest, LIMITS),
        _ => {
            let (path, query) = text.split_once('?').map_or((&*text, None), |(p, q)| (p, Some(q)));
            parse(path, query, body, LIMITS)
        }
    };
    if let Ok(req) = parsed {
        match &req {
            Request::Pipeline(cmds) | Request::Transaction(cmds) => {
                assert!(cmds.len() <= LIMITS.max_batch_commands)
            }
            _ => {}
        }
        assert!(req.commands().iter().all(|c| !c.parts().is_empty()), "a command has its name");
    }
});
