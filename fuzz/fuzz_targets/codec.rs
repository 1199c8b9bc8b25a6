//! The reply encoders on any value tree: plain JSON must parse, base64 JSON must parse with
//! every string decoding back to its bytes, and RESP2 must parse back to the same value.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use redisgate_core::Value;
use redisgate_core::codec::{Encoding, write_envelope, write_resp2};

/// A reply as our RESP2 connections produce them (no RESP3 types; `+OK` is `Okay`).
fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    Ok(match u.int_in_range(0..=if depth > 3 { 4 } else { 5 })? {
        0 => Value::Nil,
        1 => Value::Okay,
        2 => Value::Int(u.arbitrary()?),
        3 => Value::BulkString(u.arbitrary()?),
        4 => {
            let s: String = u.arbitrary()?;
            let s: String = s.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
            if s == "OK" { Value::Okay } else { Value::SimpleString(s) }
        }
        _ => {
            let n = u.int_in_range(0..=4)?;
            Value::Array((0..n).map(|_| value(u, depth + 1)).collect::<Result<_>>()?)
        }
    })
}

fn same_base64(v: &Value, json: &serde_json::Value, top: bool) {
    let decoded = |j: &serde_json::Value| B64.decode(j.as_str().expect("a string")).expect("valid base64");
    match v {
        Value::Nil => assert!(json.is_null()),
        Value::Int(i) => assert_eq!(json.as_i64(), Some(*i)),
        Value::Okay if top => assert_eq!(json.as_str(), Some("OK")),
        Value::Okay => assert_eq!(decoded(json), b"OK"),
        Value::BulkString(b) => assert_eq!(&decoded(json), b),
        Value::SimpleString(s) => assert_eq!(decoded(json), s.as_bytes()),
        Value::Array(items) => {
            let got = json.as_array().expect("an array");
            assert_eq!(got.len(), items.len());
            items.iter().zip(got).for_each(|(i, j)| same_base64(i, j, false));
        }
        _ => unreachable!(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(v) = value(&mut u, 0) else { return };
    let mut out = Vec::new();
    write_envelope(&v, Encoding::Plain, &mut out);
    let plain: serde_json::Value = serde_json::from_slice(&out).expect("plain JSON parses");
    assert!(plain.get("result").is_some());
    out.clear();
    write_envelope(&v, Encoding::Base64, &mut out);
    let b64: serde_json::Value = serde_json::from_slice(&out).expect("base64 JSON parses");
    same_base64(&v, &b64["result"], true);
    out.clear();
    write_resp2(&v, &mut out);
    assert_eq!(redis::parse_redis_value(&out).expect("RESP2 parses"), v);
});
