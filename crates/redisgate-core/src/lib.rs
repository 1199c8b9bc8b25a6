//! Domain rules of RedisGate that do no I/O.
//!
//! # Layout
//! - [`command`]: one Redis command as raw byte arguments, and the errors of building one.
//! - [`request`]: the Upstash REST request forms (JSON body, URL path, `/pipeline`,
//!   `/multi-exec`, the SSE endpoints) parsed into a [`request::Request`].
//! - [`catalog`]: every command the gateway knows, its class and its Redis flags.
//! - [`policy`]: which commands a token may run through a shared, multiplexed connection.
//! - [`compat`]: the places where Upstash answers differently from plain Redis, emulated.
//! - [`codec`]: Redis replies written as Upstash JSON (plain or base64) or as raw RESP2.
//! - Tenancy, one module per noun: [`ids`], [`account`] (users), [`org`] (organizations,
//!   roles and the permission table), [`instance`], [`apikey`], [`quota`], [`capacity`]
//!   (host-wide caps on local instances), [`audit`], [`backup`] (instances' backups and their
//!   daily schedule).
//! - [`page`]: keyset paging of an organization's listings (cursor, limit, page).
//! - [`store`]: the metadata [`store::Store`] trait that SQLite and PostgreSQL implement.
//! - [`provision`]: the [`provision::Provisioner`] trait that runs instances' Redis servers.
//! - [`egress`]: which resolved addresses an external instance's URL may reach.
//! - [`topology`]: Sentinel and Cluster instances' servers, and the cluster's slot rules.
//! - [`usage`]: instances' usage history: the data plane's per-instance counters, latency
//!   buckets, retention tiers and down-sampling.
#![forbid(unsafe_code)]

pub mod account;
pub mod apikey;
pub mod audit;
pub mod backup;
pub mod capacity;
pub mod catalog;
pub mod codec;
pub mod command;
pub mod compat;
pub mod egress;
pub mod ids;
pub mod instance;
pub mod org;
pub mod page;
pub mod policy;
pub mod provision;
pub mod quota;
pub mod ratelimit;
pub mod request;
pub mod store;
pub mod topology;
pub mod usage;

pub use redis::Value;
