//! `redisgate check`: the configuration, the metadata store and every Redis RedisGate would
//! talk to, one line each with its latency or its error. It runs beside a serving RedisGate
//! (it reaches local instances through their `redis.conf`), starts nothing and changes nothing.
//!
//! External instances are tenants' URLs: they are pinged through the same egress policy as
//! the server's connections (`instances.external.allow`, RedisGate's own addresses as far as
//! the configuration and the local instances' `redis.conf` tell them), so an operator's check
//! never connects where the server would refuse to.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redisgate_core::instance::{BackendKind, ProvisionerKind};
use redisgate_core::provision::RedisUrl;
use redisgate_core::topology::{Topology, node_url, parse_address};
use redisgate_provision::LocalProvisioner;
use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::egress;
use crate::secrets::Sealer;

/// One checked component.
#[derive(Debug, Clone)]
pub struct Line {
    pub component: String,
    /// `Ok(latency)` or the reason it is down.
    pub result: Result<Duration, String>,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.result {
            Ok(d) => write!(f, "ok    {:<48} {:.1} ms", self.component, d.as_secs_f64() * 1000.0),
            Err(e) => write!(f, "FAIL  {:<48} {e}", self.component),
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(3);

/// Checks everything `settings` names.
pub async fn run(settings: &Settings, config_source: &str) -> Vec<Line> {
    let mut lines = vec![Line { component: format!("config ({config_source})"), result: Ok(Duration::ZERO) }];
    if settings.tls.enabled() {
        let loaded = crate::tls::Tls::load(&settings.tls).map(|_| Duration::ZERO).map_err(|e| e.to_string());
        lines.push(Line { component: "tls certificate and key".into(), result: loaded });
    }
    for (i, t) in settings.tokens.iter().enumerate() {
        let name = t.name.clone().unwrap_or_else(|| format!("tokens[{i}]"));
        lines.push(Line {
            component: format!("standalone redis {name}"),
            result: redisgate_provision::ping(t.url.expose_secret(), TIMEOUT, None).await,
        });
    }
    // Opening SQLite creates the file: a check must not, so a missing file is reported.
    let sqlite_file = settings.data_dir.join("redisgate.db");
    if settings.database_url.is_none() && !sqlite_file.exists() {
        let reason =
            format!("no database at {} (has RedisGate run with this data_dir?)", sqlite_file.display());
        lines.push(Line { component: "metadata store (sqlite)".into(), result: Err(reason) });
        return lines;
    }
    let started = Instant::now();
    let store = match tokio::time::timeout(TIMEOUT, redisgate_store::connect(&settings.store_url())).await {
        Ok(Ok(store)) => store,
        Ok(Err(e)) => {
            lines.push(Line { component: "metadata store".into(), result: Err(e.to_string()) });
            return lines;
        }
        Err(_) => {
            lines.push(Line {
                component: "metadata store".into(),
                result: Err(format!("timed out after {TIMEOUT:?}")),
            });
            return lines;
        }
    };
    let store_ok = store.ping().await.map(|()| started.elapsed()).map_err(|e| e.to_string());
    let kind = if settings.database_url.is_some() { "postgres" } else { "sqlite" };
    lines.push(Line { component: format!("metadata store ({kind})"), result: store_ok });
    let records = match store.all_instances().await {
        Ok(r) => r,
        Err(e) => {
            lines.push(Line { component: "instances".into(), result: Err(e.to_string()) });
            return lines;
        }
    };
    let secret_key = settings.secret_key.as_ref().map(|k| k.expose_secret().to_owned());
    let key_file = settings.data_dir.join("secret.key");
    let sealer = if secret_key.is_none() && !key_file.exists() {
        Err("no secret key".to_owned())
    } else {
        Sealer::load(secret_key.as_deref(), &settings.data_dir).map_err(|e| e.to_string())
    };
    let root = settings.data_dir.join("instances");
    let local_ports: Vec<u16> = records
        .iter()
        .filter(|r| r.instance.provisioner == ProvisionerKind::Local)
        .filter_map(|r| LocalProvisioner::configured_url(Path::new(&root), r.instance.id))
        .filter_map(|url| egress::redis_endpoint(url.expose()).map(|(_, port)| port))
        .collect();
    let policy =
        match egress::for_settings(settings, settings.listen, Arc::new(move || local_ports.clone())).await {
            Ok(p) => Some(p),
            Err(e) => {
                lines.push(Line { component: "egress policy".into(), result: Err(e.to_string()) });
                None
            }
        };
    for rec in records {
        let inst = &rec.instance;
        let mut component = format!("instance {} ({}, {})", inst.id, inst.name, inst.provisioner.as_str());
        if inst.kind != BackendKind::Standalone {
            component = format!("instance {} ({}, {})", inst.id, inst.name, inst.kind.as_str());
            let result = match (&sealer, &policy) {
                (Ok(sealer), Some(policy)) => check_topology(sealer, policy, rec.sealed_url.as_deref()).await,
                (Err(_), _) => Err("no usable secret key".to_owned()),
                (_, None) => Err("not checked: the egress policy is invalid".to_owned()),
            };
            lines.push(Line { component, result });
            continue;
        }
        let url: Result<RedisUrl, String> = match inst.provisioner {
            ProvisionerKind::Local => LocalProvisioner::configured_url(Path::new(&root), inst.id)
                .ok_or_else(|| "no redis.conf in its data directory".to_owned()),
            ProvisionerKind::External => match (&sealer, &rec.sealed_url) {
                (Ok(s), Some(sealed)) => s
                    .open(sealed)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .map(RedisUrl::new)
                    .ok_or_else(|| "stored URL cannot be opened with this secret key".to_owned()),
                _ => Err("no usable secret key or stored URL".to_owned()),
            },
        };
        let result = match (url, inst.provisioner) {
            (Err(e), _) => Err(e),
            (Ok(url), ProvisionerKind::Local) => redisgate_provision::ping(url.expose(), TIMEOUT, None).await,
            (Ok(url), ProvisionerKind::External) => match &policy {
                None => Err("not checked: the egress policy is invalid".to_owned()),
                Some(policy) => {
                    match egress::check_tls(url.expose(), settings.instances.external.allow_insecure_tls) {
                        Err(why) => Err(why.to_owned()),
                        Ok(()) => checked_ping(policy, url.expose(), rec.tls_ca_pem.as_deref()).await,
                    }
                }
            },
        };
        lines.push(Line { component, result });
    }
    lines
}

/// A Sentinel or Cluster instance: a PING of every sentinel or seed it lists, through the
/// egress policy; the slowest one's latency, or the first failure with its address.
async fn check_topology(
    sealer: &Sealer,
    policy: &Arc<egress::Egress>,
    sealed: Option<&[u8]>,
) -> Result<Duration, String> {
    let topology = sealed
        .and_then(|s| sealer.open(s).ok())
        .and_then(|b| serde_json::from_slice::<Topology>(&b).ok())
        .ok_or_else(|| "stored topology cannot be opened with this secret key".to_owned())?;
    let (tls, user, password) = match &topology {
        Topology::Sentinel(s) => (s.tls, s.sentinel_username.as_deref(), s.sentinel_password.as_deref()),
        Topology::Cluster(c) => (c.tls, c.username.as_deref(), c.password.as_deref()),
    };
    let mut slowest = Duration::ZERO;
    for addr in topology.addresses() {
        let (host, port) = parse_address(addr).ok_or_else(|| format!("{addr}: not host:port"))?;
        let latency = checked_ping(policy, &node_url(&host, port, tls, user, password), None)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        slowest = slowest.max(latency);
    }
    Ok(slowest)
}

/// PING of a tenant's URL only where the egress policy admits it, dialling only the admitted
/// addresses. A refusal names the address and the rule: `check` is the operator's.
async fn checked_ping(
    policy: &Arc<egress::Egress>,
    url: &str,
    ca_pem: Option<&str>,
) -> Result<Duration, String> {
    if let Some((host, port)) = egress::redis_endpoint(url)
        && let Err(e) = policy.admitted(&host, port).await
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Err(format!("refused by the egress policy ({e})"));
    }
    // Names that do not resolve, and bad URLs, are the PING's to report.
    redisgate_provision::ping_verified(url, ca_pem, TIMEOUT, Some(&policy.resolver())).await
}
