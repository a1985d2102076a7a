//! The connection skeleton every session runs on, whatever its protocol: the run loop (closure, shutdown,
//! client messages, session commands, the protocol's deadline), the request rate, the subscription
//! open/close sequence with the hub and the node, and the finish that ends every subscription and
//! unregisters the connection. A protocol supplies only its decisions, through [`Decisions`].

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use litemap::LiteMap;
use tokio::time::Instant;

use crate::disconnect::Disconnect;
use crate::errors::ClientError;
use crate::hub::{CommandReceiver, DeliveryGate, SessionCommand, SessionHandle, Subscriber};
use crate::limits::{CommandRate, Verdict};
use crate::metrics::ConnectionMetrics;
use crate::node::Node;
use crate::outbound::Outbound;
use crate::policy::Grant;
use crate::protocol::Protocol;

use super::Incoming;

/// What a protocol decides; the skeleton does the rest. The async steps are boxed where the skeleton
/// awaits them: they run rarely next to the time a connection spends idle, and their futures (plugin
/// calls, round trips to Redis) would otherwise be part of every idle connection's size.
pub(super) trait Decisions: Sized {
    /// What this protocol remembers of one subscription, to end it.
    type Subscription;

    /// The state the skeleton shares with the protocol.
    fn connection(&self) -> &Connection<Self::Subscription>;

    /// The same, to change.
    fn connection_mut(&mut self) -> &mut Connection<Self::Subscription>;

    /// The hub's handle on this connection, once it is registered there.
    fn handle(&self) -> Option<&Arc<SessionHandle>>;

    /// Runs once before anything is read; an error closes the connection without a finish (nothing was
    /// registered yet).
    async fn opened(&mut self) -> Result<(), Disconnect> {
        Ok(())
    }

    /// When [`Decisions::deadline_passed`] is next due.
    fn deadline(&self) -> Instant;

    /// A message from the client (or its transport); an error closes the connection.
    async fn incoming(&mut self, item: Incoming) -> Result<(), Disconnect>;

    /// A command from the rest of the server.
    async fn command(&mut self, command: SessionCommand);

    /// The deadline passed; an error closes the connection.
    async fn deadline_passed(&mut self, now: Instant) -> Result<(), Disconnect>;

    /// Who the connection is to plugins, once it got past connecting (`None` before: a connection that
    /// never connected is not reported to the disconnect hook).
    fn connected_client(&self) -> Option<crate::plugin::bindings::ClientInfo>;

    /// The protocol's part of the finish, before the subscriptions end.
    async fn finishing(&mut self) {}

    /// Ends one subscription, already taken out of [`Connection::subscriptions`]; no reply.
    async fn leave(&mut self, channel: &str, subscription: Self::Subscription);

    /// Ends the subscription to `channel`, if there is one; whether there was.
    async fn unsubscribe(&mut self, channel: &str) -> bool {
        match self.connection_mut().subscriptions.remove(channel) {
            Some(subscription) => {
                self.leave(channel, subscription).await;
                true
            }
            None => false,
        }
    }
}

/// What a subscription takes besides publications.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Wants {
    /// Join and leave pushes.
    pub(super) join_leave: bool,
    /// Publications as deltas (delta compression negotiated).
    pub(super) delta: bool,
}

/// What every connection has, whatever its protocol.
#[derive(Debug)]
pub(super) struct Connection<S> {
    pub(super) node: Arc<Node>,
    pub(super) outbound: Arc<Outbound>,
    /// The client's address.
    pub(super) remote: SocketAddr,
    /// The protocol spoken, which decides how the hub encodes for its subscriptions.
    protocol: Protocol,
    /// Commands from the rest of the server, once the connection is registered with the hub.
    pub(super) commands: Option<CommandReceiver>,
    /// The connection's subscriptions by channel (add with [`Connection::add_subscription`]). A sorted
    /// vector, not a hash map: a connection holds a handful (at most `client.max_channels`), and an idle
    /// connection with one subscription keeps one entry instead of a hash table's four buckets.
    pub(super) subscriptions: LiteMap<String, S>,
    rate: CommandRate,
    /// The instruments of its kind of connection; counted open while this lives.
    pub(super) metrics: Counted,
    /// The type of the command being handled, which its errors are counted under.
    command: &'static str,
}

/// Counts a connection open from its start until it is dropped, whichever way the session ends.
#[derive(Debug)]
pub(super) struct Counted(pub(super) Arc<ConnectionMetrics>);

impl Counted {
    fn new(metrics: Arc<ConnectionMetrics>) -> Self {
        metrics.connects.inc();
        metrics.connections.inc();
        Self(metrics)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

impl<S> Connection<S> {
    /// The shared state of a connection that just opened.
    pub(super) fn new(
        node: Arc<Node>,
        outbound: Arc<Outbound>,
        remote: SocketAddr,
        protocol: Protocol,
        transport: &'static str,
    ) -> Self {
        let rate = node.admission.command_rate();
        let metrics = Counted::new(node.metrics.connection_kind(protocol.label(), transport));
        Self {
            metrics,
            command: "",
            node,
            outbound,
            remote,
            protocol,
            commands: None,
            subscriptions: LiteMap::new(),
            rate,
        }
    }

    /// A command of type `command` arrived: counted, and its errors are counted under it.
    pub(super) fn handling(&mut self, command: &'static str) {
        self.command = command;
        self.node.metrics.command(self.protocol.label(), command);
    }

    /// The command being handled is answered with the error `code`.
    pub(super) fn command_failed(&self, code: u32) {
        self.node
            .metrics
            .command_error(self.protocol.label(), self.command, code);
    }

    /// Counts one request of `client` against the connection's rate: `Ok(true)` to handle it, `Ok(false)`
    /// to refuse it (each protocol answers that its own way), an error to close a connection refused too
    /// often in a row.
    pub(super) fn within_rate(&mut self, client: &str) -> Result<bool, Disconnect> {
        let verdict = self.rate.check();
        if verdict != Verdict::Allow {
            self.node.metrics.limit_refused("commands_per_second");
        }
        match verdict {
            Verdict::Allow => Ok(true),
            Verdict::Refuse => Ok(false),
            Verdict::Disconnect => {
                tracing::info!(protocol = ?self.protocol, client, remote = %self.remote, "client dropped: too many requests");
                Err(Disconnect::TOO_MANY_REQUESTS)
            }
        }
    }

    /// Records a subscription. The first one gets room for itself alone: most connections never add a
    /// second, and a vector's first growth would reserve four.
    pub(super) fn add_subscription(&mut self, channel: String, subscription: S) {
        if self.subscriptions.is_empty() {
            self.subscriptions = LiteMap::with_capacity(1);
        }
        self.subscriptions.insert(channel, subscription);
    }

    /// Whether the connection holds as many subscriptions as it may.
    pub(super) fn subscriptions_full(&self) -> bool {
        let full = self.subscriptions.len() >= self.node.config.client.max_channels;
        if full {
            self.node.metrics.limit_refused("max_channels");
        }
        full
    }

    /// Registers a subscription with the hub, its frames held until the protocol queues its reply through
    /// the returned gate, and opens the channel on the node for its first subscriber here; undone when
    /// that fails. `wants` says which pushes it takes; `admitted` is the channel policy's admission.
    pub(super) async fn open(
        &self,
        handle: &Arc<SessionHandle>,
        channel: &str,
        wants: Wants,
        admitted: Grant,
    ) -> Result<Arc<DeliveryGate>, ClientError> {
        let gate = Arc::new(DeliveryGate::held());
        let subscriber = Subscriber {
            session: handle.clone(),
            outbound: handle.outbound.clone(),
            protocol: self.protocol,
            join_leave: wants.join_leave,
            gate: gate.clone(),
            admitted,
            delta: wants.delta,
        };
        let first = self.node.hub.subscribe(channel, subscriber);
        self.metrics.0.subscriptions.inc();
        if first && let Err(error) = self.node.channel_opened(channel).await {
            tracing::warn!(channel, %error, "opening the channel on this node failed");
            self.close(channel, &handle.client).await;
            return Err(error.into());
        }
        Ok(gate)
    }

    /// Takes `client`'s subscription out of the hub, and closes the channel on the node for its last
    /// subscriber here: the undo of [`Connection::open`].
    pub(super) async fn close(&self, channel: &str, client: &str) {
        self.metrics.0.subscriptions.dec();
        if self.node.hub.unsubscribe(channel, client)
            && let Err(error) = self.node.channel_closed(channel).await
        {
            tracing::warn!(channel, %error, "closing the channel on this node failed");
        }
    }
}

/// What woke the run loop.
enum Event {
    Closed,
    Shutdown,
    Incoming(Option<Incoming>),
    Command(SessionCommand),
    Deadline,
}

/// Runs a session until the client goes away or a close is decided, then finishes it. The close (if any)
/// is left in the outbound queue for the writer.
///
/// Not an `async fn`: that would move `session` from its argument into a local, and a future keeps room
/// for both for its whole life (rust-lang/rust#62958) — hundreds of bytes on every idle connection. The
/// `async move` block uses the captured session in place.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store the session twice"
)]
pub(super) fn run<D: Decisions>(
    mut session: D,
    incoming: impl Stream<Item = Incoming>,
) -> impl Future<Output = ()> {
    async move {
        let mut incoming = std::pin::pin!(incoming);
        if let Err(refused) = Box::pin(session.opened()).await {
            session.connection().metrics.0.disconnected(refused.code);
            session.connection().outbound.close(refused);
            return;
        }
        loop {
            let deadline = session.deadline();
            let Connection {
                node,
                outbound,
                commands,
                ..
            } = session.connection_mut();
            let event = tokio::select! {
                _ = outbound.closed() => Event::Closed,
                _ = node.shutdown.cancelled() => Event::Shutdown,
                item = incoming.next() => Event::Incoming(item),
                Some(command) = next_command(commands.as_mut()) => Event::Command(command),
                _ = tokio::time::sleep_until(deadline) => Event::Deadline,
            };
            let outcome = match event {
                Event::Closed => break,
                Event::Shutdown => Err(Disconnect::SHUTDOWN),
                Event::Incoming(None) => break,
                Event::Incoming(Some(item)) => Box::pin(session.incoming(item)).await,
                Event::Command(command) => {
                    Box::pin(session.command(command)).await;
                    Ok(())
                }
                Event::Deadline => Box::pin(session.deadline_passed(Instant::now())).await,
            };
            if let Err(disconnect) = outcome {
                session.connection().outbound.close(disconnect);
                break;
            }
        }
        Box::pin(finish(session)).await;
    }
}

/// Tells the disconnect plugins that a connected client went away, with its close code and reason
/// (`3000` when the client left without one).
async fn report_disconnect<D: Decisions>(session: &D) {
    let plugins = &session.connection().node.plugins;
    if !plugins.any(crate::plugin::bindings::Hooks::DISCONNECT) {
        return;
    }
    let Some(client) = session.connected_client() else {
        return;
    };
    let (code, reason) = match session.connection().outbound.close_reason() {
        Some(d) => (u32::from(d.code), d.reason.into_owned()),
        None => (3000, "connection closed".to_owned()),
    };
    plugins
        .disconnect(crate::plugin::bindings::DisconnectEvent {
            client,
            code,
            reason,
        })
        .await;
}

async fn next_command(commands: Option<&mut CommandReceiver>) -> Option<SessionCommand> {
    match commands {
        Some(commands) => Some(commands.recv().await),
        None => std::future::pending().await,
    }
}

/// After the run: the disconnect plugins hear of a connection that had connected (whatever its protocol),
/// the protocol's part, then every subscription ends and the connection leaves the hub.
async fn finish<D: Decisions>(mut session: D) {
    report_disconnect(&session).await;
    session.finishing().await;
    let subscriptions = std::mem::take(&mut session.connection_mut().subscriptions);
    for (channel, subscription) in subscriptions {
        session.leave(&channel, subscription).await;
    }
    let connection = session.connection();
    let client = session.handle().map_or("", |handle| &*handle.client);
    if let Some(handle) = session.handle() {
        connection.node.hub.unregister(&handle.client, &handle.user);
    }
    let (protocol, remote) = (connection.protocol, connection.remote);
    let close = connection.outbound.close_reason();
    let metrics = &connection.metrics.0;
    metrics.disconnected(close.as_ref().map_or(0, |d| d.code));
    if close.as_ref() == Some(&Disconnect::SLOW) {
        metrics.slow_closes.inc();
    }
    match close {
        Some(d) if d == Disconnect::SLOW => {
            tracing::warn!(?protocol, client, %remote, "client dropped as slow: outbound queue full")
        }
        Some(d) => {
            tracing::debug!(?protocol, client, %remote, code = d.code, reason = %d.reason, "client disconnected")
        }
        None => tracing::debug!(?protocol, client, %remote, "client went away"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::pusher::PusherSession;
    use crate::session::{ConnectionInfo, Session};

    /// The future `run` returns lives as long as its connection: an idle connection is mostly this size.
    /// The bound is generous on purpose; the sizes are printed (`--nocapture`) to compare changes.
    #[tokio::test]
    async fn run_futures_stay_small() {
        let mut config = crate::config::Config::default();
        config.pusher.app = crate::config::PusherAppConfig {
            id: "1".into(),
            key: "key".into(),
            secret: "secret".into(),
            ..Default::default()
        };
        let node = Node::new(config).expect("a node");
        let app = node.pusher.by_key("key").expect("the app");
        let outbound = Arc::new(Outbound::new(1 << 16));
        let counted = app.connect(&outbound).expect("within the app's quota");
        let connection = ConnectionInfo {
            remote: SocketAddr::from(([127, 0, 0, 1], 1)),
            transport_ping: false,
            transport: "websocket",
            headers: crate::session::Pairs::default(),
            query: crate::session::Pairs::default(),
            emulation: None,
        };
        let incoming = || futures_util::stream::pending::<Incoming>();
        let centrifuge = Session::new(
            node.clone(),
            outbound.clone(),
            connection.clone(),
            &crate::protocol::centrifuge::Centrifuge,
        );
        let centrifuge = centrifuge.run(incoming());
        let pusher = PusherSession::new(node, app, counted, outbound, connection).run(incoming());
        let sizes = [
            std::mem::size_of_val(&centrifuge),
            std::mem::size_of_val(&pusher),
        ];
        println!(
            "run future sizes: centrifuge {}, pusher {}",
            sizes[0], sizes[1]
        );
        assert!(sizes.iter().all(|&size| size <= 2048), "{sizes:?}");
    }
}
