//! Property tests of the invariants the fuzz targets (`fuzz/`) also hunt for, with bounded case
//! counts so they run in every CI build:
//! - the XREAD/XREADGROUP blocking detector agrees with a model of the grammar, whatever the
//!   names (keywords included) and option orders;
//! - the policy is total, deterministic and monotone in the access (read-only ⊆ read-write ⊆
//!   admin);
//! - request parsing never panics and round-trips the body, path and pipeline forms;
//! - the encoders write valid JSON, base64 that decodes back to the bytes, and RESP2 that
//!   parses back to the value.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use proptest::prelude::*;
use redisgate_core::Value;
use redisgate_core::catalog;
use redisgate_core::codec::{Encoding, write_envelope, write_resp2};
use redisgate_core::command::Command;
use redisgate_core::policy::{self, Access, allowed_in_script, stream_read_blocks};
use redisgate_core::request::{ParseLimits, Request, parse};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// Names that are keywords of the grammar, in several cases, and ordinary ones.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "STREAMS", "BLOCK", "COUNT", "GROUP", "NOACK", "streams", "Block", "count", ">", "$", "0"
        ])
        .prop_map(str::to_owned),
        "[a-z0-9-]{1,6}",
    ]
}

/// One XREAD/XREADGROUP option, as the grammar has them.
#[derive(Debug, Clone)]
enum Opt {
    Count(String),
    Block(String),
    NoAck,
    Group(String, String),
}

fn keyword(word: &str, lower: bool) -> String {
    if lower { word.to_ascii_lowercase() } else { word.to_owned() }
}

/// A well-formed read: options in any order (GROUP exactly once for XREADGROUP), then STREAMS
/// with as many ids as keys. Option values are drawn from [`name`] too: the grammar does not
/// care, and Redis rejects a bad number only after the parse.
fn stream_read() -> impl Strategy<Value = (bool, Vec<String>, bool)> {
    let value = prop_oneof![name(), (0u32..10_000).prop_map(|n| n.to_string())];
    let opt = prop_oneof![value.clone().prop_map(Opt::Count), value.prop_map(Opt::Block), Just(Opt::NoAck),];
    (
        any::<bool>(),
        prop::collection::vec(opt, 0..4),
        (name(), name()),
        any::<usize>(),
        prop::collection::vec((name(), name()), 1..3),
        any::<bool>(),
    )
        .prop_map(|(group, mut opts, (g, c), at, streams, lower)| {
            if group {
                let at = at % (opts.len() + 1);
                opts.insert(at, Opt::Group(g, c));
            } else {
                opts.retain(|o| !matches!(o, Opt::NoAck));
            }
            let blocks = opts.iter().any(|o| matches!(o, Opt::Block(_)));
            let mut args = Vec::new();
            for o in opts {
                match o {
                    Opt::Count(n) => args.extend([keyword("COUNT", lower), n]),
                    Opt::Block(ms) => args.extend([keyword("BLOCK", lower), ms]),
                    Opt::NoAck => args.push(keyword("NOACK", lower)),
                    Opt::Group(g, c) => args.extend([keyword("GROUP", lower), g, c]),
                }
            }
            args.push(keyword("STREAMS", lower));
            let (keys, ids): (Vec<_>, Vec<_>) = streams.into_iter().unzip();
            args.extend(keys);
            args.extend(ids);
            (group, args, blocks)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn blocking_detector_follows_the_grammar((group, args, blocks) in stream_read()) {
        let bytes: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        prop_assert_eq!(stream_read_blocks(&bytes, group), blocks, "{:?}", args);
        let name = if group { "XREADGROUP" } else { "XREAD" };
        let cmd = Command::new(std::iter::once(name.as_bytes().to_vec()).chain(bytes).collect()).unwrap();
        prop_assert_eq!(policy::check(&cmd, Access::Admin).is_err(), blocks, "{:?}", args);
    }

    #[test]
    fn policy_is_total_deterministic_and_monotone(cmd in command()) {
        let [admin, rw, ro] = [Access::Admin, Access::ReadWrite, Access::ReadOnly].map(|a| policy::check(&cmd, a));
        prop_assert_eq!(&ro, &policy::check(&cmd, Access::ReadOnly));
        prop_assert!(ro.is_err() || rw.is_ok(), "{:?}: read-only may, read-write may not", cmd);
        prop_assert!(rw.is_err() || admin.is_ok(), "{:?}: read-write may, admin may not", cmd);
        let sub = cmd.args().first().map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
        let script = |a| allowed_in_script(cmd.name(), sub.as_deref(), a);
        prop_assert!(!script(Access::ReadOnly));
        prop_assert!(!script(Access::ReadWrite) || script(Access::Admin));
    }

    #[test]
    fn parse_never_panics(path in "[/a-zA-Z%0-9-]{0,20}", query in proptest::option::of("[a-zA-Z=&%0-9_]{0,20}"), body in body()) {
        let _ = parse(&path, query.as_deref(), &body, LIMITS);
    }

    #[test]
    fn body_form_round_trips(args in prop::collection::vec(".{0,8}", 1..6)) {
        let body = serde_json::to_vec(&args).unwrap();
        let parsed = parse("/", None, &body, LIMITS).unwrap();
        prop_assert_eq!(parsed, Request::Single(Command::from_strs(&args).unwrap()));
    }

    #[test]
    fn path_form_round_trips(head in "[a-z]{1,8}", rest in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..8), 0..4)) {
        prop_assume!(!["pipeline", "multi-exec", "monitor", "subscribe", "psubscribe", "ssubscribe"].contains(&head.as_str()));
        let enc = |b: &[u8]| percent_encoding::percent_encode(b, percent_encoding::NON_ALPHANUMERIC).to_string();
        let path: String = std::iter::once(head.clone().into_bytes()).chain(rest.clone()).map(|s| format!("/{}", enc(&s))).collect();
        let parsed = parse(&path, None, b"", LIMITS).unwrap();
        let want: Vec<Vec<u8>> = std::iter::once(head.into_bytes()).chain(rest).collect();
        prop_assert_eq!(parsed, Request::Single(Command::new(want).unwrap()));
    }

    #[test]
    fn pipelines_round_trip(cmds in prop::collection::vec(prop::collection::vec("[ -~]{0,6}", 1..4), 0..5), tx in any::<bool>()) {
        let body = serde_json::to_vec(&cmds).unwrap();
        let parsed = parse(if tx { "/multi-exec" } else { "/pipeline" }, None, &body, LIMITS).unwrap();
        let want: Vec<Command> = cmds.iter().map(|c| Command::from_strs(c).unwrap()).collect();
        prop_assert_eq!(parsed, if tx { Request::Transaction(want) } else { Request::Pipeline(want) });
    }

    #[test]
    fn plain_json_is_valid(v in value()) {
        let mut out = Vec::new();
        write_envelope(&v, Encoding::Plain, &mut out);
        let json: serde_json::Value = serde_json::from_slice(&out).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
        prop_assert!(json.get("result").is_some());
    }

    #[test]
    fn base64_decodes_back_to_the_bytes(v in value()) {
        let mut out = Vec::new();
        write_envelope(&v, Encoding::Base64, &mut out);
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        same_base64(&v, &json["result"], true)?;
    }

    #[test]
    fn resp2_parses_back(v in value()) {
        let mut out = Vec::new();
        write_resp2(&v, &mut out);
        let back = redis::parse_redis_value(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, v);
    }
}

const LIMITS: ParseLimits = ParseLimits { max_batch_commands: 10 };

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..32),
        r#"[\[\]{}",0-9a-z:\\ nul.e-]{0,24}"#.prop_map(String::into_bytes),
    ]
}

/// Commands by catalog name (with a subcommand of theirs, or anything) or by any name.
fn command() -> impl Strategy<Value = Command> {
    let names: Vec<(&str, Vec<&str>)> =
        catalog::COMMANDS.iter().map(|c| (c.name, c.subcommands.iter().map(|s| s.name).collect())).collect();
    let known = (prop::sample::select(names), any::<prop::sample::Index>(), any::<bool>()).prop_map(
        |((n, subs), i, lower)| {
            let mut parts = vec![if lower { n.to_ascii_lowercase() } else { n.to_owned() }];
            if !subs.is_empty() {
                parts.push(subs[i.index(subs.len())].to_owned());
            }
            parts
        },
    );
    let tail = prop::collection::vec(name(), 0..5);
    (prop_oneof![known, prop::collection::vec("[A-Za-z_.|-]{1,10}", 1..2)], tail).prop_map(
        |(mut head, tail)| {
            head.extend(tail);
            Command::from_strs(&head).unwrap()
        },
    )
}

/// Reply values as our RESP2 connections produce them. `SimpleString("OK")` is left out: it is
/// `Okay` on the wire.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        Just(Value::Okay),
        any::<i64>().prop_map(Value::Int),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Value::BulkString),
        "[ -~]{0,8}".prop_filter("is Okay", |s| s != "OK").prop_map(Value::SimpleString),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| prop::collection::vec(inner, 0..4).prop_map(Value::Array))
}

fn same_base64(v: &Value, json: &serde_json::Value, top: bool) -> Result<(), TestCaseError> {
    let decoded = |j: &serde_json::Value| B64.decode(j.as_str().expect("a string")).expect("valid base64");
    match v {
        Value::Nil => prop_assert!(json.is_null()),
        Value::Int(i) => prop_assert_eq!(json.as_i64(), Some(*i)),
        Value::Okay if top => prop_assert_eq!(json.as_str(), Some("OK")),
        Value::Okay => prop_assert_eq!(decoded(json), b"OK".to_vec()),
        Value::BulkString(b) => prop_assert_eq!(&decoded(json), b),
        Value::SimpleString(s) => prop_assert_eq!(decoded(json), s.as_bytes().to_vec()),
        Value::Array(items) => {
            let got = json.as_array().expect("an array");
            prop_assert_eq!(got.len(), items.len());
            for (i, j) in items.iter().zip(got) {
                same_base64(i, j, false)?;
            }
        }
        other => unreachable!("not generated: {other:?}"),
    }
    Ok(())
}
