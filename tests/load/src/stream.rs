//! A subscriber over Herald's HTTP emulation instead of WebSocket (`--transport http-stream` or `sse`,
//! Centrifugo protocol): the connect and subscribe commands open the stream (the body of
//! `POST /connection/http_stream`, or `cf_connect` of `GET /connection/sse`), replies and pushes arrive on
//! it, and what the client sends after (pongs, publishes) goes to `POST /emulation` with the session the
//! connect reply named.

use std::net::IpAddr;

use clap::ValueEnum;
use serde_json::Value;

/// How a connection reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Transport {
    /// A WebSocket (every protocol).
    Websocket,
    /// Newline-delimited JSON on a streaming HTTP response (Centrifugo protocol).
    HttpStream,
    /// Server-Sent Events (Centrifugo protocol).
    Sse,
}

/// One emulated connection's stream and its way back.
#[derive(Debug)]
pub(crate) struct StreamLink {
    response: reqwest::Response,
    buffered: String,
    sse: bool,
    client: reqwest::Client,
    emulation: String,
    session: String,
    node: String,
}

impl StreamLink {
    /// Opens the stream from `source` to `base` (`http://host:port`) with `commands` (newline-separated).
    pub(crate) async fn open(
        transport: Transport,
        base: &str,
        source: IpAddr,
        commands: &str,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .local_address(source)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let request = match transport {
            Transport::HttpStream => client
                .post(format!("{base}/connection/http_stream"))
                .header("content-type", "application/json")
                .body(commands.to_owned()),
            Transport::Sse => client
                .get(format!("{base}/connection/sse"))
                .query(&[("cf_connect", commands)]),
            Transport::Websocket => return Err("not a streaming transport".into()),
        };
        let response = request.send().await.map_err(|e| format!("open: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("open: HTTP {}", response.status()));
        }
        Ok(Self {
            response,
            buffered: String::new(),
            sse: transport == Transport::Sse,
            client,
            emulation: format!("{base}/emulation"),
            session: String::new(),
            node: String::new(),
        })
    }

    /// The next message (one JSON text), `None` when the stream ended.
    pub(crate) async fn next(&mut self) -> Result<Option<String>, String> {
        let separator = if self.sse { "\n\n" } else { "\n" };
        loop {
            if let Some(end) = self.buffered.find(separator) {
                let item: String = self.buffered.drain(..end + separator.len()).collect();
                let message = if self.sse {
                    item.lines()
                        .filter_map(|line| line.strip_prefix("data: "))
                        .collect::<Vec<_>>()
                        .join("\n")
                } else {
                    item.trim_end().to_owned()
                };
                self.learn_session(&message);
                return Ok(Some(message));
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffered.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(None) => return Ok(None),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Keeps the session and node of the connect reply, which every command after it names.
    fn learn_session(&mut self, message: &str) {
        if !self.session.is_empty() || !message.contains(r#""connect""#) {
            return;
        }
        if let Ok(reply) = serde_json::from_str::<Value>(message) {
            let connect = &reply["connect"];
            self.session = connect["session"].as_str().unwrap_or_default().to_owned();
            self.node = connect["node"].as_str().unwrap_or_default().to_owned();
        }
    }

    /// Sends commands to the session.
    pub(crate) async fn send(&self, commands: &str) -> Result<(), String> {
        let body =
            serde_json::json!({"session": self.session, "node": self.node, "data": commands});
        let response = self
            .client
            .post(&self.emulation)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("emulation request: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("emulation request: HTTP {}", response.status()))
        }
    }
}
