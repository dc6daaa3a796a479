//! Clients that misbehave, for the hostile-client test and for `gaveurs-hostile`, which runs
//! them in a process of their own beside a benchmark: a channel that never reads, idle
//! connections, 100 MB messages, MQTT connections opened and dropped in a loop, and a flood
//! of CONNECTs with a bad password.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::producer::{MqttVersion, connect};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the hostile messages and the flood are made of.
pub const HUGE_BYTES: usize = 100 << 20;

/// Opens a WebSocket on the pipeline's HTTP port, authenticated with `?token=`.
pub async fn open_socket(http: SocketAddr, path: &str, token: &str) -> anyhow::Result<Ws> {
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{http}{path}?token={token}")).await?;
    Ok(ws)
}

/// `count` TCP connections to the MQTT port that never send a CONNECT.
pub async fn idle_mqtt(mqtt: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        idle.push(TcpStream::connect(mqtt).await?);
    }
    Ok(idle)
}

/// `count` authenticated channel sockets (gaveur 2's) that never say anything.
pub async fn idle_channels(http: SocketAddr, token: &str, count: usize) -> anyhow::Result<Vec<Ws>> {
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        idle.push(open_socket(http, "/ws/gaveur/2", token).await?);
    }
    Ok(idle)
}

/// Remaining-length bytes of an MQTT fixed header, after a PUBLISH type byte.
fn publish_header(len: usize) -> Vec<u8> {
    let mut header = vec![0x32];
    let mut rest = len;
    loop {
        let mut byte = (rest % 128) as u8;
        rest /= 128;
        if rest > 0 {
            byte |= 0x80;
        }
        header.push(byte);
        if rest == 0 {
            return header;
        }
    }
}

/// MQTT 3.1.1 CONNECT with `password` (the token) under user `gaveur`.
pub fn connect_packet(client_id: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 30];
    for field in [client_id, "gaveur", password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    packet.extend(publish_header(body.len()).into_iter().skip(1));
    packet.extend(body);
    packet
}

/// Connects, then starts a 100 MB PUBLISH and sends until the listener stops taking it;
/// returns the bytes it took.
pub async fn huge_mqtt_publish(mqtt: SocketAddr, client_id: &str, token: &str) -> usize {
    let Ok(mut stream) = TcpStream::connect(mqtt).await else {
        return 0;
    };
    let mut prefix = connect_packet(client_id, token);
    prefix.extend(publish_header(HUGE_BYTES));
    let chunk = vec![b'x'; 1 << 20];
    let mut taken = 0;
    if stream.write_all(&prefix).await.is_err() {
        return 0;
    }
    for _ in 0..HUGE_BYTES / chunk.len() {
        match tokio::time::timeout(Duration::from_secs(10), stream.write_all(&chunk)).await {
            Ok(Ok(())) => taken += chunk.len(),
            _ => break,
        }
    }
    taken
}

/// Sends one 100 MB message on the socket at `path` (binary on a channel, text on an ingest
/// socket); returns how the socket ended.
pub async fn huge_socket_message(http: SocketAddr, path: &str, token: &str) -> String {
    let mut ws = match open_socket(http, path, token).await {
        Ok(ws) => ws,
        Err(e) => return format!("error: {e}"),
    };
    let message = if path.starts_with("/ws/gaveur") {
        Message::Binary(vec![b'x'; HUGE_BYTES].into())
    } else {
        Message::Text("x".repeat(HUGE_BYTES).into())
    };
    let _ = ws.send(message).await;
    socket_end(&mut ws).await
}

/// How a socket ended, within 15 s: its close code, or the error that cut it off.
pub async fn socket_end(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Err(_) => return "still open".into(),
            Ok(None) => return "error: closed without a close frame".into(),
            Ok(Some(Err(e))) => return format!("error: {e}"),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return frame.map_or("no code".into(), |f| u16::from(f.code).to_string());
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// `count` MQTT 5 sessions with a valid token, each dropped as soon as it is accepted.
pub async fn churn(mqtt: SocketAddr, token: &str, tag: &str, count: usize) {
    for n in 0..count {
        if let Ok(session) = connect(
            mqtt,
            MqttVersion::V5,
            &format!("churn-{tag}-{n}"),
            Some(token),
        )
        .await
        {
            drop(session);
        }
    }
}

/// `count` CONNECTs at once with a password that is no token; returns each CONNACK's return
/// code (None: no answer).
pub async fn connect_flood(mqtt: SocketAddr, tag: &str, count: usize) -> Vec<Option<u8>> {
    let attempts = (0..count).map(|n| async move {
        let mut stream = TcpStream::connect(mqtt).await.ok()?;
        stream
            .write_all(&connect_packet(&format!("flood-{tag}-{n}"), "not-a-token"))
            .await
            .ok()?;
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).await.ok()?;
        Some(answer[3])
    });
    futures::future::join_all(attempts).await
}
