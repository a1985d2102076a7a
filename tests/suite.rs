//! Herald's integration and end-to-end tests, one module per concern, linked into one test binary.
//!
//! Run one concern with `cargo test -p herald-tests --test suite <module>::`, e.g. `api::`.

mod admin;
mod api;
mod authorization;
mod bad_input;
mod centrifuge;
mod cluster;
mod dead_node;
mod emulation;
mod examples;
mod expiry;
mod fanout;
mod heartbeat;
mod hostile;
mod limits;
mod load_balancer;
mod metrics;
mod monitoring;
mod origin;
mod plugins;
mod pusher;
mod pusher_apps;
mod pusher_cluster;
mod pusher_sdk;
mod pusher_webhooks;
mod queue;
mod recovery;
mod redis_outage;
mod redis_sentinel;
mod redis_tls;
mod sdk;
mod sdk_jwt;
mod shutdown;
mod tls;
