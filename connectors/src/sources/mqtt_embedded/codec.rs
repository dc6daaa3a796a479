//! MQTT 3.1.1 and 5 on one port: frames are cut here, packets are parsed and written with
//! rumqttc's `mqttbytes` codecs, and both versions are folded into one vocabulary so the
//! session logic is written once.

use bytes::{Bytes, BytesMut};
use gaveurs_schemas::RejectReason;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

use crate::intake::{Verdict, backfill_in_user_properties};

/// The protocol a connection spoke in its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}

/// Packet type of a frame, from the high nibble of its first byte.
pub mod packet_type {
    pub const CONNECT: u8 = 1;
    pub const DISCONNECT: u8 = 14;
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("packet of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed remaining length")]
    MalformedLength,
}

/// Length of the first complete frame in `buf`, or `None` if more bytes are needed.
pub fn frame_len(buf: &[u8], max_packet: usize) -> Result<Option<usize>, FrameError> {
    let mut remaining = 0usize;
    let mut shift = 0;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            let total = 1 + (i + 1) + remaining;
            if total > max_packet {
                return Err(FrameError::TooLarge {
                    size: total,
                    limit: max_packet,
                });
            }
            return Ok((buf.len() >= total).then_some(total));
        }
        shift += 7;
    }
    if buf.len() >= 5 {
        return Err(FrameError::MalformedLength);
    }
    Ok(None)
}

/// Protocol level byte of a CONNECT frame: 4 for 3.1.1, 5 for MQTT 5, 3 for 3.1.
pub fn connect_level(frame: &[u8]) -> Option<u8> {
    let mut pos = 1;
    while frame.get(pos)? & 0x80 != 0 {
        pos += 1;
    }
    pos += 1;
    let name_len = u16::from_be_bytes([*frame.get(pos)?, *frame.get(pos + 1)?]) as usize;
    frame.get(pos + 2 + name_len).copied()
}

#[derive(Debug)]
pub struct ConnectInfo {
    pub client_id: String,
    pub keep_alive: u16,
    pub password: Option<String>,
}

#[derive(Debug)]
pub struct PublishInfo {
    pub qos: u8,
    pub topic: String,
    pub topic_alias: Option<u16>,
    pub pkid: u16,
    pub payload: Bytes,
    /// MQTT 5 user property `authorization`.
    pub token: Option<String>,
    /// MQTT 5 user property `backfill: true` (a replay; such records never trigger an SMS).
    /// Always false on MQTT 3.1.1, which has no user properties.
    pub backfill: bool,
}

#[derive(Debug)]
pub enum Inbound {
    Connect(ConnectInfo),
    Publish(PublishInfo),
    PubRel(u16),
    Subscribe {
        pkid: u16,
        filters: usize,
    },
    Unsubscribe {
        pkid: u16,
        filters: usize,
    },
    PingReq,
    Disconnect,
    /// A packet a client must not send to a server (CONNACK, SUBACK…).
    Unexpected(&'static str),
}

#[derive(Debug, thiserror::Error)]
#[error("malformed packet: {0}")]
pub struct Malformed(pub String);

pub fn decode(protocol: Protocol, frame: BytesMut) -> Result<Inbound, Malformed> {
    // A zero-length DISCONNECT is valid MQTT 5 but the v5 codec refuses it.
    if frame[0] >> 4 == packet_type::DISCONNECT {
        return Ok(Inbound::Disconnect);
    }
    let mut frame = frame;
    let len = frame.len();
    match protocol {
        Protocol::V311 => match v4::Packet::read(&mut frame, len) {
            Ok(packet) => Ok(from_v4(packet)),
            Err(e) => Err(Malformed(e.to_string())),
        },
        Protocol::V5 => match v5::Packet::read(&mut frame, Some(len as u32)) {
            Ok(packet) => Ok(from_v5(packet)),
            Err(e) => Err(Malformed(e.to_string())),
        },
    }
}

fn from_v4(packet: v4::Packet) -> Inbound {
    match packet {
        v4::Packet::Connect(c) => Inbound::Connect(ConnectInfo {
            client_id: c.client_id,
            keep_alive: c.keep_alive,
            password: c.login.map(|l| l.password).filter(|p| !p.is_empty()),
        }),
        v4::Packet::Publish(p) => Inbound::Publish(PublishInfo {
            qos: p.qos as u8,
            topic: p.topic,
            topic_alias: None,
            pkid: p.pkid,
            payload: p.payload,
            token: None,
            backfill: false,
        }),
        v4::Packet::PubRel(r) => Inbound::PubRel(r.pkid),
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s.filters.len(),
        },
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics.len(),
        },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect,
        other => Inbound::Unexpected(v4_name(&other)),
    }
}

fn v4_name(packet: &v4::Packet) -> &'static str {
    match packet {
        v4::Packet::ConnAck(_) => "CONNACK",
        v4::Packet::PubAck(_) => "PUBACK",
        v4::Packet::PubRec(_) => "PUBREC",
        v4::Packet::PubComp(_) => "PUBCOMP",
        v4::Packet::SubAck(_) => "SUBACK",
        v4::Packet::UnsubAck(_) => "UNSUBACK",
        v4::Packet::PingResp => "PINGRESP",
        _ => "unexpected packet",
    }
}

fn from_v5(packet: v5::Packet) -> Inbound {
    match packet {
        v5::Packet::Connect(c, _will, login) => Inbound::Connect(ConnectInfo {
            client_id: c.client_id,
            keep_alive: c.keep_alive,
            password: login.map(|l| l.password).filter(|p| !p.is_empty()),
        }),
        v5::Packet::Publish(p) => {
            let (topic_alias, token, backfill) = match &p.properties {
                Some(props) => (
                    props.topic_alias,
                    props
                        .user_properties
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.clone()),
                    backfill_in_user_properties(&props.user_properties),
                ),
                None => (None, None, false),
            };
            Inbound::Publish(PublishInfo {
                qos: p.qos as u8,
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                topic_alias,
                pkid: p.pkid,
                payload: p.payload,
                token,
                backfill,
            })
        }
        v5::Packet::PubRel(r) => Inbound::PubRel(r.pkid),
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s.filters.len(),
        },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters.len(),
        },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(_) => Inbound::Disconnect,
        v5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        _ => Inbound::Unexpected("a server-to-client packet"),
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// MQTT 3.1 or an unknown level.
    UnsupportedProtocol,
    /// A CONNECT password (token) that does not verify.
    BadCredentials,
}

/// Limits a server announces in its MQTT 5 CONNACK.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub receive_maximum: u16,
    pub max_packet_bytes: u32,
}

pub struct Encoder {
    pub protocol: Protocol,
    /// Send a reason string with refusals (MQTT 5).
    pub reason_strings: bool,
}

impl Encoder {
    fn write_v4(packet: v4::Packet) -> Bytes {
        let mut buf = BytesMut::with_capacity(8);
        packet
            .write(&mut buf, usize::MAX)
            .expect("server packets encode");
        buf.freeze()
    }

    fn write_v5(packet: v5::Packet) -> Bytes {
        let mut buf = BytesMut::with_capacity(16);
        packet.write(&mut buf, None).expect("server packets encode");
        buf.freeze()
    }

    pub fn connack(
        &self,
        refusal: Option<ConnectRefusal>,
        limits: ServerLimits,
        assigned_client_id: Option<String>,
    ) -> Bytes {
        match self.protocol {
            Protocol::V311 => {
                let code = match refusal {
                    None => v4::ConnectReturnCode::Success,
                    Some(ConnectRefusal::UnsupportedProtocol) => {
                        v4::ConnectReturnCode::RefusedProtocolVersion
                    }
                    Some(ConnectRefusal::BadCredentials) => {
                        v4::ConnectReturnCode::BadUserNamePassword
                    }
                };
                Self::write_v4(v4::Packet::ConnAck(v4::ConnAck::new(code, false)))
            }
            Protocol::V5 => {
                let code = match refusal {
                    None => v5::ConnectReturnCode::Success,
                    Some(ConnectRefusal::UnsupportedProtocol) => {
                        v5::ConnectReturnCode::UnsupportedProtocolVersion
                    }
                    Some(ConnectRefusal::BadCredentials) => {
                        v5::ConnectReturnCode::BadUserNamePassword
                    }
                };
                let accepted = refusal.is_none();
                let props = v5::ConnAckProperties {
                    session_expiry_interval: None,
                    receive_max: accepted.then_some(limits.receive_maximum),
                    max_qos: None,
                    retain_available: accepted.then_some(0),
                    max_packet_size: accepted.then_some(limits.max_packet_bytes),
                    assigned_client_identifier: assigned_client_id.filter(|_| accepted),
                    topic_alias_max: None,
                    reason_string: None,
                    user_properties: Vec::new(),
                    wildcard_subscription_available: accepted.then_some(0),
                    subscription_identifiers_available: accepted.then_some(0),
                    shared_subscription_available: accepted.then_some(0),
                    server_keep_alive: None,
                    response_information: None,
                    server_reference: None,
                    authentication_method: None,
                    authentication_data: None,
                };
                Self::write_v5(v5::Packet::ConnAck(v5::ConnAck {
                    session_present: false,
                    code,
                    properties: Some(props),
                }))
            }
        }
    }

    /// The acknowledgement of a QoS 1 PUBLISH (`exactly_once` false) or the PUBREC of a QoS 2
    /// one. MQTT 3.1.1 has no way to say "refused", so it gets a plain acknowledgement: the
    /// refusal is in the dead-letter queue.
    pub fn publish_ack(&self, pkid: u16, verdict: &Verdict, exactly_once: bool) -> Bytes {
        match self.protocol {
            Protocol::V311 if exactly_once => {
                Self::write_v4(v4::Packet::PubRec(v4::PubRec::new(pkid)))
            }
            Protocol::V311 => Self::write_v4(v4::Packet::PubAck(v4::PubAck::new(pkid))),
            Protocol::V5 => {
                let (code, message) = match verdict {
                    Verdict::Accepted { .. } | Verdict::Control => (ReasonCode::Success, None),
                    Verdict::Rejected { reason, message } => {
                        (ReasonCode::for_rejection(*reason), Some(message))
                    }
                    Verdict::Busy { message } => (ReasonCode::QuotaExceeded, Some(message)),
                };
                let reason_string = message
                    .filter(|_| self.reason_strings)
                    .map(|m| truncate(m, 256));
                if exactly_once {
                    let mut ack = v5::PubRec::new(pkid, None);
                    ack.reason = code.pubrec();
                    ack.properties = reason_string.map(|r| v5::PubRecProperties {
                        reason_string: Some(r),
                        user_properties: Vec::new(),
                    });
                    Self::write_v5(v5::Packet::PubRec(ack))
                } else {
                    let mut ack = v5::PubAck::new(pkid, None);
                    ack.reason = code.puback();
                    ack.properties = reason_string.map(|r| v5::PubAckProperties {
                        reason_string: Some(r),
                        user_properties: Vec::new(),
                    });
                    Self::write_v5(v5::Packet::PubAck(ack))
                }
            }
        }
    }

    pub fn pubcomp(&self, pkid: u16) -> Bytes {
        match self.protocol {
            Protocol::V311 => Self::write_v4(v4::Packet::PubComp(v4::PubComp::new(pkid))),
            Protocol::V5 => Self::write_v5(v5::Packet::PubComp(v5::PubComp::new(pkid, None))),
        }
    }

    /// Subscriptions are refused: this listener is an ingest endpoint, not a broker.
    pub fn suback_refused(&self, pkid: u16, filters: usize) -> Bytes {
        match self.protocol {
            Protocol::V311 => Self::write_v4(v4::Packet::SubAck(v4::SubAck::new(
                pkid,
                vec![v4::SubscribeReasonCode::Failure; filters.max(1)],
            ))),
            Protocol::V5 => Self::write_v5(v5::Packet::SubAck(v5::SubAck {
                pkid,
                return_codes: vec![v5::SubscribeReasonCode::ImplementationSpecific; filters.max(1)],
                properties: self.reason_strings.then(|| v5::SubAckProperties {
                    reason_string: Some(
                        "this is an ingest endpoint: publish only, no subscriptions".into(),
                    ),
                    user_properties: Vec::new(),
                }),
            })),
        }
    }

    pub fn unsuback(&self, pkid: u16, filters: usize) -> Bytes {
        match self.protocol {
            Protocol::V311 => Self::write_v4(v4::Packet::UnsubAck(v4::UnsubAck::new(pkid))),
            Protocol::V5 => Self::write_v5(v5::Packet::UnsubAck(v5::UnsubAck {
                pkid,
                reasons: vec![v5::UnsubAckReason::NoSubscriptionExisted; filters.max(1)],
                properties: None,
            })),
        }
    }

    pub fn pingresp(&self) -> Bytes {
        match self.protocol {
            Protocol::V311 => Self::write_v4(v4::Packet::PingResp),
            Protocol::V5 => Self::write_v5(v5::Packet::PingResp(v5::PingResp)),
        }
    }

    /// A server-side DISCONNECT; MQTT 3.1.1 has none (the socket is just closed).
    pub fn disconnect(&self, reason: v5::DisconnectReasonCode) -> Option<Bytes> {
        match self.protocol {
            Protocol::V311 => None,
            Protocol::V5 => Some(Self::write_v5(v5::Packet::Disconnect(v5::Disconnect::new(
                reason,
            )))),
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// MQTT 5 reason codes for publish acknowledgements (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonCode {
    Success,
    /// 0x87
    NotAuthorized,
    /// 0x90
    TopicNameInvalid,
    /// 0x97
    QuotaExceeded,
    /// 0x99
    PayloadFormatInvalid,
}

impl ReasonCode {
    pub fn for_rejection(reason: RejectReason) -> Self {
        match reason {
            RejectReason::Oversize => ReasonCode::QuotaExceeded,
            RejectReason::NotJson
            | RejectReason::SchemaInvalid
            | RejectReason::TopicMismatch
            | RejectReason::TimestampInFuture
            | RejectReason::TimestampOutOfRange => ReasonCode::PayloadFormatInvalid,
            RejectReason::UnknownTopic => ReasonCode::TopicNameInvalid,
            RejectReason::MissingToken
            | RejectReason::InvalidToken
            | RejectReason::ExpiredToken
            | RejectReason::Forbidden => ReasonCode::NotAuthorized,
            // Never an answer to a producer: only salvage writes it.
            RejectReason::LogDamaged => ReasonCode::PayloadFormatInvalid,
        }
    }

    fn puback(self) -> v5::PubAckReason {
        match self {
            ReasonCode::Success => v5::PubAckReason::Success,
            ReasonCode::NotAuthorized => v5::PubAckReason::NotAuthorized,
            ReasonCode::TopicNameInvalid => v5::PubAckReason::TopicNameInvalid,
            ReasonCode::QuotaExceeded => v5::PubAckReason::QuotaExceeded,
            ReasonCode::PayloadFormatInvalid => v5::PubAckReason::PayloadFormatInvalid,
        }
    }

    fn pubrec(self) -> v5::PubRecReason {
        match self {
            ReasonCode::Success => v5::PubRecReason::Success,
            ReasonCode::NotAuthorized => v5::PubRecReason::NotAuthorized,
            ReasonCode::TopicNameInvalid => v5::PubRecReason::TopicNameInvalid,
            ReasonCode::QuotaExceeded => v5::PubRecReason::QuotaExceeded,
            ReasonCode::PayloadFormatInvalid => v5::PubRecReason::PayloadFormatInvalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_at_their_length() {
        assert_eq!(frame_len(&[0x30], 100).unwrap(), None);
        assert_eq!(frame_len(&[0x30, 2, 0], 100).unwrap(), None);
        assert_eq!(frame_len(&[0x30, 2, 0, 0, 9], 100).unwrap(), Some(4));
        // 200 = 0xC8 0x01
        assert_eq!(frame_len(&[0x30, 0xC8, 0x01], 1000).unwrap(), None);
        assert!(matches!(
            frame_len(&[0x30, 0xC8, 0x01], 100),
            Err(FrameError::TooLarge { size: 203, .. })
        ));
        assert!(matches!(
            frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX),
            Err(FrameError::MalformedLength)
        ));
    }

    #[test]
    fn connect_level_is_read_from_the_variable_header() {
        let mut buf = BytesMut::new();
        v4::Packet::Connect(v4::Connect::new("c"))
            .write(&mut buf, 1000)
            .unwrap();
        assert_eq!(connect_level(&buf), Some(4));
        let mut buf = BytesMut::new();
        v5::Packet::Connect(
            v5::Connect {
                keep_alive: 10,
                client_id: "c".into(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        )
        .write(&mut buf, None)
        .unwrap();
        assert_eq!(connect_level(&buf), Some(5));
    }

    fn v5_publish(user_properties: &[(&str, &str)]) -> BytesMut {
        let properties = (!user_properties.is_empty()).then(|| v5::PublishProperties {
            user_properties: user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        });
        let mut publish = v5::Publish::new(
            "gaveurs/LL/1/gavage",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            "{}",
            properties,
        );
        publish.pkid = 7;
        let mut buf = BytesMut::new();
        v5::Packet::Publish(publish).write(&mut buf, None).unwrap();
        buf
    }

    fn decoded(protocol: Protocol, frame: BytesMut) -> PublishInfo {
        match decode(protocol, frame).unwrap() {
            Inbound::Publish(publish) => publish,
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }

    #[test]
    fn the_backfill_user_property_flags_a_publish() {
        let publish = decoded(
            Protocol::V5,
            v5_publish(&[("authorization", "Bearer abc"), ("backfill", "true")]),
        );
        assert!(publish.backfill);
        assert_eq!(publish.token.as_deref(), Some("Bearer abc"));
        assert_eq!(publish.pkid, 7);
        assert!(decoded(Protocol::V5, v5_publish(&[("BackFill", "TRUE")])).backfill);
        for props in [
            &[][..],
            &[("backfill", "false")][..],
            &[("backfill", "")][..],
            &[("backfilled", "true")][..],
            &[("authorization", "Bearer abc")][..],
        ] {
            let publish = decoded(Protocol::V5, v5_publish(props));
            assert!(!publish.backfill, "{props:?}");
        }
    }

    #[test]
    fn mqtt_3_publishes_are_never_backfill() {
        let mut buf = BytesMut::new();
        let mut publish = v4::Publish::new(
            "gaveurs/LL/1/gavage",
            rumqttc::mqttbytes::QoS::AtLeastOnce,
            "{}",
        );
        publish.pkid = 3;
        v4::Packet::Publish(publish).write(&mut buf, 1000).unwrap();
        let publish = decoded(Protocol::V311, buf);
        assert!(!publish.backfill);
        assert_eq!(publish.pkid, 3);
    }
}
