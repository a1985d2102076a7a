//! Herald: a real-time push server speaking the Centrifugo client protocol and the Pusher protocol, with
//! their HTTP server APIs.
//!
//! # Layout
//!
//! Dependencies point downward only:
//!
//! - [`server`] and [`transport`]: the port, HTTP routing, WebSocket upgrade and frame I/O.
//! - [`protocol`]: pure codecs (Centrifugo JSON, Pusher) between wire frames and commands, replies and pushes.
//! - [`session`]: one per connection — state machine, heartbeat, bounded outbound queue, subscriptions.
//! - [`hub`]: this node's sessions and subscriptions; fan-out of encoded frames.
//! - [`engine`]: broker, history and presence behind traits; [`engine::memory`] is the default,
//!   [`engine::redis`] runs many nodes on Redis.
//! - [`api`]: the HTTP server API, another entrance to the same [`node`] operations; [`pusher_api`] is the
//!   Pusher HTTP API, served beside it.
//! - [`queue`]: queue ingestion, a third entrance: Redis Streams entries published through [`node`].
//! - [`nodes`]: the cluster's node list, announced through the engine's presence; [`control`]: commands for
//!   the sessions of every node, through the engine's broker.
//! - [`webhooks`]: Pusher webhooks, queued per URL and POSTed in signed batches, retried with backoff.
//! - [`config`], [`channel`], [`errors`], [`disconnect`]: configuration, channel rules, and the registries of
//!   codes clients see.

pub mod api;
pub mod channel;
pub mod config;
pub mod control;
pub mod disconnect;
pub mod engine;
pub mod errors;
pub mod glob;
pub mod hub;
pub mod limits;
pub mod node;
pub mod nodes;
pub mod plugin;
pub mod policy;
pub mod protocol;
pub mod pusher_api;
pub mod queue;
pub mod server;
pub mod session;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;
pub mod webhooks;
