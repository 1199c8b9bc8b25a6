//! What members do to their instances — create, configure, reset credentials, copy the
//! connect details — as one service that the JSON API (and the console, which calls it)
//! uses: the rules live here; handlers authorize, call, and map the answer.

use std::borrow::Cow;

use redisgate_core::apikey::{TokenKind, format_key};
use redisgate_core::ids::{ApiKeyId, InstanceId, OrgId, UserId};
use redisgate_core::instance::{BackendKind, EvictionPolicy, ProvisionerKind};
use redisgate_core::provision::InstanceSpec;
use redisgate_core::store::{InstanceChange, InstanceRecord, NewApiKey, NewInstance, NewInstanceToken};
use redisgate_core::topology::{ClusterSpec, SentinelSpec, Topology};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Instances, NOT_ALLOWED, Refused};

/// Largest `tls_ca_pem` accepted: a few CA certificates.
const MAX_CA_PEM_BYTES: usize = 64 * 1024;

const DEFAULT_MEMORY_MB: u64 = 64;

/// Largest `memory_mb` of a local instance (1 TiB): beyond any host, and far from overflow.
const MAX_MEMORY_MB: u64 = 1024 * 1024;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRedisInstance {
    /// 1–100 characters.
    pub name: String,
    /// `local` (default): a redis-server process run by RedisGate. `external`: your own server.
    pub provisioner: Option<ProvisionerKind>,
    /// `maxmemory` of a local instance, in MiB (default 64); counts against the quota.
    pub memory_mb: Option<u64>,
    /// A local instance's `maxmemory-policy` (default `noeviction`: a full instance refuses
    /// writes rather than dropping keys).
    pub eviction_policy: Option<EvictionPolicy>,
    /// External instances: `redis://[user:password@]host:port[/db]` or `rediss://…`.
    /// Stored sealed; never shown again. `rediss://` servers are verified against the
    /// platform's roots, or `tls_ca_pem`; `#insecure` (no verification) is refused unless the
    /// deployment allows it (`instances.external.allow_insecure_tls`).
    pub url: Option<String>,
    /// External instances: `standalone` (default: one server at `url`), `sentinel` (give
    /// `sentinel`) or `cluster` (give `cluster`). See docs/BACKENDS.md.
    pub kind: Option<BackendKind>,
    /// A `sentinel` instance's sentinels, master name and credentials; stored sealed, never
    /// shown again.
    pub sentinel: Option<SentinelSpec>,
    /// A `cluster` instance's seed nodes and credentials; stored sealed, never shown again.
    pub cluster: Option<ClusterSpec>,
    /// External `rediss://` instances: the CA certificate(s), PEM, that the server's
    /// certificate is verified against instead of the platform's roots (at most 64 KiB).
    pub tls_ca_pem: Option<String>,
}

impl NewRedisInstance {
    /// A local instance of `memory_mb` with the defaults otherwise (an RDB import).
    pub fn local(name: String, memory_mb: u64) -> Self {
        NewRedisInstance {
            name,
            provisioner: Some(ProvisionerKind::Local),
            memory_mb: Some(memory_mb),
            eviction_policy: None,
            url: None,
            kind: None,
            sentinel: None,
            cluster: None,
            tls_ca_pem: None,
        }
    }
}

/// A change to an instance; absent fields stay as they are.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceUpdate {
    /// 1–100 characters.
    pub name: Option<String>,
    /// Local instances: the new `maxmemory` in MiB, within the organization's memory quota.
    /// Applied live; below the data's size, writes get OOM errors (or keys are evicted, by
    /// the policy) until it fits.
    pub memory_mb: Option<u64>,
    /// Local instances: the new `maxmemory-policy`, applied live.
    pub eviction_policy: Option<EvictionPolicy>,
}

/// What a client needs to use an instance, as Upstash's database page shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Connect {
    /// The instance's Upstash REST URL (`UPSTASH_REDIS_REST_URL`).
    pub rest_url: String,
    /// Read-write (`UPSTASH_REDIS_REST_TOKEN`).
    pub rest_token: String,
    /// Read commands only.
    pub read_only_rest_token: String,
    /// A ready `.env` block.
    pub env: String,
    pub curl: String,
    /// `@upstash/redis`.
    pub typescript: String,
    /// `upstash-redis`.
    pub python: String,
}

fn invalid(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Refused {
    Refused::Invalid { field, reason: reason.into() }
}

fn check_name(name: &str) -> Result<&str, Refused> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(invalid("name", "must be 1 to 100 characters"));
    }
    Ok(name)
}

fn memory_bytes(mb: u64) -> Result<u64, Refused> {
    if !(1..=MAX_MEMORY_MB).contains(&mb) {
        return Err(invalid("memory_mb", "must be between 1 and 1048576"));
    }
    Ok(mb * 1024 * 1024)
}

impl Instances {
    /// Creates an instance of `org` and starts it before answering (its status says whether
    /// that worked), with its two REST tokens.
    pub async fn create(
        &self,
        org: OrgId,
        by: UserId,
        req: NewRedisInstance,
    ) -> Result<InstanceRecord, Refused> {
        let name = check_name(&req.name)?;
        let provisioner = req.provisioner.unwrap_or(ProvisionerKind::Local);
        let kind = req.kind.unwrap_or_default();
        let topology = match (kind, req.sentinel, req.cluster) {
            (BackendKind::Standalone, None, None) => None,
            (BackendKind::Sentinel, Some(s), None) => Some(Topology::Sentinel(s)),
            (BackendKind::Cluster, None, Some(c)) => Some(Topology::Cluster(c)),
            (BackendKind::Sentinel, ..) => {
                return Err(invalid("sentinel", "sentinel instances take `sentinel` only"));
            }
            (BackendKind::Cluster, ..) => {
                return Err(invalid("cluster", "cluster instances take `cluster` only"));
            }
            (BackendKind::Standalone, ..) => {
                return Err(invalid("kind", "`sentinel` and `cluster` need their kind"));
            }
        };
        if provisioner == ProvisionerKind::External
            && (req.memory_mb.is_some() || req.eviction_policy.is_some())
        {
            return Err(invalid(
                "memory_mb",
                "an external server's memory and eviction are its own settings",
            ));
        }
        let (memory_bytes, sealed_url) = match (provisioner, topology) {
            (ProvisionerKind::Local, Some(_)) => {
                return Err(invalid("kind", "only external instances are sentinel or cluster"));
            }
            (ProvisionerKind::External, Some(topology)) => {
                if req.url.is_some() {
                    return Err(invalid("url", "sentinel and cluster instances take no url"));
                }
                if let Err(e) = self.check_topology(&topology).await {
                    return Err(invalid(e.field, e.reason));
                }
                let json = serde_json::to_vec(&topology).map_err(|_| Refused::Internal)?;
                (0, Some(self.sealer.seal(&json)))
            }
            (ProvisionerKind::Local, None) => {
                if req.url.is_some() {
                    return Err(invalid("url", "only external instances take a url"));
                }
                if req.tls_ca_pem.is_some() {
                    return Err(invalid("tls_ca_pem", "only external instances take a CA"));
                }
                (memory_bytes(req.memory_mb.unwrap_or(DEFAULT_MEMORY_MB))?, None)
            }
            (ProvisionerKind::External, None) => {
                let url =
                    req.url.as_deref().ok_or_else(|| invalid("url", "external instances need a url"))?;
                self.check_external_url(org, url, req.tls_ca_pem.as_deref()).await?;
                // An external server's memory is not ours to limit or count.
                (0, Some(self.sealer.seal(url.as_bytes())))
            }
        };
        let new = NewInstance {
            id: InstanceId::new(),
            org_id: org,
            name: name.to_owned(),
            provisioner,
            kind,
            memory_bytes,
            eviction_policy: req.eviction_policy.unwrap_or_default(),
            sealed_url,
            tls_ca_pem: req.tls_ca_pem,
        };
        // Host-wide caps on local instances, decided one create at a time.
        let admitted = match provisioner {
            ProvisionerKind::Local => Some(self.admit_local(memory_bytes).await?),
            ProvisionerKind::External => None,
        };
        let rec = self.store.create_instance(new).await.map_err(Refused::Store)?;
        drop(admitted);
        self.replace_tokens(&rec, Some(by)).await?;
        self.start(&rec, super::Start::Checked).await;
        self.store.instance(rec.instance.id).await.map_err(Refused::Store)
    }

    async fn check_external_url(&self, org: OrgId, url: &str, ca: Option<&str>) -> Result<(), Refused> {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) || redis::Client::open(url).is_err()
        {
            return Err(invalid("url", "must be a redis:// or rediss:// URL"));
        }
        self.check_tls(url).map_err(|why| invalid("url", why))?;
        if let Some(ca) = ca {
            if !url.starts_with("rediss://") || crate::egress::asks_insecure_tls(url) {
                return Err(invalid(
                    "tls_ca_pem",
                    "only for a rediss:// URL that verifies the server (no #insecure)",
                ));
            }
            if ca.len() > MAX_CA_PEM_BYTES {
                return Err(invalid("tls_ca_pem", "must be at most 64 KiB"));
            }
            crate::egress::tls_roots(ca).map_err(|why| invalid("tls_ca_pem", why))?;
        }
        if let Err(why) = self.egress.check_url(url).await {
            tracing::info!(org.id = %org, reason = %why, "external instance URL refused by the egress policy");
            return Err(invalid("url", NOT_ALLOWED));
        }
        Ok(())
    }

    /// Renames, resizes or changes the eviction policy of an instance. Memory and policy
    /// apply to a running local server at once (`CONFIG SET`) and are stored, so that its
    /// next start renders them into its `redis.conf`; if the server refuses, nothing is
    /// stored.
    pub async fn update(&self, rec: &InstanceRecord, req: InstanceUpdate) -> Result<InstanceRecord, Refused> {
        let name = req.name.as_deref().map(check_name).transpose()?.map(str::to_owned);
        let memory_bytes = req.memory_mb.map(memory_bytes).transpose()?;
        let inst = &rec.instance;
        if inst.provisioner == ProvisionerKind::External
            && (memory_bytes.is_some() || req.eviction_policy.is_some())
        {
            let field = if memory_bytes.is_some() { "memory_mb" } else { "eviction_policy" };
            return Err(invalid(field, "an external server's memory and eviction are its own settings"));
        }
        // Growing takes room on this host too, decided one change at a time like creates.
        let _admitted = match memory_bytes {
            Some(bytes) if bytes > inst.memory_bytes => Some(self.admit_resize(inst.id, bytes).await?),
            _ => None,
        };
        let mut settings: Vec<(&str, String)> = Vec::new();
        if let Some(bytes) = memory_bytes.filter(|b| *b != inst.memory_bytes) {
            settings.push(("maxmemory", bytes.to_string()));
        }
        if let Some(policy) = req.eviction_policy.filter(|p| *p != inst.eviction_policy) {
            settings.push(("maxmemory-policy", policy.as_str().to_owned()));
        }
        // The quota is checked by the store; ask it first with the new size, so a refused
        // resize never reaches the server.
        let change = InstanceChange { name, memory_bytes, eviction_policy: req.eviction_policy };
        if settings.is_empty() {
            return self.store.update_instance(inst.id, change).await.map_err(Refused::Store);
        }
        let Some((_, backend)) = self.backend(inst.id) else { return Err(Refused::NotRunning) };
        let previous = InstanceChange {
            name: Some(inst.name.clone()),
            memory_bytes: Some(inst.memory_bytes),
            eviction_policy: Some(inst.eviction_policy),
        };
        let updated = self.store.update_instance(inst.id, change).await.map_err(Refused::Store)?;
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET");
        for (name, value) in &settings {
            cmd.arg(*name).arg(value);
        }
        match backend.run(&cmd).await {
            Ok(redis::Value::Okay) => Ok(updated),
            answer => {
                let reason = match &answer {
                    Ok(value) => format!("{value:?}"),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(instance.id = %inst.id, %reason, "CONFIG SET refused; configuration change undone");
                let _ = self.store.update_instance(inst.id, previous).await;
                Err(Refused::NotRunning)
            }
        }
    }

    /// Deletes an instance: it is no longer served, a local server stops and its data goes,
    /// then its row (with its tokens, backups' records and usage) leaves the store.
    pub async fn remove(&self, rec: &InstanceRecord) -> Result<(), Refused> {
        let id = rec.instance.id;
        if let Err(reason) = self.delete(rec).await {
            tracing::error!(instance.id = %id, %reason, "could not destroy an instance's server");
            return Err(Refused::Internal);
        }
        self.store.delete_instance(id).await.map_err(Refused::Store)
    }

    /// Replaces both REST tokens (the old ones get 401 within the key cache's freshness on
    /// every replica, at once on this one after the caller's invalidation) and, for a local
    /// instance, its server's password, live: the gateway's connections stay, the next one
    /// uses the new password.
    pub async fn reset_credentials(&self, rec: &InstanceRecord, by: UserId) -> Result<(), Refused> {
        let inst = &rec.instance;
        if inst.provisioner == ProvisionerKind::Local {
            let Some((_, backend)) = self.backend(inst.id) else { return Err(Refused::NotRunning) };
            let spec = InstanceSpec {
                id: inst.id,
                memory_bytes: inst.memory_bytes,
                eviction_policy: inst.eviction_policy,
                external_url: None,
                tls_ca_pem: None,
            };
            let url = self.local.rotate_password(&spec).await.map_err(|e| {
                tracing::error!(instance.id = %inst.id, reason = %e, "could not rotate the instance's password");
                Refused::NotRunning
            })?;
            let client = crate::egress::tenant_client(url.expose(), None).map_err(|_| Refused::Internal)?;
            backend.set_client(client);
        }
        self.replace_tokens(rec, Some(by)).await
    }

    /// The instance's REST tokens in the clear: standard first, then read-only. An instance
    /// made before tokens existed gets them now.
    pub async fn tokens(&self, rec: &InstanceRecord, by: UserId) -> Result<[String; 2], Refused> {
        let mut stored = self.store.instance_tokens(rec.instance.id).await.map_err(Refused::Store)?;
        if stored.len() != 2 {
            self.replace_tokens(rec, Some(by)).await?;
            stored = self.store.instance_tokens(rec.instance.id).await.map_err(Refused::Store)?;
        }
        let open = |kind: TokenKind| -> Result<String, Refused> {
            let token = stored.iter().find(|t| t.kind == kind).ok_or(Refused::Internal)?;
            let text = self.sealer.open(&token.sealed_key).map_err(|_| Refused::Internal)?;
            String::from_utf8(text).map_err(|_| Refused::Internal)
        };
        Ok([open(TokenKind::Standard)?, open(TokenKind::ReadOnly)?])
    }

    async fn replace_tokens(&self, rec: &InstanceRecord, by: Option<UserId>) -> Result<(), Refused> {
        let inst = &rec.instance;
        let mut tokens = Vec::with_capacity(2);
        for kind in TokenKind::BOTH {
            let id = ApiKeyId::new();
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|_| Refused::Internal)?;
            let text = format_key(id, &secret);
            let key = NewApiKey {
                id,
                org_id: inst.org_id,
                name: format!("{} ({} token)", inst.name, kind.as_str()),
                scope: kind.scope(),
                instance_ids: Some(vec![inst.id]),
                rate_limit: None,
                expires_at: None,
                secret_hash: Sha256::digest(text.as_bytes()).into(),
                created_by: by,
            };
            tokens.push(NewInstanceToken { key, kind, sealed_key: self.sealer.seal(text.as_bytes()) });
        }
        self.store.replace_instance_tokens(inst.id, tokens).await.map_err(Refused::Store)?;
        Ok(())
    }
}

impl Connect {
    /// The connect details of an instance served at `rest_url`.
    pub fn new(rest_url: String, [rest_token, read_only_rest_token]: [String; 2]) -> Self {
        let env =
            format!("UPSTASH_REDIS_REST_URL=\"{rest_url}\"\nUPSTASH_REDIS_REST_TOKEN=\"{rest_token}\"\n");
        let curl = format!("curl {rest_url}/set/foo/bar -H \"Authorization: Bearer {rest_token}\"");
        let typescript = format!(
            "import {{ Redis }} from \"@upstash/redis\";\n\nconst redis = new Redis({{\n  url: \"{rest_url}\",\n  token: \"{rest_token}\",\n}});\n\nawait redis.set(\"foo\", \"bar\");\nconst value = await redis.get(\"foo\");\n"
        );
        let python = format!(
            "from upstash_redis import Redis\n\nredis = Redis(url=\"{rest_url}\", token=\"{rest_token}\")\n\nredis.set(\"foo\", \"bar\")\nvalue = redis.get(\"foo\")\n"
        );
        Connect { rest_url, rest_token, read_only_rest_token, env, curl, typescript, python }
    }
}
