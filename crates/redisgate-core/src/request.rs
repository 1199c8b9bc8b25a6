//! The Upstash REST request forms, parsed (PROTOCOL.md §1, §3, §5, §6, §9).
//!
//! ```text
//! POST /                 ["SET","k","v"]           -> Single
//! GET  /set/k/v?EX=100                             -> Single  SET k v EX 100
//! POST /set/k            <raw body>                -> Single  SET k <raw body>
//! POST /pipeline         [["SET","k","v"],["GET","k"]] -> Pipeline
//! POST /multi-exec       [["INCR","n"],["GET","n"]]    -> Transaction
//! POST /subscribe/a/b    (body ignored)            -> Subscribe [a, b]
//! POST /psubscribe/p*    (body ignored)            -> PSubscribe [p*]
//! POST /ssubscribe/a     (body ignored)            -> SSubscribe [a]
//! POST /monitor          (body ignored)            -> Monitor
//! ```

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::command::Command;

/// What a data-plane request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Single(Command),
    Pipeline(Vec<Command>),
    Transaction(Vec<Command>),
    Subscribe(Vec<Vec<u8>>),
    PSubscribe(Vec<Vec<u8>>),
    /// Sharded pub/sub: SSUBSCRIBE on the server owning the channels' slot.
    SSubscribe(Vec<Vec<u8>>),
    Monitor,
}

impl Request {
    /// Every command the request would run, for policy checks.
    pub fn commands(&self) -> &[Command] {
        match self {
            Request::Single(c) => std::slice::from_ref(c),
            Request::Pipeline(cs) | Request::Transaction(cs) => cs,
            _ => &[],
        }
    }
}

/// Why a request could not be parsed. Each message starts with `ERR`, as Redis' own do,
/// because SDKs show it to users next to Redis errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("ERR failed to parse command: the body must be a JSON array such as [\"SET\",\"key\",\"value\"]")]
    NotAnArray,
    #[error("ERR empty command")]
    EmptyCommand,
    #[error(
        "ERR failed to parse command: argument {index} is {kind}; only strings, numbers and booleans are allowed"
    )]
    BadArgument { index: usize, kind: &'static str },
    #[error(
        "ERR failed to parse {what}: the body must be a JSON array of command arrays such as [[\"SET\",\"k\",\"v\"],[\"GET\",\"k\"]]"
    )]
    NotAnArrayOfArrays { what: &'static str },
    #[error("ERR failed to parse {what}: command {index} is empty")]
    EmptyInBatch { what: &'static str, index: usize },
    #[error(
        "ERR failed to parse {what}: command {index}, argument {arg} is {kind}; only strings, numbers and booleans are allowed"
    )]
    BadArgumentInBatch { what: &'static str, index: usize, arg: usize, kind: &'static str },
    #[error("ERR {what} allows at most {max} commands, got {got}")]
    TooManyCommands { what: &'static str, max: usize, got: usize },
    #[error("ERR {endpoint} takes no path arguments")]
    UnexpectedPathArgs { endpoint: &'static str },
    #[error("ERR {endpoint} needs at least one channel or pattern in the path")]
    NoChannels { endpoint: &'static str },
}

/// Limits applied while parsing, so that oversized batches are refused before any work.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_batch_commands: usize,
}

/// Parses one request. `path` is the raw (still percent-encoded) path below the protocol's
/// base URL, `query` the raw query string, `body` the raw body.
///
/// Empty path segments are skipped, so `//get/k` and `/get/k/` work like `/get/k`.
pub fn parse(
    path: &str,
    query: Option<&str>,
    body: &[u8],
    limits: ParseLimits,
) -> Result<Request, ParseError> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let Some(head) = segments.next() else {
        return parse_body_command(body).map(Request::Single);
    };
    let reserved = |name: &str| head.eq_ignore_ascii_case(name);
    if reserved("pipeline") || reserved("multi-exec") {
        let what = if reserved("pipeline") { "pipeline" } else { "multi-exec" };
        if segments.next().is_some() {
            return Err(ParseError::UnexpectedPathArgs { endpoint: what });
        }
        let cmds = parse_batch(body, what, limits.max_batch_commands)?;
        return Ok(if what == "pipeline" { Request::Pipeline(cmds) } else { Request::Transaction(cmds) });
    }
    if reserved("monitor") {
        if segments.next().is_some() {
            return Err(ParseError::UnexpectedPathArgs { endpoint: "/monitor" });
        }
        return Ok(Request::Monitor);
    }
    type Stream = (&'static str, &'static str, fn(Vec<Vec<u8>>) -> Request);
    let streams: [Stream; 3] = [
        ("subscribe", "/subscribe", Request::Subscribe),
        ("psubscribe", "/psubscribe", Request::PSubscribe),
        ("ssubscribe", "/ssubscribe", Request::SSubscribe),
    ];
    if let Some((_, endpoint, build)) = streams.iter().find(|(name, ..)| reserved(name)) {
        // The body is ignored on purpose: the JS SDK always sends `[]` (PROTOCOL.md §3.2).
        let names: Vec<Vec<u8>> = segments.map(percent_decode).collect();
        if names.is_empty() {
            return Err(ParseError::NoChannels { endpoint });
        }
        return Ok(build(names));
    }

    // Path form: segments, then the body as one argument, then the query parameters.
    let mut args: Vec<Vec<u8>> = std::iter::once(head).chain(segments).map(percent_decode).collect();
    if !body.is_empty() {
        args.push(body.to_vec());
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        if k == "_token" {
            continue;
        }
        args.push(percent_decode(k));
        if let Some(v) = v {
            args.push(percent_decode(v));
        }
    }
    Ok(Request::Single(Command::new(args).expect("path form has a head segment")))
}

/// Percent-decodes one path segment or query component to bytes; `+` stays `+`.
pub fn percent_decode(s: &str) -> Vec<u8> {
    // Most segments have nothing escaped: one memchr instead of a byte-by-byte collect.
    if !s.contains('%') {
        return s.as_bytes().to_vec();
    }
    percent_encoding::percent_decode(s.as_bytes()).collect()
}

/// `["SET","k","v"]` -> `SET k v`.
pub fn parse_body_command(body: &[u8]) -> Result<Command, ParseError> {
    plain::command(body).map_or_else(|| serde_command(body), Ok)
}

fn serde_command(body: &[u8]) -> Result<Command, ParseError> {
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|_| ParseError::NotAnArray)?;
    let args = items
        .iter()
        .enumerate()
        .map(|(i, raw)| json_arg(raw).map_err(|kind| ParseError::BadArgument { index: i, kind }))
        .collect::<Result<Vec<_>, _>>()?;
    Command::new(args).ok_or(ParseError::EmptyCommand)
}

fn parse_batch(body: &[u8], what: &'static str, max: usize) -> Result<Vec<Command>, ParseError> {
    plain::batch(body, max).map_or_else(|| serde_batch(body, what, max), Ok)
}

fn serde_batch(body: &[u8], what: &'static str, max: usize) -> Result<Vec<Command>, ParseError> {
    // One pass of serde_json; a malformed batch is looked at again only to say what is wrong
    // with it.
    let items: Vec<Vec<&RawValue>> = match serde_json::from_slice(body) {
        Ok(items) => items,
        Err(_) => {
            let items: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(|_| ParseError::NotAnArrayOfArrays { what })?;
            if items.len() > max {
                return Err(ParseError::TooManyCommands { what, max, got: items.len() });
            }
            return Err(ParseError::NotAnArrayOfArrays { what });
        }
    };
    if items.len() > max {
        return Err(ParseError::TooManyCommands { what, max, got: items.len() });
    }
    items
        .iter()
        .enumerate()
        .map(|(index, parts)| {
            let args = parts
                .iter()
                .enumerate()
                .map(|(arg, p)| {
                    json_arg(p).map_err(|kind| ParseError::BadArgumentInBatch { what, index, arg, kind })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Command::new(args).ok_or(ParseError::EmptyInBatch { what, index })
        })
        .collect()
}

/// One JSON element as a Redis argument. Numbers and booleans keep their JSON text exactly as
/// received (`1e21` stays `1e21`), so nothing is reformatted on the way to Redis.
fn json_arg(raw: &RawValue) -> Result<Vec<u8>, &'static str> {
    let text = raw.get();
    match text.as_bytes().first() {
        // Without a backslash the text between the quotes is the string itself: JSON has no
        // other escapes, and a raw value is valid JSON, so it holds no control characters.
        Some(b'"') if !text.contains('\\') && text.len() >= 2 => {
            Ok(text.as_bytes()[1..text.len() - 1].to_vec())
        }
        Some(b'"') => {
            let s: Cow<'_, str> = serde_json::from_str(text).map_err(|_| "an invalid string")?;
            Ok(s.into_owned().into_bytes())
        }
        Some(b'n') => Err("null"),
        Some(b'[') => Err("an array"),
        Some(b'{') => Err("an object"),
        _ => Ok(text.as_bytes().to_vec()),
    }
}

/// The token of an `Authorization` header value `Bearer <token>` (the scheme in any case,
/// surrounding spaces trimmed); shared by the data plane, the management API's sessions and
/// `/health`.
pub fn bearer_token(value: &[u8]) -> Option<&str> {
    let (scheme, token) = value.split_at_checked(b"bearer ".len())?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    std::str::from_utf8(token).ok().map(str::trim)
}

/// The common body read by hand, in one pass, straight into each command's arguments:
/// arguments that are strings without escapes, numbers, `true` or `false`. Anything else
/// (an escape, `null`, an empty command, too many commands, a syntax error) is `None`, and
/// serde_json reads the body instead: it gives the same commands for what both accept, and
/// the precise error for the rest. (serde_json through `RawValue` was a third of a
/// `/pipeline` command's instructions: a vector of raw values per command, a UTF-8 check and
/// a copy per argument.)
mod plain {
    use crate::command::Command;

    pub fn batch(body: &[u8], max: usize) -> Option<Vec<Command>> {
        let mut r = Reader { b: body, i: 0 };
        r.ws();
        r.eat(b'[')?;
        r.ws();
        let mut cmds = Vec::new();
        if !r.eat_if(b']') {
            loop {
                if cmds.len() == max {
                    return None;
                }
                let cmd = r.command(cmds.last())?;
                cmds.push(cmd);
                r.ws();
                match r.next()? {
                    b',' => r.ws(),
                    b']' => break,
                    _ => return None,
                }
            }
        }
        r.end().then_some(cmds)
    }

    pub fn command(body: &[u8]) -> Option<Command> {
        let mut r = Reader { b: body, i: 0 };
        r.ws();
        let cmd = r.command(None)?;
        r.end().then_some(cmd)
    }

    struct Reader<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl Reader<'_> {
        fn next(&mut self) -> Option<u8> {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            Some(c)
        }

        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn eat(&mut self, c: u8) -> Option<()> {
            self.eat_if(c).then_some(())
        }

        fn eat_if(&mut self, c: u8) -> bool {
            let hit = self.peek() == Some(c);
            self.i += usize::from(hit);
            hit
        }

        /// JSON's whitespace.
        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.i += 1;
            }
        }

        fn end(&mut self) -> bool {
            self.ws();
            self.i == self.b.len()
        }

        /// `[arg, …]`, at least one argument; named as `prev` if it has the same name.
        fn command(&mut self, prev: Option<&Command>) -> Option<Command> {
            self.eat(b'[')?;
            self.ws();
            let mut args = Vec::new();
            loop {
                args.push(self.arg()?.to_vec());
                self.ws();
                match self.next()? {
                    b',' => self.ws(),
                    b']' => break,
                    _ => return None,
                }
            }
            Command::new_like(args, prev)
        }

        /// One argument's bytes: a string's text, a number's or a boolean's as written.
        fn arg(&mut self) -> Option<&[u8]> {
            let start = self.i;
            match self.peek()? {
                b'"' => {
                    let rest = &self.b[self.i + 1..];
                    let end = rest.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
                    // Escapes are serde_json's; control characters are invalid JSON.
                    if rest[end] != b'"' {
                        return None;
                    }
                    self.i += end + 2;
                    let s = &rest[..end];
                    (s.is_ascii() || std::str::from_utf8(s).is_ok()).then_some(s)
                }
                b't' => self.word(b"true"),
                b'f' => self.word(b"false"),
                _ => {
                    self.number()?;
                    Some(&self.b[start..self.i])
                }
            }
        }

        fn word(&mut self, w: &'static [u8]) -> Option<&'static [u8]> {
            let hit = self.b[self.i..].starts_with(w);
            self.i += w.len();
            hit.then_some(w)
        }

        /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
        fn number(&mut self) -> Option<()> {
            self.eat_if(b'-');
            match self.next()? {
                b'0' => {}
                b'1'..=b'9' => self.digits(),
                _ => return None,
            }
            if self.eat_if(b'.') {
                self.digit()?;
            }
            if self.eat_if(b'e') || self.eat_if(b'E') {
                if !self.eat_if(b'+') {
                    self.eat_if(b'-');
                }
                self.digit()?;
            }
            Some(())
        }

        /// One digit or more.
        fn digit(&mut self) -> Option<()> {
            self.next().filter(u8::is_ascii_digit)?;
            self.digits();
            Some(())
        }

        fn digits(&mut self) {
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: ParseLimits = ParseLimits { max_batch_commands: 3 };

    fn single(path: &str, query: Option<&str>, body: &[u8]) -> Vec<Vec<u8>> {
        match parse(path, query, body, L).unwrap() {
            Request::Single(c) => c.parts().to_vec(),
            other => panic!("not single: {other:?}"),
        }
    }

    fn b(parts: &[&str]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    #[test]
    fn body_form_keeps_number_literals() {
        assert_eq!(
            single("/", None, br#"["set","k",1e21,-0,1.50,true]"#),
            b(&["set", "k", "1e21", "-0", "1.50", "true"])
        );
        assert_eq!(
            single("", None, br#"["echo","a\"b\u00e9"]"#),
            vec![b"echo".to_vec(), "a\"bé".as_bytes().to_vec()]
        );
    }

    #[test]
    fn body_form_rejects_bad_shapes() {
        assert_eq!(parse("/", None, b"{}", L), Err(ParseError::NotAnArray));
        assert_eq!(parse("/", None, b"", L), Err(ParseError::NotAnArray));
        assert_eq!(parse("/", None, b"[]", L), Err(ParseError::EmptyCommand));
        assert_eq!(
            parse("/", None, br#"["get",null]"#, L),
            Err(ParseError::BadArgument { index: 1, kind: "null" })
        );
        assert_eq!(
            parse("/", None, br#"["get",["a"]]"#, L),
            Err(ParseError::BadArgument { index: 1, kind: "an array" })
        );
    }

    #[test]
    fn path_form_appends_body_then_query() {
        assert_eq!(
            single("/set/foo", Some("EX=100&NX&_token=secret"), b"va/l"),
            b(&["set", "foo", "va/l", "EX", "100", "NX"])
        );
        assert_eq!(single("//get/a%2Fb%20c+d/", None, b""), b(&["get", "a/b c+d"]));
        assert_eq!(single("/set/k/%00%FF", None, b""), vec![b"set".to_vec(), b"k".to_vec(), vec![0, 255]]);
    }

    #[test]
    fn reserved_heads_are_case_insensitive() {
        assert!(
            matches!(parse("/PIPELINE", None, br#"[["get","a"]]"#, L), Ok(Request::Pipeline(c)) if c.len() == 1)
        );
        assert!(
            matches!(parse("/Multi-Exec", None, br#"[]"#, L), Ok(Request::Transaction(c)) if c.is_empty())
        );
        assert_eq!(parse("/subscribe/a/b", None, b"[]", L), Ok(Request::Subscribe(b(&["a", "b"]))));
        assert_eq!(parse("/psubscribe/p*", None, b"", L), Ok(Request::PSubscribe(b(&["p*"]))));
        assert_eq!(
            parse("/SSubscribe/{u}a/{u}b", None, b"[]", L),
            Ok(Request::SSubscribe(b(&["{u}a", "{u}b"])))
        );
        assert_eq!(
            parse("/ssubscribe", None, b"", L),
            Err(ParseError::NoChannels { endpoint: "/ssubscribe" })
        );
        assert_eq!(parse("/monitor", None, b"[]", L), Ok(Request::Monitor));
        assert_eq!(parse("/subscribe", None, b"", L), Err(ParseError::NoChannels { endpoint: "/subscribe" }));
    }

    /// What the hand reader accepts, serde_json reads the same; the rest it leaves to it.
    #[test]
    fn plain_reader_agrees_with_serde() {
        let bodies: &[&[u8]] = &[
            br#"[["GET","k"],["SET","k","v"]]"#,
            br#"[["get","a"],["get","b"],["GET","c"]]"#,
            br#"[["nosuch","a"],["nosuch","b"],["get","c"]]"#,
            b" \t\n[ [ \"get\" , \"a b\" ] ,[\"x\",1,-0,0.5,1e21,-2.5E-3,1E+2,true,false]]\r\n",
            "[[\"set\",\"é✓\"]]".as_bytes(),
            br#"[]"#,
            br#"[[]]"#,
            br#"[["get","a\"b"]]"#,
            br#"[["get",null]]"#,
            br#"[["get",["a"]]]"#,
            br#"[["get","a"],]"#,
            br#"[["get","a",]]"#,
            br#"[["get",01]]"#,
            br#"[["get",1.]]"#,
            br#"[["get",-]]"#,
            br#"[["get",tru]]"#,
            br#"[["get","a"]] x"#,
            br#"[["a"],["b"],["c"],["d"]]"#,
            b"[[\"get\",\"\x01\"]]",
            b"[[\"get\",\"\xff\"]]",
            br#"[["get","a"]"#,
        ];
        for body in bodies {
            let serde = serde_batch(body, "pipeline", 3);
            if let Some(cmds) = plain::batch(body, 3) {
                assert_eq!(Ok(cmds), serde, "{}", String::from_utf8_lossy(body));
            }
            assert_eq!(parse_batch(body, "pipeline", 3), serde);
            let one = body.get(1..body.len().saturating_sub(1)).unwrap_or(b"");
            if let Some(cmd) = plain::command(one) {
                assert_eq!(Ok(cmd), serde_command(one), "{}", String::from_utf8_lossy(one));
            }
        }
        assert!(plain::batch(bodies[1], 3).is_some(), "the common shapes take the hand reader");
        assert!(plain::command(br#" ["SET","k",1.5,true] "#).is_some());
    }

    #[test]
    fn batches_are_checked() {
        assert_eq!(
            parse("/pipeline", None, br#"["get","a"]"#, L),
            Err(ParseError::NotAnArrayOfArrays { what: "pipeline" })
        );
        assert_eq!(
            parse("/pipeline", None, br#"[[]]"#, L),
            Err(ParseError::EmptyInBatch { what: "pipeline", index: 0 })
        );
        assert_eq!(
            parse("/pipeline", None, br#"[["a"],["b"],["c"],["d"]]"#, L),
            Err(ParseError::TooManyCommands { what: "pipeline", max: 3, got: 4 })
        );
        assert_eq!(
            parse("/multi-exec", None, br#"[["set","a",{}]]"#, L),
            Err(ParseError::BadArgumentInBatch { what: "multi-exec", index: 0, arg: 2, kind: "an object" })
        );
    }
}
