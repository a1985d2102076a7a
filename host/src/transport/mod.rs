//! Transports: how client connections reach a session. Each transport turns its wire into
//! [`crate::session::Incoming`] items and writes what the session's outbound queue holds; sessions never
//! see a socket, so the WebSocket library can change and other transports can be added.

mod echo;
mod emulation;
pub mod http;
mod pusher;
mod socket;
pub mod tls;
mod uni;
mod websocket;

pub use echo::echo_handler;
pub use emulation::emulation_routes;
pub use pusher::pusher_handler;
pub use tls::{Listener, ProxyProtocol};
pub use uni::uni_routes;
pub use websocket::{NotAnUpgrade, Upgrade, websocket_handler};
