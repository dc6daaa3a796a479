//! A subscription to an external MQTT broker (Mosquitto, EMQX…) instead of the embedded
//! listener (SPEC §2).
//!
//! The pipeline subscribes at QoS 1 with a persistent session (clean start off, a session
//! expiry) and manual acknowledgements: a delivery is acknowledged only once the intake says
//! it is durable, so after a crash the broker delivers it again. With `shared_group` set,
//! several instances share the load through `$share/<group>/…` subscriptions.
//!
//! Each message's MQTT 5 user properties carry its token (`authorization: Bearer <jwt>`) and,
//! for replays, `backfill: true`, which sets the envelope's backfill flag (no SMS).

use std::time::Duration;

use gaveurs_schemas::envelope::{Provenance, Transport};
use gaveurs_schemas::error::Backoff;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::intake::{Credentials, DurableTicket, Intake, RawInput, backfill_in_user_properties};
use crate::sources::health::SourceFlag;
use crate::topics;

/// `[mqtt]` settings used when `broker` is set.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Seconds the broker keeps the session (and its undelivered messages) while the
    /// pipeline is away.
    pub session_expiry_s: u32,
    /// `$share/<group>/…` subscriptions, so instances split the messages.
    pub shared_group: Option<String>,
    /// Deliveries in flight at once (MQTT 5 Receive Maximum the broker must respect).
    pub max_inflight: u16,
}

/// A broker address: `mqtt://host:port` (port 1883 when omitted).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
}

impl TryFrom<String> for BrokerUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let url = url::Url::parse(&text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "mqtt" | "tcp") {
            return Err(format!(
                "{text:?}: only mqtt://host:port is supported (got scheme {:?})",
                url.scheme()
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{text:?} has no host"))?
            .to_string();
        Ok(BrokerUrl {
            host,
            port: url.port().unwrap_or(1883),
        })
    }
}

/// Deliveries a session can have unacknowledged at once: one per MQTT packet id.
const MAX_UNACKNOWLEDGED: usize = u16::MAX as usize;
/// The client's request queue holds our PUBACKs plus a few subscribes and a disconnect.
const REQUESTS_CAPACITY: usize = MAX_UNACKNOWLEDGED + 16;

/// Between attempts to reach the broker: from 200 ms, doubling up to 30 s.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));

/// Runs the subscription until `shutdown`; then acknowledges what became durable and
/// disconnects, leaving anything unacknowledged to the broker. `connected` follows the
/// broker connection, for readiness: up once subscribed, down while reconnecting.
pub async fn run<I: Intake>(
    settings: BrokerSettings,
    intake: I,
    shutdown: CancellationToken,
    connected: SourceFlag,
) {
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options
        .set_clean_start(false)
        .set_keep_alive(Duration::from_secs(15))
        .set_manual_acks(true)
        .set_session_expiry_interval(Some(settings.session_expiry_s))
        .set_receive_maximum(Some(settings.max_inflight))
        .set_max_packet_size(Some(16 * 1024 * 1024))
        .set_request_channel_capacity(REQUESTS_CAPACITY);
    if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, REQUESTS_CAPACITY);
    let source = format!("{}:{}", settings.host, settings.port);

    // Neither this queue nor the client's requests may ever fill: the acknowledger waits on
    // the event loop to take its PUBACK, and the event loop is not polled while this loop
    // waits for room. Brokers do not all keep to our Receive Maximum (Mosquitto sent more
    // than 1,024 at once), but none can have more than 65,535 packet ids unacknowledged.
    let (ack_tx, mut ack_rx) = mpsc::channel::<(DurableTicket, Publish)>(MAX_UNACKNOWLEDGED);
    let acker = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some((ticket, publish)) = ack_rx.recv().await {
                if ticket.await.is_err() {
                    return;
                }
                if client.ack(&publish).await.is_err() {
                    return;
                }
            }
        })
    };

    let mut reconnect = RECONNECT.retrying();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                reconnect.succeeded();
                if !ack.session_present {
                    let filters = topics::SUBSCRIPTIONS.iter().map(|f| {
                        let filter = match &settings.shared_group {
                            Some(group) => format!("$share/{group}/{f}"),
                            None => f.to_string(),
                        };
                        Filter::new(filter, QoS::AtLeastOnce)
                    });
                    if let Err(e) = client.subscribe_many(filters).await {
                        tracing::error!(error = %e, "could not subscribe to the broker");
                    }
                }
                tracing::info!(broker = %source, session_present = ack.session_present, "connected to MQTT broker");
                if ack.session_present {
                    connected.up();
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| {
                        !matches!(
                            c,
                            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                        )
                    })
                    .count();
                if refused > 0 {
                    tracing::error!(broker = %source, refused, "the broker refused subscriptions");
                }
                // Ready once subscribed: a message published before that would be missed.
                connected.up();
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let input = raw_input(&publish, &source);
                let submitted = intake.submit(input).await;
                if publish.qos != QoS::AtMostOnce
                    && ack_tx.send((submitted.durable, publish)).await.is_err()
                {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                connected.down(format!("connection failed ({e}); reconnecting"));
                let delay = reconnect.failed();
                tracing::warn!(broker = %source, error = %e, retry_in = ?delay, "MQTT broker connection failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    // Send the acknowledgements of everything already taken, then leave. Deliveries that
    // arrive meanwhile are not acknowledged: the broker keeps them for the next session.
    drop(ack_tx);
    let drain = async {
        let mut acker = acker;
        loop {
            tokio::select! {
                _ = &mut acker => break,
                event = eventloop.poll() => if event.is_err() { break },
            }
        }
        let _ = client.disconnect().await;
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(3), drain)
        .await
        .is_err()
    {
        tracing::warn!(broker = %source, "MQTT broker did not take every acknowledgement before shutdown");
    }
    connected.down("stopped");
}

fn raw_input(publish: &Publish, source: &str) -> RawInput {
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let token = publish.properties.as_ref().and_then(|props| {
        props
            .user_properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.clone())
    });
    let backfill = publish
        .properties
        .as_ref()
        .is_some_and(|props| backfill_in_user_properties(&props.user_properties));
    let mut provenance = Provenance::new(Transport::MqttBroker);
    provenance.topic = Some(topic.clone());
    provenance.packet_id = (publish.qos != QoS::AtMostOnce).then_some(publish.pkid);
    provenance.source = Some(source.to_string());
    RawInput {
        route: topics::route(&topic),
        payload: publish.payload.clone(),
        provenance,
        credentials: Credentials {
            message_token: token,
            connection_token: None,
        },
        received_at: chrono::Utc::now(),
        produced_at: None,
        backfill,
        reread: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let url = BrokerUrl::try_from("mqtt://broker.local:1884".to_string()).unwrap();
        assert_eq!((url.host.as_str(), url.port), ("broker.local", 1884));
        assert_eq!(
            BrokerUrl::try_from("mqtt://h".to_string()).unwrap().port,
            1883
        );
        assert!(BrokerUrl::try_from("http://h:1".to_string()).is_err());
        assert!(BrokerUrl::try_from("h:1".to_string()).is_err());
    }
}
