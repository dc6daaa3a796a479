//! Kafka out (SPEC §3): refused records on `gaveurs.dlq.v1`, KPI rows on `gaveurs.kpis.v1`,
//! alert transitions on `gaveurs.alerts.v1`, and every accepted record on the
//! live topic that the WebSocket tier of every instance reads, so a gaveur connected to any
//! instance sees every record of their lots, whichever instance processed it.
//!
//! The producer is idempotent (no duplicates from its own retries). Both outputs are
//! notifications: the durable copy of a refused or accepted record is its Parquet row, so a
//! message lost when an instance crashes before librdkafka sent it is not re-sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gaveurs_schemas::DeadLetter;
use gaveurs_schemas::error::Backoff;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::wal::WalEntry;
use crate::websocket::Hub;

/// The header naming the instance that produced a live message.
const INSTANCE_HEADER: &str = "gaveurs-instance";

#[derive(Debug, Clone)]
pub struct OutputSettings {
    pub brokers: String,
    pub dlq_topic: String,
    pub live_topic: String,
    /// KPI rows as JSON, keyed by `code_lot` (else the site or station).
    pub kpis_topic: String,
    /// Alert transitions as JSON, keyed by `code_lot` or `device_id`.
    pub alerts_topic: String,
    pub instance: String,
    /// librdkafka properties passed through (security settings).
    pub properties: BTreeMap<String, String>,
}

struct LogFailures;

impl ClientContext for LogFailures {}

impl ProducerContext for LogFailures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, message)) = result {
            tracing::warn!(target: "connectors", topic = message.topic(), error = %e, "a Kafka output message was not delivered");
        }
    }
}

pub struct KafkaOutput {
    producer: ThreadedProducer<LogFailures>,
    settings: OutputSettings,
}

impl KafkaOutput {
    pub fn new(settings: OutputSettings) -> Result<Arc<KafkaOutput>, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("client.id", format!("gaveurs-{}", settings.instance));
        for (key, value) in &settings.properties {
            config.set(key, value);
        }
        let producer = config.create_with_context(LogFailures)?;
        Ok(Arc::new(KafkaOutput { producer, settings }))
    }

    /// The refused input as it came, with why it was refused and where it came from.
    pub fn dead_letter(&self, dead: &DeadLetter, payload: &[u8]) {
        let provenance = &dead.provenance;
        let partition = provenance.partition.map(|p| p.to_string());
        let offset = provenance.offset.map(|o| o.to_string());
        let mut headers = OwnedHeaders::new();
        for (key, value) in [
            ("reason_code", Some(dead.reason_code.as_str())),
            ("reason", Some(dead.reason.as_str())),
            ("stage", Some(dead.stage.as_str())),
            ("transport", Some(provenance.transport.as_str())),
            ("topic", provenance.topic.as_deref()),
            ("partition", partition.as_deref()),
            ("offset", offset.as_deref()),
            ("site", dead.site.as_deref()),
            ("event_id", Some(&dead.event_id.to_string())),
            (INSTANCE_HEADER, Some(self.settings.instance.as_str())),
        ] {
            if let Some(value) = value {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
        }
        let key = dead.event_id.to_string();
        self.send(
            BaseRecord::to(&self.settings.dlq_topic)
                .key(key.as_str())
                .payload(payload)
                .headers(headers),
        );
    }

    /// One KPI row (JSON) on the KPI topic.
    pub fn kpi(&self, key: &str, json: &[u8]) {
        if self.settings.kpis_topic.is_empty() {
            return;
        }
        self.send(
            BaseRecord::to(&self.settings.kpis_topic)
                .key(key)
                .payload(json),
        );
    }

    /// An alert transition as JSON (`{"transition", "alert", "recorded_at"}`), keyed by the
    /// alert's `code_lot` or `device_id`, so one key's transitions stay in order.
    pub fn alert(&self, key: &str, json: &[u8]) {
        if self.settings.alerts_topic.is_empty() {
            return;
        }
        self.send(
            BaseRecord::to(&self.settings.alerts_topic)
                .key(key)
                .payload(json)
                .headers(self.instance_header()),
        );
    }

    /// Names this instance, so its own readers skip what it wrote.
    fn instance_header(&self) -> OwnedHeaders {
        OwnedHeaders::new().insert(Header {
            key: INSTANCE_HEADER,
            value: Some(self.settings.instance.as_str()),
        })
    }

    /// Whether accepted records go to a live topic (`[kafka] live_topic` not empty).
    pub fn has_live_topic(&self) -> bool {
        !self.settings.live_topic.is_empty()
    }

    /// An accepted record, for the live views of every other instance: `encoded` is its log
    /// entry ([`crate::wal::encode`]).
    pub fn live(&self, key: &str, encoded: &[u8]) {
        if self.settings.live_topic.is_empty() {
            return;
        }
        self.send(
            BaseRecord::to(&self.settings.live_topic)
                .key(key)
                .payload(encoded)
                .headers(self.instance_header()),
        );
    }

    fn send(&self, record: BaseRecord<'_, str, [u8]>) {
        if let Err((e, record)) = self.producer.send(record) {
            tracing::warn!(target: "connectors", topic = record.topic, error = %e, "a Kafka output message was dropped");
        }
    }

    /// Sends what is queued (at most `timeout`), at shutdown.
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(target: "connectors", error = %e, "Kafka output not flushed");
        }
    }
}

/// Reads every instance's records from the live topic into this instance's hub, so a gaveur
/// connected here sees the records of their lots whichever instance processed them.
pub fn spawn_live_reader(
    settings: &OutputSettings,
    hub: Arc<Hub>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, KafkaError> {
    spawn_topic_reader(
        settings,
        &settings.live_topic,
        "live",
        move |payload| match serde_json::from_slice::<WalEntry>(payload) {
            Ok(WalEntry::Event(event)) => hub.publish_event(&event),
            Ok(WalEntry::DeadLetter(_) | WalEntry::Reread(_)) => {}
            Err(e) => {
                tracing::warn!(target: "websocket", error = %e, "unreadable message on the live topic")
            }
        },
        stop,
    )
}

/// Between looks for a topic that does not exist yet, and after a failed read.
const TOPIC_RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));

/// Reads what the other instances write to `topic` from its end (in a group of this instance
/// alone, `gaveurs-<what>-<instance>`) and hands each payload to `deliver`. A topic that does
/// not exist yet is looked for again, and a broker that fails is read again, with backoff.
pub fn spawn_topic_reader(
    settings: &OutputSettings,
    topic: &str,
    what: &str,
    deliver: impl Fn(&[u8]) + Send + 'static,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", format!("gaveurs-{what}-{}", settings.instance))
        .set("enable.auto.commit", "false")
        // Each reader would prefetch 64 MB by default; live messages are small and current.
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.max.bytes", "4194304");
    for (key, value) in &settings.properties {
        config.set(key, value);
    }
    let consumer: StreamConsumer = config.create()?;
    let instance = settings.instance.clone();
    let topic = topic.to_string();
    let what = what.to_string();
    Ok(tokio::spawn(async move {
        let mut reported = false;
        let mut retrying = TOPIC_RETRY.retrying();
        loop {
            let partitions = tokio::task::block_in_place(|| {
                consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                    .ok()
                    .and_then(|m| {
                        m.topics()
                            .iter()
                            .find(|t| t.name() == topic && t.error().is_none())
                            .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                    })
                    .filter(|p| !p.is_empty())
            });
            if let Some(partitions) = partitions {
                let mut list = TopicPartitionList::new();
                for partition in partitions {
                    let _ = list.add_partition_offset(&topic, partition, Offset::End);
                }
                if let Err(e) = consumer.assign(&list) {
                    tracing::warn!(target: "websocket", topic, error = %e, "cannot read the {what} topic");
                    return;
                }
                tracing::info!(target: "websocket", topic, "reading other instances' {what} messages for the live channels");
                retrying.succeeded();
                break;
            }
            if !reported {
                reported = true;
                tracing::warn!(target: "websocket", topic, "the {what} topic does not exist yet; looking again with backoff");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(retrying.failed()) => {}
            }
        }
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!(target: "websocket", topic, error = %e, "topic reader");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(retrying.failed()) => {}
                    }
                    continue;
                }
            };
            retrying.succeeded();
            let own = message.headers().is_some_and(|headers| {
                headers
                    .iter()
                    .any(|h| h.key == INSTANCE_HEADER && h.value == Some(instance.as_bytes()))
            });
            if !own && let Some(payload) = message.payload() {
                deliver(payload);
            }
        }
    }))
}
