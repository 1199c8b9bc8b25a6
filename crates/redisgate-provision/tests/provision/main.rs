//! Provisioner tests against real `redis-server` processes; one binary for the crate.

mod external;
mod hardening;
mod local;
mod support;
