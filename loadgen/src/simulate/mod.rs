//! `gaveurs simulate` and the demo: realistic records published to the pipeline over MQTT
//! (or the V3 WebSocket ingest) at a chosen rate.

mod data;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use data::{Farm, Outgoing, site_of_gaveur};

use crate::producer::{MqttVersion, ProducerWriter, ServerPacket, connect};

#[derive(Debug, Clone)]
pub enum Destination {
    /// An MQTT endpoint (the embedded listener or a broker).
    Mqtt(SocketAddr),
    /// The pipeline's HTTP address; records go to `/ws/gavage` and `/ws/sensors/`.
    WebSocket(SocketAddr),
}

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub destination: Destination,
    /// Lots fed at the same time (a finished lot is replaced by a new one).
    pub lots: usize,
    pub gaveurs: usize,
    /// SQAL stations.
    pub devices: usize,
    /// Gavage records per second.
    pub rate: f64,
    /// SQAL measurements per second.
    pub sqal_rate: f64,
    /// Stop after this long; `None` runs until stopped.
    pub duration: Option<Duration>,
    pub seed: u64,
    /// Bearer token the records are published with (MQTT 5 user property, WebSocket header).
    pub token: Option<String>,
}

/// What was published and how the pipeline answered.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
}

/// Messages in flight on an MQTT connection.
const WINDOW: usize = 64;

pub async fn run(
    options: SimulateOptions,
    stop: CancellationToken,
) -> anyhow::Result<Arc<Counters>> {
    let counters = Arc::new(Counters::default());
    let mut farm = Farm::new(
        options.seed,
        options.lots,
        options.gaveurs,
        options.devices,
        chrono::Utc::now().date_naive(),
    );
    let mut sink = Publisher::connect(
        &options.destination,
        options.token.clone(),
        counters.clone(),
    )
    .await?;
    let started = Instant::now();
    let deadline = options.duration.map(|d| started + d);
    let interval = |rate: f64| (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let meal_every = interval(options.rate);
    let sample_every = interval(options.sqal_rate);
    let mut next_meal = meal_every.map(|_| started);
    let mut next_sample = sample_every.map(|_| started);
    loop {
        let due = match (next_meal, next_sample) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => break,
        };
        if deadline.is_some_and(|d| due >= d) {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(due) => {}
        }
        if next_meal == Some(due) {
            for out in farm.next_meal() {
                sink.publish(out, &counters).await?;
            }
            next_meal = Some(due + meal_every.expect("meals are scheduled"));
        } else if let Some(out) = farm.next_sample(chrono::Utc::now()) {
            sink.publish(out, &counters).await?;
            next_sample = Some(due + sample_every.expect("samples are scheduled"));
        }
    }
    sink.finish().await;
    Ok(counters)
}

enum Publisher {
    Mqtt {
        writer: ProducerWriter,
        window: Arc<Semaphore>,
        pkid: u16,
        token: Option<String>,
        reader: tokio::task::JoinHandle<()>,
    },
    WebSocket {
        gavage: WsSink,
        sensors: WsSink,
        readers: Vec<tokio::task::JoinHandle<()>>,
        /// Why the pipeline closed a socket (e.g. `4401 invalid_token: …`), when it did.
        closed: Arc<parking_lot::Mutex<Option<String>>>,
    },
}

type WsSink = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Message,
>;

impl Publisher {
    async fn connect(
        destination: &Destination,
        token: Option<String>,
        counters: Arc<Counters>,
    ) -> anyhow::Result<Publisher> {
        match destination {
            Destination::Mqtt(addr) => {
                let client_id = format!("gaveurs-simulator-{:08x}", rand::random::<u32>());
                let (writer, mut reader) = connect(*addr, MqttVersion::V5, &client_id, None)
                    .await
                    .with_context(|| format!("cannot connect to MQTT at {addr}"))?;
                let window = Arc::new(Semaphore::new(WINDOW));
                let reader = tokio::spawn({
                    let window = window.clone();
                    async move {
                        while let Ok(packet) = reader.next().await {
                            if let ServerPacket::Ack { reason, .. } = packet {
                                let counter = if reason < 0x80 {
                                    &counters.accepted
                                } else {
                                    &counters.refused
                                };
                                counter.fetch_add(1, Ordering::Relaxed);
                                window.add_permits(1);
                            }
                        }
                    }
                });
                Ok(Publisher::Mqtt {
                    writer,
                    window,
                    pkid: 0,
                    token,
                    reader,
                })
            }
            Destination::WebSocket(http) => {
                let mut readers = Vec::new();
                let closed = Arc::new(parking_lot::Mutex::new(None));
                // `?token=` is how V3 stations authenticate: only their URL changed.
                let query = token
                    .as_deref()
                    .map(|t| format!("?token={t}"))
                    .unwrap_or_default();
                let mut open = async |path: &str| -> anyhow::Result<WsSink> {
                    let (socket, _) =
                        tokio_tungstenite::connect_async(format!("ws://{http}{path}{query}"))
                            .await
                            .with_context(|| format!("cannot open ws://{http}{path}"))?;
                    let (sink, mut stream) = socket.split();
                    let counters = counters.clone();
                    let closed = closed.clone();
                    readers.push(tokio::spawn(async move {
                        while let Some(Ok(message)) = stream.next().await {
                            if let tokio_tungstenite::tungstenite::Message::Close(Some(frame)) =
                                &message
                            {
                                *closed.lock() =
                                    Some(format!("{} {}", u16::from(frame.code), frame.reason));
                            }
                            let Ok(text) = message.to_text() else {
                                continue;
                            };
                            let kind = serde_json::from_str::<serde_json::Value>(text)
                                .ok()
                                .and_then(|v| v["type"].as_str().map(str::to_string));
                            match kind.as_deref() {
                                Some("ack") => counters.accepted.fetch_add(1, Ordering::Relaxed),
                                Some("error") => counters.refused.fetch_add(1, Ordering::Relaxed),
                                _ => 0,
                            };
                        }
                    }));
                    Ok(sink)
                };
                let gavage = open("/ws/gavage").await?;
                let sensors = open("/ws/sensors/").await?;
                Ok(Publisher::WebSocket {
                    gavage,
                    sensors,
                    readers,
                    closed,
                })
            }
        }
    }

    async fn publish(&mut self, out: Outgoing, counters: &Counters) -> anyhow::Result<()> {
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let payload = out.body.to_string();
        match self {
            Publisher::Mqtt {
                writer,
                window,
                pkid,
                token,
                ..
            } => {
                window.acquire().await?.forget();
                *pkid = pkid.checked_add(1).unwrap_or(1);
                writer.publish(&out.topic, payload.into(), 1, *pkid, token.as_deref())?;
                writer.flush().await.context("MQTT connection lost")?;
            }
            Publisher::WebSocket {
                gavage,
                sensors,
                closed,
                readers,
            } => {
                let socket = if out.topic.starts_with("sqal/") {
                    sensors
                } else {
                    gavage
                };
                let sent = socket
                    .send(tokio_tungstenite::tungstenite::Message::Text(
                        payload.into(),
                    ))
                    .await;
                if let Err(e) = sent {
                    // The reader that saw the close frame knows why; let it finish first.
                    for reader in readers.iter_mut() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
                    }
                    return Err(match closed.lock().as_deref() {
                        Some(why) => anyhow::anyhow!("the pipeline closed the WebSocket ({why})"),
                        None => anyhow::anyhow!("WebSocket closed: {e}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Waits (briefly) for the answers to what was sent, then disconnects.
    async fn finish(self) {
        match self {
            Publisher::Mqtt {
                writer,
                window,
                reader,
                ..
            } => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    window.acquire_many(WINDOW as u32),
                )
                .await;
                let _ = writer.disconnect().await;
                reader.abort();
            }
            Publisher::WebSocket {
                mut gavage,
                mut sensors,
                readers,
                ..
            } => {
                let _ = gavage.close().await;
                let _ = sensors.close().await;
                for reader in readers {
                    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
                }
            }
        }
    }
}

impl Counters {
    pub fn summary(&self) -> String {
        format!(
            "{} sent, {} accepted, {} refused",
            self.sent.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed)
        )
    }
}
