//! One MQTT connection: read packets, hand PUBLISHes to the intake, and write each
//! acknowledgement once its ticket says the message is durable, in arrival order.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use gaveurs_schemas::envelope::{Provenance, Transport};
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Shared;
use super::codec::{
    self, ConnectInfo, ConnectRefusal, Encoder, FrameError, Inbound, Protocol, PublishInfo,
    ServerLimits,
};
use crate::intake::{Credentials, DurableTicket, Intake, RawInput, Unavailable, Verdict};
use crate::topics;

/// An acknowledgement (or any packet) waiting for its turn on the socket.
struct Outbound {
    /// Resolves when the message being acknowledged is durable; `None` for packets that
    /// acknowledge nothing (PINGRESP, PUBCOMP).
    ticket: Option<DurableTicket>,
    bytes: Bytes,
}

/// Why the read side stopped.
enum End {
    ClientLeft,
    ServerShutdown,
    TakenOver,
    ProtocolError(DisconnectReasonCode, String),
}

/// `reader` and `writer` are the two halves of one connection, plain TCP or TLS.
pub(super) async fn run<I, R, W>(
    mut reader: R,
    mut writer: W,
    peer: SocketAddr,
    intake: I,
    shared: Arc<Shared>,
) where
    I: Intake,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let connect_timeout = Duration::from_secs(shared.limits.connect_timeout_s);
    let first = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        frame = tokio::time::timeout(
            connect_timeout,
            read_frame(&mut reader, &mut buf, shared.limits.max_packet_bytes),
        ) => frame,
    };
    let frame = match first {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "mqtt connection closed before CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within {connect_timeout:?}");
            return;
        }
    };
    if frame[0] >> 4 != codec::packet_type::CONNECT {
        tracing::debug!(%peer, "first packet is not CONNECT; closing");
        return;
    }
    let protocol = match codec::connect_level(&frame) {
        Some(4) => Protocol::V311,
        Some(5) => Protocol::V5,
        level => {
            tracing::info!(%peer, ?level, "refusing unsupported MQTT protocol level");
            let encoder = Encoder {
                protocol: Protocol::V311,
                reason_strings: false,
            };
            let refusal = encoder.connack(
                Some(ConnectRefusal::UnsupportedProtocol),
                limits(&shared),
                None,
            );
            let _ = writer.write_all(&refusal).await;
            return;
        }
    };
    let connect = match codec::decode(protocol, frame) {
        Ok(Inbound::Connect(connect)) => connect,
        Ok(_) | Err(_) => {
            tracing::debug!(%peer, "malformed CONNECT; closing");
            return;
        }
    };
    let encoder = Encoder {
        protocol,
        reason_strings: true,
    };
    let ConnectInfo {
        client_id,
        keep_alive,
        password,
    } = connect;
    if let Some(token) = &password {
        let source = format!("{client_id}@{peer}");
        let context = crate::intake::ConnectionContext {
            transport: "mqtt",
            source: &source,
        };
        if let Err(refused) = intake.authenticate_connection(token, context).await {
            tracing::info!(%peer, %client_id, "refusing CONNECT: {}", refused.0);
            let _ = writer
                .write_all(&encoder.connack(
                    Some(ConnectRefusal::BadCredentials),
                    limits(&shared),
                    None,
                ))
                .await;
            return;
        }
    }
    let (client_id, assigned) = if client_id.is_empty() {
        let id = format!("gaveurs-{:016x}", rand::random::<u64>());
        (id.clone(), Some(id))
    } else {
        (client_id, None)
    };
    let (session_id, evicted) = shared.register(&client_id);
    if writer
        .write_all(&encoder.connack(None, limits(&shared), assigned))
        .await
        .is_err()
    {
        shared.unregister(&client_id, session_id);
        return;
    }
    tracing::debug!(%peer, %client_id, ?protocol, "mqtt client connected");

    // The queue is the flow control: once it is full, reading stops and TCP pushes back.
    let (tx, rx) = mpsc::channel(usize::from(shared.limits.max_inflight) + 16);
    let writer_task = tokio::spawn(write_loop(writer, rx));
    let mut reading = Reading {
        intake,
        encoder,
        tx,
        source: format!("{client_id}@{peer}"),
        connection_token: password,
        aliases: HashMap::new(),
        awaiting_release: HashSet::new(),
    };
    let idle_limit = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    let end = loop {
        let next = async {
            match idle_limit {
                Some(limit) => tokio::time::timeout(
                    limit,
                    read_frame(&mut reader, &mut buf, shared.limits.max_packet_bytes),
                )
                .await
                .unwrap_or_else(|_| Err(ReadError::Idle)),
                None => read_frame(&mut reader, &mut buf, shared.limits.max_packet_bytes).await,
            }
        };
        let frame = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break End::ServerShutdown,
            _ = evicted.cancelled() => break End::TakenOver,
            frame = next => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break End::ClientLeft,
            Err(ReadError::TooLarge(e)) => {
                break End::ProtocolError(DisconnectReasonCode::PacketTooLarge, e.to_string());
            }
            Err(ReadError::Idle) => {
                break End::ProtocolError(
                    DisconnectReasonCode::KeepAliveTimeout,
                    "keep-alive expired".into(),
                );
            }
            Err(ReadError::Io(_)) => break End::ClientLeft,
        };
        match codec::decode(protocol, frame) {
            Ok(Inbound::Disconnect) => break End::ClientLeft,
            Ok(packet) => {
                if let Err(end) = reading.handle(packet).await {
                    break end;
                }
            }
            Err(e) => {
                break End::ProtocolError(DisconnectReasonCode::MalformedPacket, e.to_string());
            }
        }
    };
    shared.unregister(&client_id, session_id);
    let goodbye = match &end {
        End::ClientLeft => None,
        End::ServerShutdown => reading
            .encoder
            .disconnect(DisconnectReasonCode::ServerShuttingDown),
        End::TakenOver => reading
            .encoder
            .disconnect(DisconnectReasonCode::SessionTakenOver),
        End::ProtocolError(code, message) => {
            tracing::info!(%peer, %client_id, "closing mqtt connection: {message}");
            reading.encoder.disconnect(*code)
        }
    };
    if let Some(bytes) = goodbye {
        let _ = reading
            .tx
            .send(Outbound {
                ticket: None,
                bytes,
            })
            .await;
    }
    drop(reading);
    let _ = writer_task.await;
    tracing::debug!(%peer, %client_id, "mqtt client gone");
}

fn limits(shared: &Shared) -> ServerLimits {
    ServerLimits {
        receive_maximum: shared.limits.max_inflight,
        max_packet_bytes: u32::try_from(shared.limits.max_packet_bytes).unwrap_or(u32::MAX),
    }
}

struct Reading<I> {
    intake: I,
    encoder: Encoder,
    tx: mpsc::Sender<Outbound>,
    source: String,
    connection_token: Option<String>,
    /// MQTT 5 topic aliases set by this client.
    aliases: HashMap<u16, String>,
    /// QoS 2 packet ids acknowledged with PUBREC and not yet released.
    awaiting_release: HashSet<u16>,
}

impl<I: Intake> Reading<I> {
    async fn handle(&mut self, packet: Inbound) -> Result<(), End> {
        match packet {
            Inbound::Publish(publish) => self.publish(publish).await,
            Inbound::PubRel(pkid) => {
                self.awaiting_release.remove(&pkid);
                self.send(None, self.encoder.pubcomp(pkid)).await
            }
            Inbound::Subscribe { pkid, filters } => {
                self.send(None, self.encoder.suback_refused(pkid, filters))
                    .await
            }
            Inbound::Unsubscribe { pkid, filters } => {
                self.send(None, self.encoder.unsuback(pkid, filters)).await
            }
            Inbound::PingReq => self.send(None, self.encoder.pingresp()).await,
            Inbound::Connect(_) => Err(End::ProtocolError(
                DisconnectReasonCode::ProtocolError,
                "second CONNECT on one connection".into(),
            )),
            Inbound::Unexpected(name) => Err(End::ProtocolError(
                DisconnectReasonCode::ProtocolError,
                format!("a client may not send {name}"),
            )),
            Inbound::Disconnect => Err(End::ClientLeft),
        }
    }

    async fn publish(&mut self, publish: PublishInfo) -> Result<(), End> {
        let topic = self.resolve_topic(&publish)?;
        if publish.qos == 2 && self.awaiting_release.contains(&publish.pkid) {
            // A retransmission of a message already taken: acknowledge it again, in order.
            let ack =
                self.encoder
                    .publish_ack(publish.pkid, &crate::intake::Verdict::Control, true);
            return self.send(None, ack).await;
        }
        let mut provenance = Provenance::new(Transport::Mqtt);
        provenance.topic = Some(topic.clone());
        provenance.packet_id = (publish.qos > 0).then_some(publish.pkid);
        provenance.source = Some(self.source.clone());
        let input = RawInput {
            route: topics::route(&topic),
            payload: publish.payload,
            provenance,
            credentials: Credentials {
                message_token: publish.token,
                connection_token: self.connection_token.clone(),
            },
            received_at: chrono::Utc::now(),
            produced_at: None,
            backfill: publish.backfill,
            reread: false,
        };
        let submitted = self.intake.submit(input).await;
        if let Verdict::Busy { message } = &submitted.verdict
            && self.encoder.protocol == Protocol::V311
        {
            // 3.1.1 has no way to refuse a message: it is left unacknowledged, and the
            // connection closed, for the client to send it again later.
            let unacknowledged = futures::future::ready(Err(Unavailable)).boxed();
            self.send(Some(unacknowledged), Bytes::new()).await?;
            return Err(End::ProtocolError(
                DisconnectReasonCode::QuotaExceeded,
                message.clone(),
            ));
        }
        match publish.qos {
            0 => Ok(()),
            1 => {
                let ack = self
                    .encoder
                    .publish_ack(publish.pkid, &submitted.verdict, false);
                self.send(Some(submitted.durable), ack).await
            }
            _ => {
                self.awaiting_release.insert(publish.pkid);
                let ack = self
                    .encoder
                    .publish_ack(publish.pkid, &submitted.verdict, true);
                self.send(Some(submitted.durable), ack).await
            }
        }
    }

    fn resolve_topic(&mut self, publish: &PublishInfo) -> Result<String, End> {
        match publish.topic_alias {
            None => Ok(publish.topic.clone()),
            Some(alias) if !publish.topic.is_empty() => {
                self.aliases.insert(alias, publish.topic.clone());
                Ok(publish.topic.clone())
            }
            Some(alias) => self.aliases.get(&alias).cloned().ok_or_else(|| {
                End::ProtocolError(
                    DisconnectReasonCode::TopicAliasInvalid,
                    format!("unknown topic alias {alias}"),
                )
            }),
        }
    }

    async fn send(&self, ticket: Option<DurableTicket>, bytes: Bytes) -> Result<(), End> {
        self.tx
            .send(Outbound { ticket, bytes })
            .await
            .map_err(|_| End::ClientLeft)
    }
}

enum ReadError {
    TooLarge(FrameError),
    Idle,
    Io(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::TooLarge(e) => e.fmt(f),
            ReadError::Idle => f.write_str("idle past the keep-alive"),
            ReadError::Io(e) => e.fmt(f),
        }
    }
}

/// Reads until one whole frame is buffered; `None` at a clean end of stream.
async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<BytesMut>, ReadError> {
    loop {
        match codec::frame_len(buf, max_packet) {
            Ok(Some(len)) => return Ok(Some(buf.split_to(len))),
            Ok(None) => {}
            Err(e) => return Err(ReadError::TooLarge(e)),
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        match reader.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => {
                return Err(ReadError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed mid-packet",
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// Writes acknowledgements in arrival order, each once its ticket resolves. Everything that
/// is already durable when the head of the queue becomes durable goes out in the same write.
async fn write_loop(mut writer: impl AsyncWrite + Unpin, mut rx: mpsc::Receiver<Outbound>) {
    let mut out = BytesMut::with_capacity(4096);
    let mut next = rx.recv().await;
    while let Some(item) = next.take() {
        if let Some(ticket) = item.ticket
            && ticket.await.is_err()
        {
            // The pipeline stopped before this message was durable: it must not be
            // acknowledged, and neither may anything after it.
            break;
        }
        out.extend_from_slice(&item.bytes);
        while let Ok(mut queued) = rx.try_recv() {
            let ready = match queued.ticket.as_mut() {
                None => true,
                Some(ticket) => match ticket.now_or_never() {
                    Some(Ok(())) => true,
                    Some(Err(_)) => {
                        // Resolved with an error: stop before it, as above.
                        let _ = writer.write_all(&out).await;
                        return;
                    }
                    None => false,
                },
            };
            if ready {
                out.extend_from_slice(&queued.bytes);
            } else {
                next = Some(queued);
                break;
            }
        }
        if writer.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
        if next.is_none() {
            next = rx.recv().await;
        }
    }
    let _ = writer.shutdown().await;
}
