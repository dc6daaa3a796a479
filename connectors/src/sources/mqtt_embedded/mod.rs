//! The embedded MQTT listener: the pipeline's own ingest endpoint (SPEC §2).
//!
//! Producers connect with MQTT 3.1.1 or 5 on one port and publish; nothing can subscribe.
//! A PUBACK (or PUBREC) goes out only when the intake's durable ticket for that message has
//! resolved, and always in the order the messages arrived on the connection. Stock brokers
//! acknowledge on receipt, which is why this listener exists.
//!
//! MQTT 5 PUBLISH user properties read here: `authorization: Bearer <jwt>` (the record's
//! token) and `backfill: true` (a replay of past records, e.g. by `gaveurs replay`: the
//! envelope's `backfill` flag is set, so the record never triggers an SMS).

pub mod codec;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::intake::Intake;
use crate::tls::TlsIncoming;

pub use codec::{Protocol, ReasonCode};

/// Limits of the embedded listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Largest MQTT packet accepted, bytes; a larger one closes the connection. Records over
    /// the record limit but under this one are dead-lettered and answered with 0x97.
    pub max_packet_bytes: usize,
    /// Unacknowledged QoS 1/2 messages a connection may have in flight (MQTT 5 Receive Maximum).
    pub max_inflight: u16,
    /// Time a new connection has to send its CONNECT, seconds.
    pub connect_timeout_s: u64,
    /// Connections open at once, over both ports; a connection beyond it is closed as soon
    /// as it is accepted, so a flood of clients cannot take the process's memory.
    pub max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_packet_bytes: 16 * 1024 * 1024,
            max_inflight: 1024,
            connect_timeout_s: 10,
            max_connections: 10_000,
        }
    }
}

/// How long connections get, at shutdown, to receive the acknowledgements they are owed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

pub struct EmbeddedListener {
    listener: TcpListener,
    /// MQTT over TLS (`[mqtt] tls_listen`): the same sessions, so a client id taken over on
    /// one port is taken over on the other.
    tls: Option<TlsIncoming>,
    limits: ListenerLimits,
}

/// Connected client ids, so a reconnecting client takes its old session over (MQTT §3.1.4).
#[derive(Default)]
struct Registry {
    next_id: u64,
    sessions: HashMap<String, (u64, CancellationToken)>,
}

pub(crate) struct Shared {
    limits: ListenerLimits,
    registry: Mutex<Registry>,
    shutdown: CancellationToken,
    refused_logged: Mutex<Option<std::time::Instant>>,
}

impl EmbeddedListener {
    /// Binds the port; connections are accepted once [`Self::run`] is called.
    pub async fn bind(addr: SocketAddr, limits: ListenerLimits) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            tls: None,
            limits,
        })
    }

    /// Also accepts MQTT over TLS from `tls`.
    pub fn with_tls(mut self, tls: TlsIncoming) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(TlsIncoming::local_addr)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown`, then stops reading from every connection, sends
    /// the acknowledgements it owes (up to a few seconds) and returns.
    pub async fn run<I: Intake>(mut self, intake: I, shutdown: CancellationToken) {
        let shared = Arc::new(Shared {
            limits: self.limits,
            registry: Mutex::new(Registry::default()),
            shutdown: shutdown.clone(),
            refused_logged: Mutex::new(None),
        });
        let tracker = TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if !shared.has_room(&tracker) {
                            continue;
                        }
                        let _ = stream.set_nodelay(true);
                        let (reader, writer) = stream.into_split();
                        tracker.spawn(session::run(reader, writer, peer, intake.clone(), shared.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "mqtt accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some((stream, peer)) = next_tls(&mut self.tls) => {
                    if !shared.has_room(&tracker) {
                        continue;
                    }
                    let (reader, writer) = tokio::io::split(stream);
                    tracker.spawn(session::run(reader, writer, peer, intake.clone(), shared.clone()));
                }
            }
        }
        drop(self.listener);
        drop(self.tls);
        tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = tracker.len(),
                "mqtt sessions still draining at shutdown; closing them"
            );
        }
    }
}

/// The next TLS connection, or never when there is no TLS listener.
async fn next_tls(
    tls: &mut Option<TlsIncoming>,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    SocketAddr,
)> {
    match tls {
        Some(tls) => tls.accept().await,
        None => std::future::pending().await,
    }
}

impl Shared {
    /// Whether another connection may open; at the limit the new one is dropped unread
    /// (and that is logged once a minute at most).
    fn has_room(&self, sessions: &TaskTracker) -> bool {
        if sessions.len() < self.limits.max_connections {
            return true;
        }
        let mut last = self.refused_logged.lock();
        if last.is_none_or(|at: std::time::Instant| at.elapsed() >= Duration::from_secs(60)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(
                limit = self.limits.max_connections,
                "MQTT connection refused: [mqtt] max_connections are open"
            );
        }
        gaveurs_telemetry::registry()
            .counter(
                "gaveurs_mqtt_connections_refused_total",
                "MQTT connections closed on arrival because [mqtt] max_connections were open.",
                &[],
            )
            .inc();
        false
    }

    /// Registers a session under its client id; an existing session with the same id is told
    /// to leave. Returns the session's id and its eviction token.
    fn register(&self, client_id: &str) -> (u64, CancellationToken) {
        let mut registry = self.registry.lock();
        registry.next_id += 1;
        let id = registry.next_id;
        let token = CancellationToken::new();
        if let Some((_, old)) = registry
            .sessions
            .insert(client_id.to_string(), (id, token.clone()))
        {
            old.cancel();
        }
        (id, token)
    }

    fn unregister(&self, client_id: &str, id: u64) {
        let mut registry = self.registry.lock();
        if registry.sessions.get(client_id).map(|(i, _)| *i) == Some(id) {
            registry.sessions.remove(client_id);
        }
    }
}
