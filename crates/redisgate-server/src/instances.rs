//! Running instances: the bridge between the metadata store, the provisioners and the
//! gateway's backends.
//!
//! An instance's status in the store is never a lie: it is `pending` until its provisioner
//! says the server answers, `running` once the gateway holds a backend for it, and `error`
//! with the provisioner's reason otherwise (also later, when a supervised process crashes).
//! There is no fallback: an instance without a backend of its own is not served.
//!
//! A backend lives exactly as long as its instance is served here: the entry holding it stops
//! it when dropped (deleted through the API, with its organization, through another replica,
//! or replaced), so a deleted instance leaves no supervisor reconnecting, logging or counting
//! retries behind, and its streams end.
//!
//! Backends connect on demand ([`Hold::OnDemand`]): a restored or adopted instance is served
//! without a connection, and [`Instances::check_idle`] checks the ones without one at a
//! bounded total rate. What this replica knows of every stored instance (to count them for
//! health) is kept from the store's change feed ([`Instances::follow`]), never by re-reading
//! every row.
//!
//! Local instances are bounded host-wide ([`HostCapacity`]), across organizations. Creates are
//! admitted one at a time under an in-process lock, counting what the store holds: local
//! instances are single-replica (their `redis-server` is a child of this process), so this
//! process is the only one creating them on this host.

mod manage;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub use self::manage::{Connect, InstanceUpdate, NewRedisInstance};
use redisgate_core::capacity::{HostCapacity, HostLimit};
use redisgate_core::ids::{InstanceId, OrgId};
use redisgate_core::instance::{BackendKind, InstanceStatus, ProvisionerKind};
use redisgate_core::provision::{InstanceSpec, ProvisionError, Provisioner, RedisUrl};
use redisgate_core::store::{InstanceRecord, Store, StoreError};
use redisgate_core::topology::{Invalid, Topology, node_url, parse_address};
use redisgate_provision::ExternalProvisioner;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::ha::cluster::Cluster;
use crate::backend::ha::sentinel::Sentinel;
use crate::backend::ha::{Dialer, NodeStatus, Routed};
use crate::backend::script::ScopeUsers;
use crate::backend::{Backend, Health, Hold};
use crate::config::{BackendSettings, Settings};
use crate::egress::Egress;
use crate::secrets::Sealer;

/// Live instance stats, from Redis' own INFO.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub used_memory_bytes: u64,
    pub keys: u64,
    pub ops_per_sec: u64,
    pub connected_clients: u64,
}

/// How an instance is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Created or imported here: an external server is checked (an authenticated PING)
    /// before it is served.
    Checked,
    /// Restored at start-up or adopted from another replica: already checked when it was
    /// created, so served at once; it connects with its first request, and its health is what
    /// the checks find.
    Trusted,
}

/// What this replica knows of a stored instance, whether it serves it or not.
#[derive(Debug, Clone, Copy)]
struct Known {
    provisioner: ProvisionerKind,
    memory_bytes: u64,
}

/// The instances' health in numbers, for `/health` and the metrics.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// Stored instances.
    pub total: u64,
    /// Those whose last check failed, or that are not served here: their ids, and when each
    /// was last seen answering.
    pub unhealthy: Vec<(InstanceId, Option<time::OffsetDateTime>)>,
    /// Served, idle, and not checked yet since they were served.
    pub unchecked: u64,
    /// Local instances and the memory they reserve.
    pub local: (u64, u64),
}

/// A served instance's backend, stopped when the entry goes.
struct Served {
    org: OrgId,
    backend: Arc<Backend>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.backend.stop();
    }
}

/// How many of `records` are local instances, and the memory they reserve together.
fn local_usage(records: &[InstanceRecord]) -> (u64, u64) {
    let local = records.iter().filter(|r| r.instance.provisioner == ProvisionerKind::Local);
    local.fold((0, 0), |(n, bytes), r| (n + 1, bytes.saturating_add(r.instance.memory_bytes)))
}

/// Why an instance cannot be created or changed.
#[derive(Debug)]
pub enum Refused {
    /// A host-wide cap.
    Host(HostLimit),
    Store(StoreError),
    /// A field of the request, and why.
    Invalid {
        field: &'static str,
        reason: Cow<'static, str>,
    },
    /// The change needs the instance's server, which is not running (or refused it).
    NotRunning,
    /// Ours, not the caller's: logged where it happened.
    Internal,
}

/// The one answer to an address the egress policy refuses, whichever rule refused it and
/// whether or not its host resolves.
pub const NOT_ALLOWED: &str = "is not a server RedisGate may connect to";

/// How long the PING that admits an external server may take (connect, TLS, AUTH included).
const EXTERNAL_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

pub struct Instances {
    store: Arc<dyn Store>,
    local: Arc<dyn Provisioner>,
    external: Arc<dyn Provisioner>,
    pub sealer: Sealer,
    /// Where external instances may connect.
    pub egress: Arc<Egress>,
    backends: RwLock<HashMap<InstanceId, Served>>,
    /// Every stored instance, as the change feed last told (filled by `restore_all`).
    known: RwLock<HashMap<InstanceId, Known>>,
    /// Why an external instance could not connect, for deployment administrators only (its
    /// owner's `status_reason` does not say); kept by this replica, not stored.
    details: RwLock<HashMap<InstanceId, String>>,
    settings: BackendSettings,
    tracker: TaskTracker,
    cancel: CancellationToken,
    capacity: HostCapacity,
    /// `instances.external.allow_insecure_tls`: see [`crate::egress::check_tls`].
    allow_insecure_tls: bool,
    /// Held from the capacity check until the new instance is in the store.
    admission: tokio::sync::Mutex<()>,
}

impl Instances {
    /// `settings` gives the backends' settings and the host caps (`instances.max_local_*`).
    pub fn new(
        store: Arc<dyn Store>,
        local: Arc<dyn Provisioner>,
        egress: Arc<Egress>,
        sealer: Sealer,
        settings: &Settings,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let capacity = HostCapacity {
            max_local_instances: settings.instances.max_local_instances,
            max_local_memory_bytes: settings.instances.max_local_memory_mb.saturating_mul(1024 * 1024),
        };
        Instances {
            store,
            local,
            // Its PING resolves through the same policy as the backends' connections.
            external: ExternalProvisioner::checked(EXTERNAL_CHECK_TIMEOUT, egress.resolver()),
            sealer,
            egress,
            backends: RwLock::default(),
            known: RwLock::default(),
            details: RwLock::default(),
            settings: settings.backend.clone(),
            tracker,
            cancel,
            capacity,
            allow_insecure_tls: settings.instances.external.allow_insecure_tls,
            admission: tokio::sync::Mutex::default(),
        }
    }

    /// Admits a new local instance of `memory_bytes` if the host has room for it. Hold the
    /// guard until the instance is in the store: parallel creates are decided one at a time,
    /// each seeing the ones before it.
    pub async fn admit_local(&self, memory_bytes: u64) -> Result<tokio::sync::MutexGuard<'_, ()>, Refused> {
        let guard = self.admission.lock().await;
        let all = self.store.all_instances().await.map_err(Refused::Store)?;
        let (count, bytes) = local_usage(&all);
        self.capacity.admits(count, bytes, memory_bytes).map_err(Refused::Host)?;
        Ok(guard)
    }

    /// Admits growing local instance `id` to `memory_bytes`, as [`Instances::admit_local`].
    pub async fn admit_resize(
        &self,
        id: InstanceId,
        memory_bytes: u64,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, Refused> {
        let guard = self.admission.lock().await;
        let mut all = self.store.all_instances().await.map_err(Refused::Store)?;
        all.retain(|r| r.instance.id != id);
        let (_, bytes) = local_usage(&all);
        if bytes.saturating_add(memory_bytes) > self.capacity.max_local_memory_bytes {
            return Err(Refused::Host(HostLimit::MaxLocalMemory));
        }
        Ok(guard)
    }

    /// The host caps on local instances.
    pub fn capacity(&self) -> HostCapacity {
        self.capacity
    }

    /// Whether a tenant's URL passes the deployment's TLS rule ([`crate::egress::check_tls`]).
    pub fn check_tls(&self, url: &str) -> Result<(), &'static str> {
        crate::egress::check_tls(url, self.allow_insecure_tls)
    }

    /// Why the instance's server could not be used, as the log has it: for deployment
    /// administrators.
    pub fn status_detail(&self, id: InstanceId) -> Option<String> {
        self.details.read().expect("details lock").get(&id).cloned()
    }

    fn provisioner(&self, kind: ProvisionerKind) -> &Arc<dyn Provisioner> {
        match kind {
            ProvisionerKind::Local => &self.local,
            ProvisionerKind::External => &self.external,
        }
    }

    /// The owning organization and backend of a running instance; the data plane's only way
    /// to reach one.
    pub fn backend(&self, id: InstanceId) -> Option<(OrgId, Arc<Backend>)> {
        self.backends.read().expect("backends lock").get(&id).map(|s| (s.org, Arc::clone(&s.backend)))
    }

    /// The instances this replica serves.
    pub fn served(&self) -> Vec<InstanceId> {
        self.backends.read().expect("backends lock").keys().copied().collect()
    }

    /// Calls `f` with every served instance's backend, under the read lock: keep it short
    /// (the usage sampler only takes each meter's counts).
    pub fn each_served(&self, mut f: impl FnMut(InstanceId, &Arc<Backend>)) {
        for (id, served) in self.backends.read().expect("backends lock").iter() {
            f(*id, &served.backend);
        }
    }

    /// `healthy` when its Redis answered the last check, `unhealthy` when it did not,
    /// `unchecked` when it is idle and not checked yet, `not_running` when this replica does
    /// not serve it; and when it was last seen answering.
    pub fn health(&self, id: InstanceId) -> (&'static str, Option<time::OffsetDateTime>) {
        match self.backend(id) {
            Some((_, b)) => {
                let (health, seen) = b.health();
                (health.as_str(), seen)
            }
            None => ("not_running", None),
        }
    }

    /// Counts every stored instance by health (from memory: the last checks and the feed).
    pub fn census(&self) -> Census {
        let known = self.known.read().expect("known lock");
        let backends = self.backends.read().expect("backends lock");
        let mut census = Census { total: known.len() as u64, ..Census::default() };
        for (id, k) in known.iter() {
            if k.provisioner == ProvisionerKind::Local {
                census.local = (census.local.0 + 1, census.local.1.saturating_add(k.memory_bytes));
            }
            let Some(served) = backends.get(id) else {
                census.unhealthy.push((*id, None));
                continue;
            };
            match served.backend.health_state() {
                Health::Healthy => {}
                Health::Unchecked => census.unchecked += 1,
                Health::Unhealthy => census.unhealthy.push((*id, served.backend.last_seen_healthy())),
            }
        }
        census
    }

    /// Checks the served instances that hold no connection ([`Backend::probe`]):
    /// `backend.idle_checks_per_second` of them at every second's beat, together (one wake-up
    /// for all, see [`crate::beat`]). Each is checked once per round over all of them, however
    /// many there are; busy ones are checked by their supervisors. A round takes at least
    /// `backend.health_check_interval`, the cadence of a connection's own checks, so a few idle
    /// instances are not dialled more often than that.
    pub async fn check_idle(self: Arc<Self>, cancel: CancellationToken) {
        let rate = self.settings.idle_checks_per_second as usize;
        if rate == 0 {
            return;
        }
        let mut round: Vec<InstanceId> = Vec::new();
        let mut round_started: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = crate::beat::sleep(std::time::Duration::from_secs(1)) => {}
                () = cancel.cancelled() => return,
            }
            if round.is_empty() {
                let now = tokio::time::Instant::now();
                if round_started.is_some_and(|started| now < started + self.settings.health_check_interval) {
                    continue;
                }
                round_started = Some(now);
                round = self.served();
            }
            // The next idle ones of this round (busy ones are skipped, not counted).
            let mut due = Vec::with_capacity(rate);
            while due.len() < rate
                && let Some(id) = round.pop()
            {
                if let Some((_, backend)) = self.backend(id)
                    && backend.is_idle()
                {
                    due.push(backend);
                }
            }
            tokio::select! {
                _ = futures_util::future::join_all(due.iter().map(|b| b.probe())) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    /// Provisions a stored instance and records the outcome; returns the status reached.
    pub async fn start(&self, rec: &InstanceRecord, how: Start) -> (InstanceStatus, Option<String>) {
        let inst = &rec.instance;
        if inst.kind != BackendKind::Standalone {
            return self.start_routed(rec).await;
        }
        let external_url = match &rec.sealed_url {
            Some(sealed) => match self.sealer.open(sealed).map(String::from_utf8) {
                Ok(Ok(url)) => Some(RedisUrl::new(url)),
                _ => {
                    return self
                        .set(
                            inst.id,
                            InstanceStatus::Error,
                            Some("the stored connection URL cannot be opened with this secret key".into()),
                        )
                        .await;
                }
            },
            None => None,
        };
        // Before any connection: a row written under a laxer configuration is refused too.
        if let Some(url) = &external_url
            && let Err(why) = self.check_tls(url.expose())
        {
            return self.set(inst.id, InstanceStatus::Error, Some(why.to_owned())).await;
        }
        let tls_ca_pem = rec.tls_ca_pem.clone();
        let spec = InstanceSpec {
            id: inst.id,
            memory_bytes: inst.memory_bytes,
            eviction_policy: inst.eviction_policy,
            external_url,
            tls_ca_pem,
        };
        // A trusted external server is served as stored, without a connection (its first
        // request connects), if the egress policy still admits it: the deployment's
        // administrator may have closed its address since.
        let started = match (inst.provisioner, how, &spec.external_url) {
            (ProvisionerKind::External, Start::Trusted, Some(url)) => {
                match self.egress.check_url(url.expose()).await {
                    Ok(()) => Ok(url.clone()),
                    Err(why) => {
                        Err(ProvisionError::Unreachable(format!("refused by the egress policy: {why}")))
                    }
                }
            }
            _ => self.provisioner(inst.provisioner).start(&spec).await,
        };
        let checked = !(inst.provisioner == ProvisionerKind::External && how == Start::Trusted);
        self.note_detail(inst.id, &started);
        let url = match started {
            Ok(url) => url,
            Err(e) => return self.set(inst.id, InstanceStatus::Error, Some(e.to_string())).await,
        };
        let client = match crate::egress::tenant_client(url.expose(), rec.tls_ca_pem.as_deref()) {
            Ok(c) => c,
            Err(_) => {
                return self
                    .set(
                        inst.id,
                        InstanceStatus::Error,
                        Some("the provisioner returned an unusable URL".into()),
                    )
                    .await;
            }
        };
        // Our own server: scripts run as their key scope's ACL user, created through the
        // default user. (An external server's users are its owner's business.)
        let scope_users = match inst.provisioner {
            ProvisionerKind::Local => match ScopeUsers::new() {
                Ok(users) => Some(users),
                Err(e) => {
                    return self
                        .set(inst.id, InstanceStatus::Error, Some(format!("no script users: {e}")))
                        .await;
                }
            },
            ProvisionerKind::External => None,
        };
        let label = format!("instance {}", inst.id);
        let (settings, tracker, cancel) = (self.settings.clone(), &self.tracker, self.cancel.clone());
        let backend = match inst.provisioner {
            ProvisionerKind::Local => {
                Backend::start(label, client, Hold::OnDemand, settings, tracker, cancel)
            }
            ProvisionerKind::External => Backend::start_checked(
                label,
                client,
                self.egress.resolver(),
                Hold::OnDemand,
                settings,
                tracker,
                cancel,
            ),
        };
        if checked {
            // The provisioner has just seen it answer.
            backend.record_check(true);
        }
        if let Some(roots) = rec.tls_ca_pem.as_deref().and_then(|ca| crate::egress::tls_roots(ca).ok()) {
            backend.verify_streams_with(roots);
        }
        if let Some(users) = scope_users {
            backend.run_scripts_as_scope_users(users);
        }
        self.serve(inst.id, inst.org_id, backend);
        if inst.status == InstanceStatus::Running && inst.status_reason.is_none() {
            // Nothing to record: a row written for nothing would be a change every replica reads.
            return (InstanceStatus::Running, None);
        }
        self.set(inst.id, InstanceStatus::Running, None).await
    }

    fn serve(&self, id: InstanceId, org: OrgId, backend: Arc<Backend>) {
        let replaced = self.backends.write().expect("backends lock").insert(id, Served { org, backend });
        drop(replaced); // stops a backend this instance had before, if any
    }

    /// Whether a topology's shape is valid and every address it lists passes the egress
    /// policy (the addresses its servers announce later are checked at each connect).
    pub async fn check_topology(&self, topology: &Topology) -> Result<(), Invalid> {
        topology.validate()?;
        let field = match topology {
            Topology::Sentinel(_) => "sentinels",
            Topology::Cluster(_) => "seeds",
        };
        for addr in topology.addresses() {
            let (host, port) =
                parse_address(addr).ok_or(Invalid { field, reason: "each address must be host:port" })?;
            if let Err(why) = self.egress.admitted(&host, port).await {
                tracing::info!(reason = %why, "a topology address refused by the egress policy");
                return Err(Invalid { field, reason: NOT_ALLOWED });
            }
        }
        Ok(())
    }

    /// A Sentinel or Cluster instance's servers, as the gateway sees them now.
    pub fn nodes(&self, id: InstanceId) -> Option<Vec<NodeStatus>> {
        Some(self.backend(id)?.1.routed()?.nodes())
    }

    /// Starts a Sentinel or Cluster instance: running once its primary (every primary, for a
    /// cluster) is connected within the external check's time, else `error` with the one
    /// reason external instances get.
    async fn start_routed(&self, rec: &InstanceRecord) -> (InstanceStatus, Option<String>) {
        let inst = &rec.instance;
        let opened = rec.sealed_url.as_ref().map(|sealed| self.sealer.open(sealed));
        let topology = match opened.map(|o| o.map(|bytes| serde_json::from_slice::<Topology>(&bytes))) {
            Some(Ok(Ok(t))) => t,
            _ => {
                let reason = "the stored topology cannot be opened with this secret key";
                return self.set(inst.id, InstanceStatus::Error, Some(reason.into())).await;
            }
        };
        let (tls, username, password) = match &topology {
            Topology::Sentinel(s) => (s.tls, s.username.clone(), s.password.clone()),
            Topology::Cluster(c) => (c.tls, c.username.clone(), c.password.clone()),
        };
        let first = topology.addresses().first().and_then(|a| parse_address(a));
        let Some(Ok(client)) = first.map(|(h, p)| redis::Client::open(node_url(&h, p, tls, None, None)))
        else {
            return self.set(inst.id, InstanceStatus::Error, Some("no usable address".into())).await;
        };
        let label = format!("instance {}", inst.id);
        let (settings, tracker) = (self.settings.clone(), self.tracker.clone());
        let egress = self.egress.resolver();
        let backend =
            Backend::start_routed(label.clone(), client, settings.clone(), self.cancel.clone(), |stop| {
                let dial = Dialer { label, egress, cfg: settings, tracker, stop, tls, username, password };
                match topology {
                    Topology::Sentinel(spec) => Routed::Sentinel(Sentinel::start(dial, spec)),
                    Topology::Cluster(spec) => Routed::Cluster(Cluster::start(dial, spec)),
                }
            });
        let routed = backend.routed().expect("a routed backend");
        if !routed.ready(EXTERNAL_CHECK_TIMEOUT).await {
            backend.stop();
            let detail = "the primary (or a cluster primary) could not be found or connected to in time";
            self.details.write().expect("details lock").insert(inst.id, detail.into());
            let reason = redisgate_core::provision::UNREACHABLE.to_owned();
            return self.set(inst.id, InstanceStatus::Error, Some(reason)).await;
        }
        self.details.write().expect("details lock").remove(&inst.id);
        self.serve(inst.id, inst.org_id, backend);
        self.set(inst.id, InstanceStatus::Running, None).await
    }

    fn note_detail(&self, id: InstanceId, started: &Result<RedisUrl, ProvisionError>) {
        let mut details = self.details.write().expect("details lock");
        match started {
            Err(ProvisionError::Unreachable(detail)) => details.insert(id, detail.clone()),
            _ => details.remove(&id),
        };
    }

    async fn set(
        &self,
        id: InstanceId,
        status: InstanceStatus,
        reason: Option<String>,
    ) -> (InstanceStatus, Option<String>) {
        if let Err(e) = self.store.set_instance_status(id, status, reason.as_deref()).await {
            tracing::error!(instance.id = %id, error = %e, "could not record instance status");
        }
        (status, reason)
    }

    /// Stops serving an instance (its backend stops, its streams end), destroys its server
    /// and data (local), forgets it.
    pub async fn delete(&self, rec: &InstanceRecord) -> Result<(), String> {
        let id = rec.instance.id;
        let served = self.backends.write().expect("backends lock").remove(&id);
        drop(served); // stops its backend: see `Served`
        self.details.write().expect("details lock").remove(&id);
        self.provisioner(rec.instance.provisioner).destroy(id).await.map_err(|e| e.to_string())
    }

    /// Starts every stored instance again (RedisGate restarted), concurrently, and learns
    /// them all ([`Instances::census`]). Local ones start their servers; external ones are
    /// served at once and connect with their first request ([`Start::Trusted`]).
    pub async fn restore_all(self: &Arc<Self>) {
        let records = match self.store.all_instances().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "could not list instances to restore");
                return;
            }
        };
        self.learn_all(&records);
        let starts = records.into_iter().map(|rec| {
            let me = Arc::clone(self);
            async move {
                let (status, reason) = me.start(&rec, Start::Trusted).await;
                tracing::debug!(instance.id = %rec.instance.id, status = status.as_str(), reason = reason.as_deref().unwrap_or(""), "instance restored");
            }
        });
        futures_util::future::join_all(starts).await;
    }

    fn learn_all(&self, records: &[InstanceRecord]) {
        let known = records.iter().map(|r| (r.instance.id, Self::known(r)));
        *self.known.write().expect("known lock") = known.collect();
    }

    fn known(rec: &InstanceRecord) -> Known {
        Known { provisioner: rec.instance.provisioner, memory_bytes: rec.instance.memory_bytes }
    }

    /// Follows a change of instance `id` in the store, made here or by another replica:
    /// serves an external instance another replica started, stops serving one that was
    /// deleted. (Local instances are `redis-server` children of the replica that created
    /// them, on its machine; other replicas cannot reach them, so they are not adopted.)
    /// An error leaves the change to be followed again.
    pub async fn follow(&self, id: InstanceId) -> Result<(), StoreError> {
        match self.store.instance(id).await {
            Ok(rec) => self.follow_record(id, Some(&rec)).await,
            Err(StoreError::NotFound) => self.follow_record(id, None).await,
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// [`Instances::follow`] with instance `id` as the store has it now (`None`: deleted).
    async fn follow_record(&self, id: InstanceId, rec: Option<&InstanceRecord>) {
        let rec = match rec {
            Some(rec) => rec,
            None => {
                self.known.write().expect("known lock").remove(&id);
                let removed = self.backends.write().expect("backends lock").remove(&id);
                if let Some(served) = removed {
                    drop(served); // stops its backend
                    tracing::info!(instance.id = %id, "instance deleted by another replica; no longer served");
                    // Stops a local server of ours that was deleted through another replica.
                    let _ = self.local.destroy(id).await;
                }
                return;
            }
        };
        self.known.write().expect("known lock").insert(id, Self::known(rec));
        let inst = &rec.instance;
        // Running: started by its creator, which is done with it (a pending one is still
        // being started, possibly here).
        if inst.provisioner == ProvisionerKind::External
            && inst.status == InstanceStatus::Running
            && self.backend(id).is_none()
        {
            let (status, _) = self.start(rec, Start::Trusted).await;
            tracing::info!(instance.id = %inst.id, status = status.as_str(), "instance started by another replica; now served here too");
        }
    }

    /// Follows the whole store again: when the feed no longer reaches back to where this
    /// replica stopped reading it (see `crate::feed`).
    pub async fn follow_all(&self) -> Result<(), StoreError> {
        let records = self.store.all_instances().await?;
        self.learn_all(&records);
        let gone = self.served().into_iter().filter(|id| !records.iter().any(|r| r.instance.id == *id));
        // Created here after the list was read, or really deleted? The store is asked again.
        for id in gone.collect::<Vec<_>>() {
            self.follow(id).await?;
        }
        // The records just read: no second read of each.
        for rec in &records {
            self.follow_record(rec.instance.id, Some(rec)).await;
        }
        Ok(())
    }

    /// Live stats of a running instance.
    pub async fn stats(&self, id: InstanceId) -> Option<Stats> {
        let (_, backend) = self.backend(id)?;
        // A cluster's figures are its primaries' added up.
        let mut total: Option<Stats> = None;
        for text in backend.info(None).await? {
            let s = Self::server_stats(&text);
            total = Some(match total {
                None => s,
                Some(t) => Stats {
                    used_memory_bytes: t.used_memory_bytes + s.used_memory_bytes,
                    keys: t.keys + s.keys,
                    ops_per_sec: t.ops_per_sec + s.ops_per_sec,
                    connected_clients: t.connected_clients + s.connected_clients,
                },
            });
        }
        total
    }

    fn server_stats(text: &str) -> Stats {
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                .unwrap_or(0)
        };
        // db0:keys=N,expires=...
        let keys = text
            .lines()
            .filter_map(|l| {
                l.strip_prefix("db")?.split_once(":keys=")?.1.split(',').next()?.parse::<u64>().ok()
            })
            .sum();
        Stats {
            used_memory_bytes: field("used_memory"),
            keys,
            ops_per_sec: field("instantaneous_ops_per_sec"),
            connected_clients: field("connected_clients"),
        }
    }

    /// Stops the local servers (data kept) at shutdown, and says so: their status is
    /// `stopped` until the next start brings them back.
    pub async fn shutdown(&self) {
        let served: Vec<InstanceId> =
            self.backends.write().expect("backends lock").drain().map(|(id, _)| id).collect();
        self.local.shutdown().await;
        self.external.shutdown().await;
        for id in served {
            let Ok(rec) = self.store.instance(id).await else { continue };
            if rec.instance.provisioner == ProvisionerKind::Local {
                self.set(
                    id,
                    InstanceStatus::Stopped,
                    Some("RedisGate stopped; it starts again with RedisGate".into()),
                )
                .await;
            }
        }
    }
}
