//! Integration tests: real `redis-server` processes on free ports, the real application on
//! port 0, real HTTP clients. One test binary for the crate (see ARCHITECTURE.md).

mod accounts;
mod api;
mod backups;
mod cluster;
mod commands;
mod common;
mod console;
mod credentials;
mod deploy;
mod egress;
mod egress_check;
mod egress_tls;
mod feed;
mod host;
mod instances;
mod isolation;
mod limits;
mod on_demand;
mod ops;
mod paging;
mod protocol;
mod python_sdk;
mod ratelimit;
mod resilience;
mod schema;
mod scripts;
mod sentinel;
mod sse;
mod tls;
mod topo;
mod upstash_libs;
mod usage;
