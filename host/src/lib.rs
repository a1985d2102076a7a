//! Herald: a real-time push server speaking the Centrifugo client protocol and the Pusher protocol, with
//! their HTTP server APIs.
//!
//! # Layout
//!
//! Modules use their own layer or lower ones, never a higher one (`host/tests/layering.rs` checks it from
//! the imports). From the bottom up:
//!
//! - [`disconnect`], [`glob`], [`sync`] (poison-tolerant locks), [`logging`], [`metrics`] (the Prometheus
//!   instruments the layers above count into); [`engine`]: broker, history and presence behind traits; [`engine::memory`]
//!   is the default, [`engine::redis`] runs many nodes on Redis.
//! - [`errors`], [`channel`] (names, kinds, namespaces), [`policy`] (who may touch a channel, asked by every
//!   entrance), [`limits`], [`plugin`] (the Wasm plugin runtime and hook chains).
//! - [`protocol`]: pure codecs (Centrifugo JSON, Pusher) between wire frames and commands, replies and pushes.
//! - [`outbound`]: a connection's bounded outbound queue; [`webhooks`]: Pusher webhooks, queued per URL and
//!   POSTed in signed batches.
//! - [`config`]: the configuration and its sections; [`hub`]: this node's sessions and subscriptions and
//!   the fan-out of encoded frames.
//! - [`control`]: commands for the sessions of every node, routed apart from the hub's publications;
//!   [`pusher_app`]: the Pusher apps' behaviour beside the core (their channel spaces, cache channels,
//!   occupancy, webhooks, limits);
//!   [`estate`]: what a node owes the cluster for its members, settled by a survivor if it crashes.
//! - [`node`]: the shared core and the operations every entrance shares.
//! - [`session`]: one per connection — state machine, heartbeat, subscriptions.
//! - [`api`], [`pusher_api`], [`queue`], [`admin`]: the other entrances (server API, Pusher HTTP API, queue
//!   ingestion, the admin page); [`nodes`]: the cluster's node list; [`counts`]: subscriber counts across
//!   the cluster.
//! - [`transport`]: TCP/TLS accept, HTTP routing, WebSocket upgrade and frame I/O.
//! - [`server`]: composition — starts the node with what runs beside it, and serves; [`reload`]: the
//!   configuration file's changes applied while running.

pub mod admin;
pub mod api;
pub mod channel;
pub mod config;
pub mod control;
pub mod counts;
pub mod disconnect;
pub mod engine;
pub mod errors;
pub mod estate;
pub mod glob;
pub mod hub;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod nodes;
pub mod outbound;
pub mod plugin;
pub mod policy;
pub mod protocol;
pub mod pusher_api;
pub mod pusher_app;
pub mod queue;
pub mod reload;
pub mod server;
pub mod session;
pub mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;
pub mod webhooks;
