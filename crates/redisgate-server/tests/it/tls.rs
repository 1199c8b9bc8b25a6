//! HTTPS on the listener (`tls.*`): HTTP/1.1 and HTTP/2 over ALPN, TLS 1.2+ only, a plain
//! listener beside it, certificates reloaded when the files change (under traffic, without
//! dropping connections) and on SIGHUP, a bounded handshake, mutual TLS, and the Upstash SDKs
//! against the `https://` URL. Certificates come from a CA made per test (rcgen).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redisgate_server::config::{ClientAuth, Settings};
use redisgate_server::tls::{Reloaded, Tls};
use rustls::pki_types::pem::PemObject as _;
use tokio::io::AsyncReadExt as _;

use crate::common::{Gate, Issued, Redis, TOKEN, TestCa, free_port, repo_root, settings};

/// A test's certificate files: the server's CA, its certificate and key where the gateway
/// reads them, and a CA for client certificates.
struct Pki {
    dir: tempfile::TempDir,
    ca: TestCa,
    clients: TestCa,
    /// The server certificate installed first (serial 1).
    first: Issued,
}

impl Pki {
    /// With a server certificate of serial 1 installed.
    fn new() -> Pki {
        let ca = TestCa::new("RedisGate test CA");
        let first = ca.server(1);
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
            clients: TestCa::new("RedisGate test client CA"),
            first,
        };
        std::fs::write(pki.path("ca.pem"), &pki.ca.pem).unwrap();
        std::fs::write(pki.path("clients.pem"), &pki.clients.pem).unwrap();
        pki.install(&pki.first);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the certificate, then the key, in place (as `cp cert; cp key` would: in
    /// between, the two do not match).
    fn install(&self, server: &Issued) {
        std::fs::write(self.path("cert.pem"), &server.cert_pem).unwrap();
        std::fs::write(self.path("key.pem"), &server.key_pem).unwrap();
    }

    /// The gateway's settings: HTTPS with these files, checked every 50 ms.
    fn settings(&self, redis: &Redis) -> Settings {
        let mut s = settings(redis);
        s.tls.cert_file = Some(self.path("cert.pem"));
        s.tls.key_file = Some(self.path("key.pem"));
        s.tls.reload_interval = Duration::from_millis(50);
        s
    }

    /// With mutual TLS: client certificates of `clients`.
    fn mutual(&self, redis: &Redis, auth: Option<ClientAuth>) -> Settings {
        let mut s = self.settings(redis);
        s.tls.client_ca_file = Some(self.path("clients.pem"));
        s.tls.client_auth = auth;
        s
    }

    /// A client trusting only the test CA, reporting each response's server certificate.
    fn client(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.pem.as_bytes()).unwrap())
            .tls_info(true)
            .timeout(Duration::from_secs(10))
    }

    /// [`Pki::client`] presenting `cert`.
    fn client_with(&self, cert: &Issued) -> reqwest::Client {
        let pem = format!("{}{}", cert.cert_pem, cert.key_pem);
        self.client().identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap()).build().unwrap()
    }
}

/// The certificate the server presented on the response's connection.
fn server_cert(r: &reqwest::Response) -> Vec<u8> {
    let info = r.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
    info.peer_certificate().expect("a server certificate").to_vec()
}

async fn send(
    client: &reqwest::Client,
    g: &Gate,
    token: Option<&str>,
    body: &str,
) -> reqwest::Result<reqwest::Response> {
    let mut req = client.post(g.url("/")).body(body.to_owned());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http2_and_http1() {
    let redis = Redis::start().await;
    let pki = Pki::new();
    let g = Gate::start_https(pki.settings(&redis), pki.client().build().unwrap()).await;

    // reqwest offers h2 and http/1.1 by ALPN; the gateway picks h2.
    let r = g.post("/", r#"["SET","k","over h2"]"#).await;
    assert_eq!((r.status().as_u16(), r.version()), (200, http::Version::HTTP_2));
    assert_eq!(server_cert(&r), pki.first.der);

    let h1 = pki.client().http1_only().build().unwrap();
    let r = send(&h1, &g, Some(TOKEN), r#"["GET","k"]"#).await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, http::Version::HTTP_11));
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["result"], "over h2");

    // The HTTPS port speaks nothing else.
    let plain = g.base.replace("https://localhost", "http://127.0.0.1");
    let r =
        reqwest::Client::new().post(format!("{plain}/")).bearer_auth(TOKEN).body(r#"["PING"]"#).send().await;
    assert!(r.is_err(), "plain HTTP on the HTTPS port was answered: {r:?}");
    g.shutdown().await;
}

/// A console session started over HTTPS gets a `Secure` cookie, with no proxy header and no
/// `auth.cookie_secure = "always"`: the TLS listener marks its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_secure_over_https() {
    let redis = Redis::start().await;
    let pki = Pki::new();
    let g = Gate::start_https(pki.settings(&redis), pki.client().build().unwrap()).await;
    let account = serde_json::json!({"email": "ann@example.com", "password": "correct horse battery"});
    let r = g.http.post(g.url("/auth/register")).json(&account).send().await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let mut login = account.clone();
    login["cookie"] = true.into();
    let r = g.http.post(g.url("/auth/login")).json(&login).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("rg_session="), "{cookie}");
    assert!(cookie.split(';').any(|a| a.trim() == "Secure"), "{cookie}");
    g.shutdown().await;
}

/// `tls.plain_listen`: plain HTTP on a second address, beside HTTPS on `listen`. With one
/// connection slot between them, each is served in turn: a free slot is not parked on the
/// listener that has no client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_a_second_listener() {
    let redis = Redis::start().await;
    let pki = Pki::new();
    let mut s = pki.settings(&redis);
    let plain: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    s.tls.plain_listen = Some(plain);
    s.http.max_connections = 1;
    // Clients that close their connection after each request, giving the slot back.
    let once = || pki.client().pool_max_idle_per_host(0);
    let mut g = Gate::start_https(s, once().build().unwrap()).await;
    g.http = once().build().unwrap();
    let plain_client = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(10));
    let plain_client = plain_client.build().unwrap();
    for i in 0..3 {
        let r = plain_client
            .post(format!("http://{plain}/"))
            .bearer_auth(TOKEN)
            .body(format!(r#"["ECHO","plain {i}"]"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<serde_json::Value>().await.unwrap()["result"], format!("plain {i}"));
        assert_eq!(g.post("/", r#"["PING"]"#).await.status(), 200);
    }
    g.shutdown().await;
}

/// `openssl s_client` with one protocol version; whether the handshake succeeded.
async fn handshake_with(version: &str, port: u16, ca: &std::path::Path) -> bool {
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost", version])
        // OpenSSL 3 refuses TLS 1.0/1.1 itself at its default security level; level 0 lets
        // the client offer them, so the refusal seen is the server's.
        .args(["-cipher", "DEFAULT@SECLEVEL=0", "-CAfile"])
        .arg(ca)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("openssl installed (scripts/test.sh installs it)");
    out.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_and_1_1_are_refused() {
    let redis = Redis::start().await;
    let pki = Pki::new();
    let g = Gate::start_https(pki.settings(&redis), pki.client().build().unwrap()).await;
    let port: u16 = g.base.rsplit(':').next().unwrap().parse().unwrap();
    let ca = pki.path("ca.pem");
    assert!(handshake_with("-tls1_2", port, &ca).await, "TLS 1.2 is served");
    assert!(handshake_with("-tls1_3", port, &ca).await, "TLS 1.3 is served");
    assert!(!handshake_with("-tls1_1", port, &ca).await, "TLS 1.1 must be refused");
    assert!(!handshake_with("-tls1", port, &ca).await, "TLS 1.0 must be refused");
    g.shutdown().await;
}

/// Rewrites the files under traffic: one client keeps its connection (HTTP/2) and goes on
/// seeing the old certificate on it, another opens a connection per request; no request
/// fails, and new connections get the new certificate once the files are whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotates_under_traffic() {
    let redis = Redis::start().await;
    let pki = Pki::new();
    let g = Arc::new(Gate::start_https(pki.settings(&redis), pki.client().build().unwrap()).await);
    let kept = pki.client().build().unwrap();
    let first = send(&kept, &g, Some(TOKEN), r#"["SET","n","0"]"#).await.unwrap();
    assert_eq!((first.version(), server_cert(&first)), (http::Version::HTTP_2, pki.first.der.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    let on_kept = tokio::spawn({
        let (g, stop, kept) = (Arc::clone(&g), Arc::clone(&stop), kept.clone());
        async move {
            let mut certs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = send(&kept, &g, Some(TOKEN), r#"["INCR","n"]"#)
                    .await
                    .expect("a request on the kept connection");
                assert_eq!(r.status(), 200);
                certs.push(server_cert(&r));
            }
            certs
        }
    });
    let fresh = pki.client().http1_only().pool_max_idle_per_host(0).build().unwrap();
    let second = pki.ca.server(2);
    pki.install(&second);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fresh_certs = Vec::new();
    loop {
        let r =
            send(&fresh, &g, Some(TOKEN), r#"["INCR","n"]"#).await.expect("a request on a new connection");
        assert_eq!(r.status(), 200);
        fresh_certs.push(server_cert(&r));
        if fresh_certs.last() == Some(&second.der) {
            break;
        }
        assert!(Instant::now() < deadline, "new connections never got the new certificate");
    }
    // A few more on both after the switch.
    for _ in 0..5 {
        let r = send(&fresh, &g, Some(TOKEN), r#"["INCR","n"]"#).await.unwrap();
        assert_eq!(server_cert(&r), second.der, "once rotated, new connections keep the new one");
    }
    stop.store(true, Ordering::Relaxed);
    let kept_certs = on_kept.await.unwrap();
    let metrics = kept.get(g.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"tls_certificate_reloads_total{result="ok"} "#), "{metrics}");
    assert!(!kept_certs.is_empty());
    assert!(kept_certs.iter().all(|c| *c == pki.first.der), "the kept connection was replaced");
    // Every INCR was served exactly once: none failed, none was lost.
    let total = 1 + kept_certs.len() + fresh_certs.len() + 5;
    let r = send(&kept, &g, Some(TOKEN), r#"["GET","n"]"#).await.unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["result"], (total - 1).to_string());
}

/// The reload itself, handshake by handshake: a file that does not load keeps the previous
/// certificate and is reported once, naming the key and not the file's contents.
#[tokio::test]
async fn a_bad_new_file_keeps_the_previous_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let redis = Redis::start().await;
    let pki = Pki::new();
    let tls = Tls::load(&pki.settings(&redis).tls).unwrap().unwrap();
    assert_eq!(handshake(&tls, &pki).await, pki.first.der);
    assert_eq!(tls.reload(false).unwrap(), Reloaded::Unchanged);

    std::fs::write(pki.path("key.pem"), "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBtYXRlcmlhbA==\n")
        .unwrap();
    let e = tls.reload(false).unwrap_err().to_string();
    assert!(e.contains("tls.key_file") && !e.contains("c2VjcmV0"), "{e}");
    assert_eq!(tls.reload(false).unwrap(), Reloaded::Unchanged, "reported once");
    assert_eq!(handshake(&tls, &pki).await, pki.first.der);

    // A whole new pair whose key belongs to another certificate.
    let (second, other) = (pki.ca.server(2), pki.ca.server(3));
    std::fs::write(pki.path("cert.pem"), &second.cert_pem).unwrap();
    std::fs::write(pki.path("key.pem"), &other.key_pem).unwrap();
    let e = tls.reload(false).unwrap_err().to_string();
    assert!(e.contains("tls.key_file"), "{e}");
    assert_eq!(handshake(&tls, &pki).await, pki.first.der);

    std::fs::remove_file(pki.path("cert.pem")).unwrap();
    assert!(tls.reload(false).unwrap_err().to_string().contains("tls.cert_file"));

    pki.install(&second);
    assert_eq!(tls.reload(false).unwrap(), Reloaded::Replaced);
    assert_eq!(handshake(&tls, &pki).await, second.der);
}

/// One handshake through `tls`'s acceptor on loopback; the certificate the client saw.
async fn handshake(tls: &Tls, pki: &Pki) -> Vec<u8> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.acceptor();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca.pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let cert = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    drop(stream);
    server.await.unwrap();
    cert
}

/// SIGHUP reloads at once (the files are otherwise checked only hourly here). The signal goes
/// to this test process, whose handler the gateway installed when it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let redis = Redis::start().await;
    let pki = Pki::new();
    let mut s = pki.settings(&redis);
    s.tls.reload_interval = Duration::from_secs(3600);
    let g = Gate::start_https(s, pki.client().build().unwrap()).await;
    let fresh = pki.client().http1_only().pool_max_idle_per_host(0).build().unwrap();
    let second = pki.ca.server(2);
    pki.install(&second);
    let r = send(&fresh, &g, Some(TOKEN), r#"["PING"]"#).await.unwrap();
    assert_eq!(server_cert(&r), pki.first.der, "not reloaded before the signal");
    let killed =
        std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = send(&fresh, &g, Some(TOKEN), r#"["PING"]"#).await.unwrap();
        if server_cert(&r) == second.der {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload the certificate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    g.shutdown().await;
}

/// Files that do not load stop start-up, naming the key.
#[tokio::test]
async fn unusable_files_stop_start_up() {
    let redis = Redis::start().await;
    let pki = Pki::new();
    let start = |s: Settings| async move {
        let data = tempfile::tempdir().unwrap();
        let mut s = s;
        s.data_dir = data.path().to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = redisgate_server::launch(s, listener, std::future::pending()).await.unwrap_err();
        format!("{e:#}")
    };
    let mut s = pki.settings(&redis);
    s.tls.cert_file = Some(pki.path("missing.pem"));
    let e = start(s).await;
    assert!(e.contains("tls.cert_file") && e.contains("missing.pem"), "{e}");

    std::fs::write(pki.path("key.pem"), pki.ca.server(9).key_pem).unwrap();
    assert!(start(pki.settings(&redis)).await.contains("tls.key_file"));

    std::fs::write(pki.path("key.pem"), "not a key").unwrap();
    assert!(start(pki.settings(&redis)).await.contains("tls.key_file"));

    pki.install(&pki.first);
    let mut s = pki.mutual(&redis, None);
    s.tls.client_ca_file = Some(pki.path("cert.pem").with_extension("nope"));
    assert!(start(s).await.contains("tls.client_ca_file"));
}

/// A client that opens a connection and never says hello holds its slot only until
/// `tls.handshake_timeout`: with one slot, the next client is served after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_gives_its_slot_back() {
    let redis = Redis::start().await;
    let pki = Pki::new();
    let mut s = pki.settings(&redis);
    s.http.max_connections = 1;
    s.tls.handshake_timeout = Duration::from_millis(300);
    let g = Gate::start_https(s, pki.client().build().unwrap()).await;
    let addr = g.base.replace("https://localhost", "127.0.0.1");
    // The readiness client's idle connection holds the one slot until it is closed.
    let mut g = g;
    g.http = pki.client().build().unwrap();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let r = g.post("/", r#"["PING"]"#).await;
    assert_eq!(r.status(), 200);
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the silent connection is closed: {closed:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "served only after the stalled handshake timed out"
    );
    let metrics = g.http.get(g.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"tls_handshake_failures_total{reason="timeout"} "#), "{metrics}");
    g.shutdown().await;
}

/// `tls.client_auth = "required"` (the default with a client CA): no certificate, or one of
/// another CA, and the handshake fails; with one, token auth still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_required() {
    let redis = Redis::start().await;
    let pki = Pki::new();
    let alice = pki.clients.client("alice");
    let g = Gate::start_https(pki.mutual(&redis, None), pki.client_with(&alice)).await;

    let anonymous = pki.client().build().unwrap();
    let e = send(&anonymous, &g, Some(TOKEN), r#"["PING"]"#).await.unwrap_err();
    assert!(e.is_connect() || e.is_request(), "{e:?}");
    let stranger = pki.client_with(&TestCa::new("another CA").client("mallory"));
    assert!(send(&stranger, &g, Some(TOKEN), r#"["PING"]"#).await.is_err());

    let trusted = pki.client_with(&alice);
    let r = send(&trusted, &g, None, r#"["PING"]"#).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    assert_eq!(send(&trusted, &g, Some(TOKEN), r#"["PING"]"#).await.unwrap().status(), 200);
    g.shutdown().await;
}

/// `tls.client_auth = "optional"`: clients without a certificate are served (with their
/// token); a certificate that is presented is still verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_optional() {
    let redis = Redis::start().await;
    let pki = Pki::new();
    let g = Gate::start_https(pki.mutual(&redis, Some(ClientAuth::Optional)), pki.client().build().unwrap())
        .await;
    let anonymous = pki.client().build().unwrap();
    assert_eq!(send(&anonymous, &g, None, r#"["PING"]"#).await.unwrap().status(), 401);
    assert_eq!(send(&anonymous, &g, Some(TOKEN), r#"["PING"]"#).await.unwrap().status(), 200);
    let trusted = pki.client_with(&pki.clients.client("alice"));
    assert_eq!(send(&trusted, &g, Some(TOKEN), r#"["PING"]"#).await.unwrap().status(), 200);
    let stranger = pki.client_with(&TestCa::new("another CA").client("mallory"));
    assert!(send(&stranger, &g, Some(TOKEN), r#"["PING"]"#).await.is_err());
    g.shutdown().await;
}

/// The Python SDK's suite (see `python_sdk.rs`) against the `https://` URL, trusting the test
/// CA through the variables requests and httpx read.
#[tokio::test(flavor = "multi_thread")]
async fn upstash_redis_python_sdk_over_https() {
    let redis = Redis::start().await;
    let pki = Pki::new();
    let g = Gate::start_https(pki.settings(&redis), pki.client().build().unwrap()).await;
    let ca = pki.path("ca.pem");
    let env = [("REQUESTS_CA_BUNDLE", ca.as_path()), ("SSL_CERT_FILE", ca.as_path())];
    crate::python_sdk::run_pytest_with(&g.base, TOKEN, &env).await;
    g.shutdown().await;
}

/// `@upstash/redis` (Node, tests/node/https.mjs) against the `https://` URL, trusting the test
/// CA through NODE_EXTRA_CA_CERTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstash_redis_node_sdk_over_https() {
    let dir = repo_root().join("tests/node");
    assert!(
        dir.join("node_modules/@upstash/redis").exists(),
        "tests/node has no node_modules: run scripts/test.sh, or `npm ci --prefix tests/node`"
    );
    let redis = Redis::start().await;
    let pki = Pki::new();
    let g = Gate::start_https(pki.settings(&redis), pki.client().build().unwrap()).await;
    let out = tokio::process::Command::new("node")
        .arg("https.mjs")
        .current_dir(&dir)
        .env("UPSTASH_URL", &g.base)
        .env("UPSTASH_TOKEN", TOKEN)
        .env("NODE_EXTRA_CA_CERTS", pki.path("ca.pem"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("node finished in time")
        .expect("node runs (scripts/test.sh installs it)");
    let report = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "@upstash/redis over https failed ({}):\n{report}", out.status);
    assert!(report.lines().any(|l| l == "ok @upstash/redis https"), "{report}");
    g.shutdown().await;
}
