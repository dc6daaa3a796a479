//! A minimal MQTT producer that speaks 3.1.1 or 5 and leaves packet ids and the in-flight
//! window to its caller, so acknowledgement latency can be measured per message. Used by
//! the simulator, the load tool and the end-to-end tests.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    V311,
    V5,
}

/// An acknowledgement from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPacket {
    /// PUBACK (QoS 1) or PUBCOMP (QoS 2, after this client's PUBREL) with its reason code.
    Ack { pkid: u16, reason: u8 },
    /// PUBREC of a QoS 2 message; answer with [`ProducerWriter::pubrel`].
    Received { pkid: u16, reason: u8 },
    /// A DISCONNECT from an MQTT 5 server, with its reason code.
    Disconnect { reason: u8 },
    /// Anything else: its packet type (high nibble of the first byte) and body.
    Other { kind: u8, body: Vec<u8> },
}

pub struct ProducerWriter {
    writer: OwnedWriteHalf,
    version: MqttVersion,
    out: BytesMut,
}

pub struct ProducerReader {
    reader: OwnedReadHalf,
    version: MqttVersion,
    buf: BytesMut,
    receive_maximum: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("MQTT: {0}")]
    Protocol(String),
    #[error("CONNECT refused with code {0}")]
    Refused(u8),
}

const MAX_PACKET: usize = 64 * 1024 * 1024;

/// Connects and waits for a successful CONNACK.
pub async fn connect(
    addr: SocketAddr,
    version: MqttVersion,
    client_id: &str,
    password: Option<&str>,
) -> Result<(ProducerWriter, ProducerReader), ProducerError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (reader, writer) = stream.into_split();
    let mut writer = ProducerWriter {
        writer,
        version,
        out: BytesMut::new(),
    };
    let mut reader = ProducerReader {
        reader,
        version,
        buf: BytesMut::new(),
        receive_maximum: None,
    };
    match version {
        MqttVersion::V311 => {
            let mut connect = v4::Connect::new(client_id);
            connect.keep_alive = 60;
            if let Some(password) = password {
                connect.login = Some(v4::Login::new("", password));
            }
            v4::Packet::Connect(connect)
                .write(&mut writer.out, MAX_PACKET)
                .map_err(|e| ProducerError::Protocol(e.to_string()))?;
        }
        MqttVersion::V5 => {
            let connect = v5::Connect {
                keep_alive: 60,
                client_id: client_id.to_string(),
                clean_start: true,
                properties: None,
            };
            let login = password.map(|p| v5::Login::new("", p));
            v5::Packet::Connect(connect, None, login)
                .write(&mut writer.out, None)
                .map_err(|e| ProducerError::Protocol(e.to_string()))?;
        }
    }
    writer.flush().await?;
    let code = reader.read_connack().await?;
    if code != 0 {
        return Err(ProducerError::Refused(code));
    }
    Ok((writer, reader))
}

impl ProducerWriter {
    /// Queues one PUBLISH; call [`Self::flush`] to send what is queued. `token` travels as
    /// the MQTT 5 user property `authorization: Bearer <token>`.
    pub fn publish(
        &mut self,
        topic: &str,
        payload: Bytes,
        qos: u8,
        pkid: u16,
        token: Option<&str>,
    ) -> Result<(), ProducerError> {
        self.publish_with_properties(topic, payload, qos, pkid, token, &[])
    }

    /// [`Self::publish`] with more MQTT 5 user properties after `authorization`, e.g.
    /// `("backfill", "true")` for a replay. MQTT 3.1.1 has no properties: they are dropped.
    pub fn publish_with_properties(
        &mut self,
        topic: &str,
        payload: Bytes,
        qos: u8,
        pkid: u16,
        token: Option<&str>,
        user_properties: &[(&str, &str)],
    ) -> Result<(), ProducerError> {
        match self.version {
            MqttVersion::V311 => {
                let mut publish = v4::Publish::from_bytes(topic, qos_of(qos), payload);
                publish.pkid = pkid;
                v4::Packet::Publish(publish)
                    .write(&mut self.out, MAX_PACKET)
                    .map_err(|e| ProducerError::Protocol(e.to_string()))?;
            }
            MqttVersion::V5 => {
                let user_properties: Vec<(String, String)> = token
                    .map(|t| ("authorization".to_string(), format!("Bearer {t}")))
                    .into_iter()
                    .chain(
                        user_properties
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string())),
                    )
                    .collect();
                let properties = (!user_properties.is_empty()).then(|| v5::PublishProperties {
                    user_properties,
                    ..Default::default()
                });
                let mut publish = v5::Publish::new(topic, qos5_of(qos), payload, properties);
                publish.pkid = pkid;
                v5::Packet::Publish(publish)
                    .write(&mut self.out, None)
                    .map_err(|e| ProducerError::Protocol(e.to_string()))?;
            }
        }
        Ok(())
    }

    pub fn pubrel(&mut self, pkid: u16) -> Result<(), ProducerError> {
        match self.version {
            MqttVersion::V311 => v4::Packet::PubRel(v4::PubRel::new(pkid))
                .write(&mut self.out, MAX_PACKET)
                .map(|_| ())
                .map_err(|e| ProducerError::Protocol(e.to_string())),
            MqttVersion::V5 => v5::Packet::PubRel(v5::PubRel::new(pkid, None))
                .write(&mut self.out, None)
                .map(|_| ())
                .map_err(|e| ProducerError::Protocol(e.to_string())),
        }
    }

    /// Queues bytes as they are, for tests of malformed or unusual packets.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.writer.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends DISCONNECT and closes the write side.
    pub async fn disconnect(mut self) -> std::io::Result<()> {
        let bytes: &[u8] = match self.version {
            MqttVersion::V311 => &[0xE0, 0x00],
            MqttVersion::V5 => &[0xE0, 0x01, 0x00],
        };
        self.out.extend_from_slice(bytes);
        self.flush().await?;
        self.writer.shutdown().await
    }
}

fn qos_of(qos: u8) -> rumqttc::mqttbytes::QoS {
    match qos {
        0 => rumqttc::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

fn qos5_of(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl ProducerReader {
    async fn fill(&mut self) -> Result<(), ProducerError> {
        if self.reader.read_buf(&mut self.buf).await? == 0 {
            return Err(ProducerError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )));
        }
        Ok(())
    }

    /// The next whole frame, raw.
    async fn frame(&mut self) -> Result<BytesMut, ProducerError> {
        loop {
            if self.buf.len() >= 2 {
                let mut remaining = 0usize;
                let mut shift = 0;
                let mut header = 1;
                let mut complete = false;
                for byte in self.buf.iter().skip(1).take(4) {
                    header += 1;
                    remaining |= ((byte & 0x7f) as usize) << shift;
                    if byte & 0x80 == 0 {
                        complete = true;
                        break;
                    }
                    shift += 7;
                }
                if complete && self.buf.len() >= header + remaining {
                    return Ok(self.buf.split_to(header + remaining));
                }
            }
            self.fill().await?;
        }
    }

    async fn read_connack(&mut self) -> Result<u8, ProducerError> {
        let frame = self.frame().await?;
        if frame[0] >> 4 != 2 || frame.len() < 4 {
            return Err(ProducerError::Protocol("expected CONNACK".into()));
        }
        let code = frame[3];
        if self.version == MqttVersion::V5 && code == 0 {
            let len = frame.len();
            if let Ok(v5::Packet::ConnAck(connack)) =
                v5::Packet::read(&mut frame.clone(), Some(len as u32))
            {
                self.receive_maximum = connack.properties.and_then(|p| p.receive_max);
            }
        }
        Ok(code)
    }

    /// The Receive Maximum the MQTT 5 server announced in its CONNACK: how many QoS 1/2
    /// messages it takes unacknowledged; `None` when it announced none (65,535 for MQTT 5)
    /// or the connection is MQTT 3.1.1.
    pub fn receive_maximum(&self) -> Option<u16> {
        self.receive_maximum
    }

    /// Reads the next packet that matters to a producer.
    pub async fn next(&mut self) -> Result<ServerPacket, ProducerError> {
        Ok(self.next_with_reason().await?.0)
    }

    /// [`Self::next`], with the reason string an MQTT 5 acknowledgement or DISCONNECT
    /// carried (the pipeline says there why it refused a record).
    pub async fn next_with_reason(
        &mut self,
    ) -> Result<(ServerPacket, Option<String>), ProducerError> {
        let frame = self.frame().await?;
        let kind = frame[0] >> 4;
        // Fixed header length: 1 + the remaining-length bytes.
        let mut header = 1;
        while frame[header] & 0x80 != 0 {
            header += 1;
        }
        header += 1;
        let body = &frame[header..];
        let pkid = || u16::from_be_bytes([body[0], body[1]]);
        // MQTT 5 may omit the reason code when it is 0 (success).
        let reason = || match self.version {
            MqttVersion::V5 if body.len() > 2 => body[2],
            _ => 0,
        };
        let v5 = self.version == MqttVersion::V5;
        Ok(match kind {
            4 | 7 if body.len() >= 2 => (
                ServerPacket::Ack {
                    pkid: pkid(),
                    reason: reason(),
                },
                body.get(3..).filter(|_| v5).and_then(reason_string),
            ),
            5 if body.len() >= 2 => (
                ServerPacket::Received {
                    pkid: pkid(),
                    reason: reason(),
                },
                body.get(3..).filter(|_| v5).and_then(reason_string),
            ),
            14 => (
                ServerPacket::Disconnect {
                    reason: body.first().copied().unwrap_or(0),
                },
                body.get(1..).filter(|_| v5).and_then(reason_string),
            ),
            _ => (
                ServerPacket::Other {
                    kind,
                    body: body.to_vec(),
                },
                None,
            ),
        })
    }
}

/// The Reason String (property 0x1F) of an MQTT 5 properties block (its length first).
fn reason_string(properties: &[u8]) -> Option<String> {
    let mut len = 0usize;
    let mut pos = 0;
    loop {
        let byte = *properties.get(pos)?;
        len |= ((byte & 0x7f) as usize) << (7 * pos);
        pos += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if pos == 4 {
            return None;
        }
    }
    let mut rest = properties.get(pos..pos + len)?;
    let string = |bytes: &[u8]| -> Option<(String, usize)> {
        let n = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]) as usize;
        let text = std::str::from_utf8(bytes.get(2..2 + n)?).ok()?;
        Some((text.to_string(), 2 + n))
    };
    while let Some((&id, after)) = rest.split_first() {
        match id {
            0x1F => return string(after).map(|(text, _)| text),
            // User property: two strings.
            0x26 => {
                let (_, a) = string(after)?;
                let (_, b) = string(after.get(a..)?)?;
                rest = after.get(a + b..)?;
            }
            // Anything else cannot appear in an acknowledgement before the reason string.
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_strings_are_read_from_acknowledgement_properties() {
        let mut ack = v5::PubAck::new(9, None);
        ack.reason = v5::PubAckReason::PayloadFormatInvalid;
        ack.properties = Some(v5::PubAckProperties {
            reason_string: Some("dose_reelle: must be ≥ 0 (got -5)".into()),
            user_properties: vec![("k".into(), "v".into())],
        });
        let mut buf = BytesMut::new();
        v5::Packet::PubAck(ack).write(&mut buf, None).unwrap();
        // Fixed header (2 bytes here), packet id, reason code, then the properties.
        assert_eq!(
            reason_string(&buf[5..]).as_deref(),
            Some("dose_reelle: must be ≥ 0 (got -5)")
        );
        assert_eq!(reason_string(&[0]), None);
        assert_eq!(reason_string(&[]), None);
        assert_eq!(reason_string(&[5, 0x1F, 0, 9]), None, "truncated");
    }
}
