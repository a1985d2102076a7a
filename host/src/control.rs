//! Commands for sessions wherever they are: the server API's `disconnect`, `subscribe` and `unsubscribe`
//! and the Pusher API's `terminate_connections` reach the connections of every node.
//!
//! Client commands for an emulated session (HTTP streaming, SSE) held by another node travel the same way,
//! on that node's own channel ([`node_channel`]), and are handed to the transport that holds the session
//! ([`EmulationSink`]).
//!
//! A command travels as a publication on a channel no client can name, through the engine's broker like
//! any other (so it crosses nodes with the Redis engine and stays in-process with the memory engine);
//! every node subscribes to it at start, and its [`Router`] hands each command to the matching local
//! sessions while every other channel goes to the hub, which knows nothing of commands.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::disconnect::Disconnect;
use crate::engine::{
    Broker, BrokerEventHandler, ClientInfo, EngineError, Publication, PublishOptions,
    StreamPosition,
};
use crate::hub::{Hub, ServerSubscribe, SessionCommand};

/// The channel commands travel on (a control character first: no client channel name has one).
pub const CONTROL_CHANNEL: &str = "\u{1}herald:control";

/// Where the channels of single nodes start ([`node_channel`]).
const NODE_CHANNEL_PREFIX: &str = "\u{1}herald:node:";

/// The channel of commands for one node only: the client commands of the emulated sessions it holds.
pub fn node_channel(node_id: &str) -> String {
    format!("{NODE_CHANNEL_PREFIX}{node_id}")
}

/// Client commands for an emulated session, posted to a node that does not hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emulated {
    /// The session's name.
    pub session: String,
    /// The commands, as the client sent them.
    pub data: Bytes,
    /// Whether they are Protobuf (else JSON text).
    pub binary: bool,
}

/// Sends client commands to the node holding their emulated session.
pub async fn send_to_node(
    broker: &dyn Broker,
    node_id: &str,
    emulated: &Emulated,
) -> Result<(), EngineError> {
    // MessagePack, as the commands may be Protobuf bytes.
    let data = rmp_serde::to_vec_named(emulated).expect("commands serialise");
    let publication = Publication {
        data: Bytes::from(data),
        ..Publication::default()
    };
    broker
        .publish(
            &node_channel(node_id),
            publication,
            &PublishOptions::default(),
        )
        .await
        .map(|_| ())
}

/// Takes client commands for the emulated sessions of this node (the HTTP emulation transport, which
/// registers itself with [`Router::serve_emulation`]).
pub trait EmulationSink: Send + Sync + std::fmt::Debug {
    /// Hands `data` (Protobuf when `binary`, else JSON text) to the session named `session`, if this node
    /// holds it.
    fn deliver(&self, session: &str, data: Bytes, binary: bool);
}

/// Which connections a command is for: a user's (`""` is every anonymous connection), or one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The user id.
    pub user: String,
    /// Only this connection of the user.
    pub client: Option<String>,
    /// Connections (client ids) left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

impl Target {
    /// A user's connections, or the one with `client`; none left out.
    pub fn connections(user: String, client: Option<String>) -> Self {
        Self {
            user,
            client,
            except: Vec::new(),
        }
    }
}

/// What to do to the targeted connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Close with this code and reason.
    Disconnect {
        /// The close code.
        code: u16,
        /// The reason.
        reason: String,
    },
    /// Subscribe them to a channel server-side.
    Subscribe(ServerSubscribe),
    /// Change when they expire, or expire them now.
    Refresh {
        /// End them as expired now.
        #[serde(default)]
        expired: bool,
        /// When they expire, unix seconds; never when absent.
        #[serde(default)]
        expire_at: Option<u64>,
    },
    /// Unsubscribe them from a channel.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
}

/// A command for sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Whom it is for.
    pub target: Target,
    /// What to do.
    pub action: Action,
}

impl Command {
    /// Closes the target's connections.
    pub fn disconnect(target: Target, disconnect: &Disconnect) -> Self {
        Self {
            target,
            action: Action::Disconnect {
                code: disconnect.code,
                reason: disconnect.reason.to_string(),
            },
        }
    }
}

/// Sends a command to the sessions of every node (this one included).
pub async fn send(broker: &dyn Broker, command: &Command) -> Result<(), EngineError> {
    let data = serde_json::to_vec(command).expect("a command serialises");
    let publication = Publication {
        data: Bytes::from(data),
        tags: BTreeMap::new(),
        ..Publication::default()
    };
    broker
        .publish(CONTROL_CHANNEL, publication, &PublishOptions::default())
        .await
        .map(|_| ())
}

/// What the engine delivers on this node, routed: commands on [`CONTROL_CHANNEL`] to the sessions they
/// name, everything else to the hub's fan-out.
#[derive(Debug)]
pub struct Router {
    hub: Arc<Hub>,
    emulation: Mutex<Option<Arc<dyn EmulationSink>>>,
}

impl Router {
    /// Routes to `hub`.
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Self {
            hub,
            emulation: Mutex::new(None),
        })
    }

    /// Sends the commands for emulated sessions arriving on this node's channel to `sink`.
    pub fn serve_emulation(&self, sink: Arc<dyn EmulationSink>) {
        *crate::sync::lock(&self.emulation) = Some(sink);
    }
}

impl BrokerEventHandler for Router {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        position: StreamPosition,
    ) {
        if channel == CONTROL_CHANNEL {
            apply(&self.hub, &publication);
        } else if channel.starts_with(NODE_CHANNEL_PREFIX) {
            let sink = crate::sync::lock(&self.emulation).clone();
            match (rmp_serde::from_slice::<Emulated>(&publication.data), sink) {
                (Ok(emulated), Some(sink)) => {
                    sink.deliver(&emulated.session, emulated.data, emulated.binary);
                }
                (Err(error), _) => tracing::warn!(%error, "unreadable emulation command ignored"),
                (Ok(_), None) => {}
            }
        } else {
            self.hub.handle_publication(channel, publication, position);
        }
    }

    fn handle_join(&self, channel: &str, info: Arc<ClientInfo>) {
        self.hub.handle_join(channel, info);
    }

    fn handle_leave(&self, channel: &str, info: Arc<ClientInfo>) {
        self.hub.handle_leave(channel, info);
    }

    fn handle_position(&self, channel: &str, position: StreamPosition) {
        self.hub.handle_position(channel, position);
    }
}

/// Carries out a command that arrived on [`CONTROL_CHANNEL`] on this node's sessions.
fn apply(hub: &Hub, publication: &Publication) {
    let command: Command = match serde_json::from_slice(&publication.data) {
        Ok(command) => command,
        Err(error) => {
            // Another version of Herald in the cluster, or a stray publish: nothing to do safely.
            tracing::warn!(%error, "unreadable control command ignored");
            return;
        }
    };
    let Target {
        user,
        client,
        except,
    } = &command.target;
    let sessions = hub.sessions(user, client.as_deref());
    for session in sessions
        .iter()
        .filter(|session| !except.iter().any(|id| **id == *session.client))
    {
        match &command.action {
            Action::Disconnect { code, reason } => session.disconnect(Disconnect {
                code: *code,
                reason: reason.clone().into(),
            }),
            Action::Subscribe(request) => {
                session.command(SessionCommand::Subscribe(request.clone()));
            }
            Action::Refresh { expired, expire_at } => {
                session.command(SessionCommand::Refresh {
                    expired: *expired,
                    expire_at: *expire_at,
                });
            }
            Action::Unsubscribe { channel } => {
                session.command(SessionCommand::Unsubscribe {
                    channel: channel.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_survive_the_wire() {
        let command = Command::disconnect(
            Target {
                user: "42".into(),
                client: None,
                except: vec!["c1".into()],
            },
            &Disconnect::FORCE_DISCONNECT,
        );
        let data = serde_json::to_vec(&command).unwrap();
        assert_eq!(serde_json::from_slice::<Command>(&data).unwrap(), command);
    }

    /// A node of the previous version sends subscribe commands with only a channel, and no `except`.
    #[test]
    fn commands_of_the_previous_version_are_read() {
        let old = r#"{"target":{"user":"u","client":null},"action":{"subscribe":{"channel":"x"}}}"#;
        let command: Command = serde_json::from_str(old).unwrap();
        assert!(command.target.except.is_empty());
        assert_eq!(
            command.action,
            Action::Subscribe(ServerSubscribe {
                channel: "x".into(),
                ..Default::default()
            })
        );
    }
}
