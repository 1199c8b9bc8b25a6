//! No request can stall or flood other tenants: replies are bounded by
//! `http.max_response_bytes`, scripts by `backend.script_timeout`, and scripts' inner calls
//! by the calling key's scope.

use serde_json::{Value, json};

use crate::common::{Gate, Redis, TOKEN, settings};

const MIB: usize = 1024 * 1024;

/// Headers of a request: `Upstash-Encoding`, `Upstash-Response-Format`.
type Headers = &'static [(&'static str, &'static str)];

/// `MGET big big … big` (`n` times) as a command array.
fn mget(n: usize) -> Value {
    let mut cmd = vec![json!("MGET")];
    cmd.extend(std::iter::repeat_n(json!("big"), n));
    Value::Array(cmd)
}

async fn post(g: &Gate, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut req = g.http.post(g.url(path)).bearer_auth(TOKEN).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

fn error_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|_| panic!("JSON error body"));
    v["error"].as_str().unwrap_or_else(|| panic!("an error field: {v}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_above_max_response_bytes_are_refused_in_every_form() {
    let redis = Redis::start().await;
    let mut s = settings(&redis);
    s.http.max_response_bytes = MIB;
    let g = Gate::start(s).await;
    // 64 KiB of text: 15 copies fit in 1 MiB of JSON, 50 do not.
    redis.cmd::<()>(&["SET", "big", &"x".repeat(64 * 1024)]).await;

    let (status, body) = post(&g, "/", &mget(15), &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body[..200.min(body.len())]));
    assert!(body.len() < MIB && body.len() > 15 * 64 * 1024);

    let big = mget(50);
    let cases: [(&str, Value, Headers); 5] = [
        ("/", big.clone(), &[]),
        ("/", big.clone(), &[("upstash-response-format", "resp2")]),
        ("/pipeline", json!([["PING"], big.clone()]), &[]),
        ("/multi-exec", json!([["PING"], big.clone()]), &[]),
        // 15 copies fit as text but not base64-encoded (4/3 larger).
        ("/", mget(15), &[("upstash-encoding", "base64")]),
    ];
    for (path, body, headers) in cases {
        let (status, reply) = post(&g, path, &body, headers).await;
        assert_eq!(
            status,
            400,
            "{path} {headers:?}: {}",
            String::from_utf8_lossy(&reply[..200.min(reply.len())])
        );
        let e = error_of(&reply);
        assert!(e.contains("http.max_response_bytes"), "{e}");
    }
    // Nothing broke on the shared connection.
    let (status, body) = post(&g, "/", &json!(["PING"]), &[]).await;
    assert_eq!((status, body), (200, br#"{"result":"PONG"}"#.to_vec()));
}
