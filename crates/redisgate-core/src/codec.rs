//! Redis replies as the Upstash REST protocol writes them (PROTOCOL.md §4).
//!
//! ```text
//! +OK            -> {"result":"OK"}            base64: {"result":"OK"}   (the one exception)
//! +PONG          -> {"result":"PONG"}          base64: {"result":"UE9ORw=="}
//! $3 bar         -> {"result":"bar"}           base64: {"result":"YmFy"}
//! :5             -> {"result":5}
//! $-1            -> {"result":null}
//! *2 $1 a :1     -> {"result":["a",1]}         base64: {"result":["YQ==",1]}
//! -ERR x         -> {"error":"ERR x"}          (errors are never encoded)
//! ```
//! Values are written straight into a byte buffer: no intermediate JSON tree on the hot path.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use redis::{ServerError, Value};

/// The `Upstash-Encoding` the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Plain,
    /// Every string base64-encoded, except a top-level simple-string `OK`.
    Base64,
}

/// The exact Redis error text, e.g. `WRONGTYPE Operation against a key holding the wrong kind of value`.
pub fn error_text(e: &ServerError) -> String {
    match e.details() {
        Some(d) => format!("{} {}", e.code(), d),
        None => e.code().to_owned(),
    }
}

/// Writes `{"result":…}`, or `{"error":"…"}` when the reply itself is an error.
/// Returns `true` when an error object was written.
pub fn write_envelope(v: &Value, enc: Encoding, out: &mut Vec<u8>) -> bool {
    if let Value::ServerError(e) = v {
        write_error(&error_text(e), out);
        return true;
    }
    out.extend_from_slice(b"{\"result\":");
    write_value(v, enc, true, out);
    out.push(b'}');
    false
}

/// Writes `{"error":"<text>"}`.
pub fn write_error(text: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"error\":");
    write_json_str(text, out);
    out.push(b'}');
}

/// Writes one value as JSON. `top` marks the position where a simple-string `OK` stays
/// unencoded in base64 mode: the `result` of a command, or of one pipeline item.
pub fn write_value(v: &Value, enc: Encoding, top: bool, out: &mut Vec<u8>) {
    match v {
        Value::Nil => out.extend_from_slice(b"null"),
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::BulkString(b) => write_bytes(b, enc, out),
        Value::Okay if top || enc == Encoding::Plain => out.extend_from_slice(b"\"OK\""),
        Value::Okay => write_bytes(b"OK", enc, out),
        Value::SimpleString(s) => write_bytes(s.as_bytes(), enc, out),
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => {
            write_array(items.iter(), enc, out)
        }
        Value::Map(pairs) => write_array(pairs.iter().flat_map(|(k, v)| [k, v]), enc, out),
        Value::Attribute { data, .. } => write_value(data, enc, top, out),
        // RESP3 scalars never come from our RESP2 connections; flattened as PROTOCOL.md §4.2 says.
        Value::Double(d) => write_bytes(format_double(*d).as_bytes(), enc, out),
        Value::Boolean(b) => out.push(if *b { b'1' } else { b'0' }),
        Value::VerbatimString { text, .. } => write_bytes(text.as_bytes(), enc, out),
        Value::BigNumber(n) => write_bytes(n, enc, out),
        // An error nested in an array (a Lua table holding an error reply) becomes its text.
        Value::ServerError(e) => write_json_str(&error_text(e), out),
        _ => out.extend_from_slice(b"null"),
    }
}

fn write_array<'a>(items: impl Iterator<Item = &'a Value>, enc: Encoding, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_value(item, enc, false, out);
    }
    out.push(b']');
}

/// Whether JSON carries `b` as it is: printable ASCII but `"` and `\`, the common case of
/// keys and values. Without early exit, so the loop vectorises.
fn json_as_is(b: &[u8]) -> bool {
    b.iter().fold(true, |ok, &c| ok & (0x20..0x7f).contains(&c) & (c != b'"') & (c != b'\\'))
}

fn write_bytes(b: &[u8], enc: Encoding, out: &mut Vec<u8>) {
    match enc {
        Encoding::Plain if json_as_is(b) => {
            out.push(b'"');
            out.extend_from_slice(b);
            out.push(b'"');
        }
        Encoding::Plain => write_json_str(&String::from_utf8_lossy(b), out),
        Encoding::Base64 => {
            out.push(b'"');
            let start = out.len();
            out.resize(start + b.len().div_ceil(3) * 4, 0);
            let n = B64.encode_slice(b, &mut out[start..]).expect("buffer sized for base64");
            out.truncate(start + n);
            out.push(b'"');
        }
    }
}

fn write_json_str(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, s).expect("writing JSON to a Vec cannot fail");
}

fn format_double(d: f64) -> String {
    if d.is_infinite() { if d > 0.0 { "inf".into() } else { "-inf".into() } } else { d.to_string() }
}

/// Writes a reply as raw RESP2 bytes (`Upstash-Response-Format: resp2`, PROTOCOL.md §4.4).
///
/// ```text
/// Okay -> +OK\r\n   Bulk "bar" -> $3\r\nbar\r\n   Nil -> $-1\r\n   Int 5 -> :5\r\n
/// ```
/// A null array (`*-1`) is parsed by our client as nil and so comes back as `$-1`.
pub fn write_resp2(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Nil => out.extend_from_slice(b"$-1\r\n"),
        Value::Int(i) => {
            out.push(b':');
            out.extend_from_slice(i.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Value::BulkString(b) => write_resp_bulk(b, out),
        Value::Okay => out.extend_from_slice(b"+OK\r\n"),
        Value::SimpleString(s) => {
            out.push(b'+');
            out.extend_from_slice(s.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Value::ServerError(e) => {
            out.push(b'-');
            out.extend_from_slice(error_text(e).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => {
            write_resp_len(b'*', items.len(), out);
            items.iter().for_each(|i| write_resp2(i, out));
        }
        Value::Map(pairs) => {
            write_resp_len(b'*', pairs.len() * 2, out);
            pairs.iter().for_each(|(k, v)| {
                write_resp2(k, out);
                write_resp2(v, out);
            });
        }
        Value::Attribute { data, .. } => write_resp2(data, out),
        Value::Double(d) => write_resp_bulk(format_double(*d).as_bytes(), out),
        Value::Boolean(b) => out.extend_from_slice(if *b { b":1\r\n" } else { b":0\r\n" }),
        Value::VerbatimString { text, .. } => write_resp_bulk(text.as_bytes(), out),
        Value::BigNumber(n) => write_resp_bulk(n, out),
        _ => out.extend_from_slice(b"$-1\r\n"),
    }
}

fn write_resp_len(tag: u8, len: usize, out: &mut Vec<u8>) {
    out.push(tag);
    out.extend_from_slice(len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_resp_bulk(b: &[u8], out: &mut Vec<u8>) {
    write_resp_len(b'$', b.len(), out);
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// An upper bound of the bytes [`write_envelope`] writes for `v`, exact for valid UTF-8 text:
/// the gateway checks a reply's size with it before encoding anything. A walk over the value,
/// no allocation.
pub fn envelope_len_bound(v: &Value, enc: Encoding) -> usize {
    envelope_len(v, enc, Text::Scanned)
}

/// The bytes [`write_envelope`] writes for `v` if no text needs escaping: exact then (and
/// always in base64), and never less than a sixth of what it writes (an escape is at most six
/// bytes for one). Unlike [`envelope_len_bound`] it does not read the text, so it is the
/// cheap first check of a reply's size and its buffer's.
pub fn envelope_len_unescaped(v: &Value, enc: Encoding) -> usize {
    envelope_len(v, enc, Text::AsIs)
}

/// How the length bounds count text.
#[derive(Clone, Copy)]
enum Text {
    /// Read, escapes counted.
    Scanned,
    /// Counted as written as it is.
    AsIs,
}

fn envelope_len(v: &Value, enc: Encoding, text: Text) -> usize {
    match v {
        Value::ServerError(e) => r#"{"error":}"#.len() + error_len_bound(e, text),
        _ => r#"{"result":}"#.len() + value_len_bound(v, enc, true, text),
    }
}

/// An upper bound of the bytes [`write_value`] writes for `v`.
fn value_len_bound(v: &Value, enc: Encoding, top: bool, text: Text) -> usize {
    let len = |v| value_len_bound(v, enc, false, text);
    let bytes = |b: &[u8]| bytes_len_bound(b, enc, text);
    match v {
        Value::Nil => 4,
        // "-9223372036854775808"
        Value::Int(_) => 20,
        Value::BulkString(b) => bytes(b),
        Value::Okay if top || enc == Encoding::Plain => 4,
        Value::Okay => bytes(b"OK"),
        Value::SimpleString(s) => bytes(s.as_bytes()),
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => {
            array_len_bound(items.len(), items.iter().map(len).sum())
        }
        Value::Map(pairs) => {
            array_len_bound(pairs.len() * 2, pairs.iter().map(|(k, v)| len(k) + len(v)).sum())
        }
        Value::Attribute { data, .. } => value_len_bound(data, enc, top, text),
        // The longest `f64` Display is under 330 digits (1e308 written out); never on RESP2.
        Value::Double(_) => bytes(&[b'0'; 330]),
        Value::Boolean(_) => 1,
        Value::VerbatimString { text: t, .. } => bytes(t.as_bytes()),
        Value::BigNumber(n) => bytes(n),
        Value::ServerError(e) => error_len_bound(e, text),
        _ => 4,
    }
}

/// `[`, `]` and the commas between `n` items of `items` bytes.
fn array_len_bound(n: usize, items: usize) -> usize {
    2 + n.saturating_sub(1) + items
}

fn error_len_bound(e: &ServerError, text: Text) -> usize {
    let len = e.code().len() + e.details().map_or(0, |d| 1 + d.len());
    match text {
        // Every byte escaped as \u00XX at worst.
        Text::Scanned => 2 + 6 * len,
        Text::AsIs => 2 + len,
    }
}

fn bytes_len_bound(b: &[u8], enc: Encoding, text: Text) -> usize {
    match (enc, text) {
        (Encoding::Base64, _) => 2 + b.len().div_ceil(3) * 4,
        (Encoding::Plain, Text::Scanned) => 2 + json_text_len(b),
        (Encoding::Plain, Text::AsIs) => 2 + b.len(),
    }
}

/// What serde_json writes for the text of `b` (after `from_utf8_lossy`), without the quotes:
/// exact for valid UTF-8; otherwise each byte ≥ 0x80 is counted as a 3-byte U+FFFD.
fn json_text_len(b: &[u8]) -> usize {
    if json_as_is(b) {
        return b.len();
    }
    let valid = std::str::from_utf8(b).is_ok();
    b.iter()
        .map(|&c| match c {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            0x80.. if !valid => 3,
            _ => 1,
        })
        .sum()
}

/// An upper bound of the bytes [`write_resp2`] writes for `v`.
pub fn resp2_len_bound(v: &Value) -> usize {
    // A type byte, a length or integer of up to 20 characters, CRLF.
    const HEADER: usize = 1 + 20 + 2;
    let bulk = |n: usize| HEADER + n + 2;
    match v {
        Value::Nil | Value::Okay | Value::Boolean(_) | Value::Int(_) => HEADER,
        Value::BulkString(b) | Value::BigNumber(b) => bulk(b.len()),
        Value::SimpleString(s) => bulk(s.len()),
        Value::VerbatimString { text, .. } => bulk(text.len()),
        Value::ServerError(e) => bulk(e.code().len() + e.details().map_or(0, |d| 1 + d.len())),
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => {
            HEADER + items.iter().map(resp2_len_bound).sum::<usize>()
        }
        Value::Map(pairs) => {
            HEADER + pairs.iter().map(|(k, v)| resp2_len_bound(k) + resp2_len_bound(v)).sum::<usize>()
        }
        Value::Attribute { data, .. } => resp2_len_bound(data),
        Value::Double(_) => bulk(330),
        _ => HEADER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &Value, enc: Encoding) -> String {
        let mut out = Vec::new();
        write_envelope(v, enc, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn plain_json() {
        assert_eq!(env(&Value::Okay, Encoding::Plain), r#"{"result":"OK"}"#);
        assert_eq!(env(&Value::Nil, Encoding::Plain), r#"{"result":null}"#);
        assert_eq!(env(&Value::Int(-5), Encoding::Plain), r#"{"result":-5}"#);
        assert_eq!(env(&bulk("a\"b\n"), Encoding::Plain), r#"{"result":"a\"b\n"}"#);
        assert_eq!(env(&Value::BulkString(vec![0x61, 0xff]), Encoding::Plain), "{\"result\":\"a\u{fffd}\"}");
        assert_eq!(
            env(
                &Value::Array(vec![bulk("v1"), Value::Nil, Value::Array(vec![Value::Int(1)])]),
                Encoding::Plain
            ),
            r#"{"result":["v1",null,[1]]}"#
        );
    }

    #[test]
    fn base64_encodes_every_string_but_a_top_level_ok() {
        assert_eq!(env(&Value::Okay, Encoding::Base64), r#"{"result":"OK"}"#);
        assert_eq!(env(&Value::SimpleString("PONG".into()), Encoding::Base64), r#"{"result":"UE9ORw=="}"#);
        assert_eq!(env(&bulk("bar"), Encoding::Base64), r#"{"result":"YmFy"}"#);
        assert_eq!(env(&bulk(""), Encoding::Base64), r#"{"result":""}"#);
        assert_eq!(
            env(&Value::Array(vec![Value::Okay, bulk("ab"), Value::Int(3), Value::Nil]), Encoding::Base64),
            r#"{"result":["T0s=","YWI=",3,null]}"#
        );
    }

    #[test]
    fn errors_are_plain_text() {
        let err = redis::parse_redis_value(b"-WRONGTYPE Operation against a key\r\n").unwrap();
        assert!(matches!(err, Value::ServerError(_)));
        let mut out = Vec::new();
        assert!(write_envelope(&err, Encoding::Base64, &mut out));
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"error":"WRONGTYPE Operation against a key"}"#);
    }

    /// The bounds hold for every shape, and are exact for valid UTF-8 in JSON and for RESP2
    /// bulk strings up to the length digits.
    #[test]
    fn length_bounds_cover_what_the_encoders_write() {
        let err = redis::parse_redis_value(b"-ERR \"quoted\" \x01\r\n").unwrap();
        let values = [
            Value::Okay,
            Value::Nil,
            Value::Int(i64::MIN),
            bulk("plain"),
            bulk("quote \" slash \\ nl \n tab \t bell \x07 é ✓"),
            Value::BulkString(vec![0x61, 0xff, 0xfe, 0x80]),
            Value::SimpleString("PONG".into()),
            Value::Array(vec![]),
            Value::Array(vec![Value::Okay, bulk("ab"), Value::Array(vec![Value::Int(1), Value::Nil])]),
            Value::Map(vec![(bulk("k"), bulk("v"))]),
            Value::Double(f64::MAX),
            Value::Double(-f64::MIN_POSITIVE),
            Value::Boolean(true),
            err.clone(),
            Value::Array(vec![err]),
        ];
        for v in &values {
            for enc in [Encoding::Plain, Encoding::Base64] {
                let mut out = Vec::new();
                write_envelope(v, enc, &mut out);
                assert!(envelope_len_bound(v, enc) >= out.len(), "{v:?} {enc:?}");
            }
            let mut out = Vec::new();
            write_resp2(v, &mut out);
            assert!(resp2_len_bound(v) >= out.len(), "{v:?}");
        }
        let text = bulk("quote \" slash \\ nl \n bell \x07 é ✓");
        assert_eq!(envelope_len_bound(&text, Encoding::Plain), env(&text, Encoding::Plain).len());
        let b = Value::BulkString(vec![0; 1000]);
        assert_eq!(envelope_len_bound(&b, Encoding::Base64), env(&b, Encoding::Base64).len());
        for v in &values {
            for enc in [Encoding::Plain, Encoding::Base64] {
                let written = env(v, enc).len();
                assert!(envelope_len_unescaped(v, enc) * 6 >= written, "{v:?} {enc:?}");
            }
        }
        let plain = bulk("plain text");
        assert_eq!(envelope_len_unescaped(&plain, Encoding::Plain), env(&plain, Encoding::Plain).len());
    }

    #[test]
    fn resp2_bytes() {
        let mut out = Vec::new();
        write_resp2(&Value::Array(vec![Value::Okay, bulk("bar"), Value::Nil, Value::Int(7)]), &mut out);
        assert_eq!(out, b"*4\r\n+OK\r\n$3\r\nbar\r\n$-1\r\n:7\r\n");
    }
}
