//! The Kafka source (SPEC §2): a consumer-group member reading `gaveurs.gavage.v1` (meals,
//! and lot outcomes marked `"record_type": "lot_outcome"`) and `gaveurs.sqal.v1`, each record
//! authenticated by its `authorization` header. A `backfill: true` header marks a replay of
//! past records (the envelope's backfill flag: no SMS).
//!
//! Offsets are committed only once every record up to them is in a published Parquet file:
//! the source remembers, per partition, the log position each record reached, and commits
//! after each roll what the roll covered. When the group takes partitions away, the instance
//! first has everything it consumed published (a roll on request), commits it, and only then
//! lets them go, so the next owner neither repeats nor skips a record. On SIGTERM it does the
//! same for all its partitions before leaving the group. When partitions are assigned, each
//! starts after the highest offset any instance's roll manifest names (see
//! `gaveurs_sinks::parquet::manifest`), or the group's committed offset if that is further;
//! a group with neither starts at the earliest offset.
//!
//! librdkafka calls the rebalance callback from `poll`, on this source's own thread, which
//! is why the source is a thread and not a task: the callback may block while a roll is
//! published.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use gaveurs_schemas::envelope::{Provenance, Transport};
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::intake::{BACKFILL, Credentials, Intake, RawInput, Route, Target, backfill_flag};
use crate::sources::health::SourceFlag;

/// How long a handover or shutdown waits for its roll to be published.
const PUBLISH_WAIT: Duration = Duration::from_secs(4);

/// Messages already fetched are taken this many at a time, so the intake is entered once
/// per batch rather than once per record.
const BATCH: usize = 512;

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group: String,
    pub gavage_topic: String,
    pub sqal_topic: String,
    pub client_id: String,
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// librdkafka properties passed through as given (`security.protocol`, `sasl.*`,
    /// `ssl.*`…); they override the source's own settings.
    pub properties: BTreeMap<String, String>,
}

/// What the source needs from storage to commit offsets honestly.
pub trait Publication: Send + Sync + 'static {
    /// A log position covering every input submitted so far.
    fn appended(&self) -> u64;
    /// Every log entry at or below this position is in a published file.
    fn published(&self) -> u64;
    /// Asks for a roll covering `position` and waits for it (at most `timeout`).
    fn publish_through(&self, position: u64, timeout: Duration) -> bool;
    /// The last offset in a published file of any instance, per topic and partition.
    fn published_offsets(&self) -> std::io::Result<BTreeMap<String, BTreeMap<i32, i64>>>;
}

/// State that belongs to a partition rather than to an instance (the alert state): loaded by
/// whichever instance takes the partition, saved when it hands it over.
pub trait PartitionState: Send + Sync + 'static {
    /// This instance owns the partition from now on. Returns the first offset that state
    /// still needs: the partition is read from there, and what is already published is read
    /// again for that state only ([`RawInput::reread`]).
    fn taken(&self, topic: &str, partition: i32) -> Option<i64>;
    /// The partition goes to another instance (or this one stops): what was submitted up
    /// to log position `through` is taken into that state (waiting at most `wait`), which
    /// is saved and let go.
    fn released(&self, topic: &str, partition: i32, through: u64, wait: std::time::Duration);
    /// The partition, just taken, starts again at offset 0 (its topic was recreated or its
    /// broker lost its data): offsets the state has seen no longer name the same records.
    fn offsets_reset(&self, topic: &str, partition: i32);
}

/// Several states of each partition (the alerts', the ledger's): a partition is read from
/// the first offset any of them still needs, and handed over by each in turn.
pub struct PartitionStates(pub Vec<Arc<dyn PartitionState>>);

impl PartitionState for PartitionStates {
    fn taken(&self, topic: &str, partition: i32) -> Option<i64> {
        let needed: Vec<Option<i64>> = self
            .0
            .iter()
            .map(|state| state.taken(topic, partition))
            .collect();
        needed.into_iter().flatten().min()
    }

    fn released(&self, topic: &str, partition: i32, through: u64, wait: std::time::Duration) {
        let deadline = std::time::Instant::now() + wait;
        for state in &self.0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            state.released(topic, partition, through, left);
        }
    }

    fn offsets_reset(&self, topic: &str, partition: i32) {
        for state in &self.0 {
            state.offsets_reset(topic, partition);
        }
    }
}

/// Per partition, the log position each consumed record reached, oldest first.
#[derive(Default)]
struct Tracker {
    pending: HashMap<(String, i32), VecDeque<(u64, i64)>>,
}

impl Tracker {
    fn consumed(&mut self, topic: &str, partition: i32, offset: i64, position: u64) {
        let queue = self
            .pending
            .entry((topic.to_string(), partition))
            .or_default();
        // Records that reached the same position need one entry: the last offset covers them.
        match queue.back_mut() {
            Some(last) if last.0 == position => last.1 = offset,
            _ => queue.push_back((position, offset)),
        }
    }

    /// The next offset to commit per partition, for records at or below `published`.
    fn committable(&mut self, published: u64) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), queue) in &mut self.pending {
            let mut next = None;
            while let Some(&(position, offset)) = queue.front() {
                if position > published {
                    break;
                }
                next = Some(offset + 1);
                queue.pop_front();
            }
            if let Some(next) = next {
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(next));
            }
        }
        list
    }

    fn forget(&mut self, partitions: &TopicPartitionList) {
        for element in partitions.elements() {
            self.pending
                .remove(&(element.topic().to_string(), element.partition()));
        }
    }
}

struct SourceContext<P: Publication> {
    publication: Arc<P>,
    owners: Arc<dyn PartitionState>,
    /// Per partition, the last offset already published when it was taken: records up to
    /// it are read again for the partition's state only.
    reread_through: Mutex<HashMap<(String, i32), i64>>,
    tracker: Arc<Mutex<Tracker>>,
    /// Partitions this instance owns right now; a batch drops the messages of partitions
    /// revoked while it was being gathered (the next owner reads them).
    assigned: Mutex<HashSet<(String, i32)>>,
    /// Up while librdkafka has a connection to some broker, for readiness.
    connected: SourceFlag,
}

impl<P: Publication> ClientContext for SourceContext<P> {
    /// librdkafka's statistics (every `statistics.interval.ms`): whether any broker is
    /// connected, and the consumer lag of the partitions this instance owns, summed per
    /// topic, for `/metrics`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        if statistics
            .brokers
            .values()
            .any(|broker| broker.state == "UP")
        {
            self.connected.up();
        } else {
            self.connected
                .down("no Kafka broker connected; reconnecting");
        }
        let metrics = gaveurs_telemetry::registry();
        for (topic, stats) in &statistics.topics {
            let lag: i64 = stats
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(|p| p.consumer_lag)
                .sum();
            metrics
                .gauge(
                    "gaveurs_kafka_consumer_lag",
                    "Records behind the end of each input topic, over the partitions this instance owns.",
                    &[("topic", topic)],
                )
                .set(lag as f64);
        }
    }

    /// librdkafka reconnects by itself; readiness says so at once rather than at the next
    /// statistics.
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.connected.down(format!(
                "no Kafka broker reachable ({reason}); reconnecting"
            ));
        }
        tracing::warn!(target: "connectors", error = %error, reason, "Kafka client error");
    }
}

impl<P: Publication> SourceContext<P> {
    /// Publishes everything consumed so far and commits it (synchronously).
    fn publish_and_commit(&self, consumer: &BaseConsumer<Self>, why: &str) {
        let target = self.publication.appended();
        if !self.publication.publish_through(target, PUBLISH_WAIT) {
            tracing::warn!(target: "connectors", why, "records consumed from Kafka were not published in time; the next owner re-reads them");
        }
        let list = self
            .tracker
            .lock()
            .committable(self.publication.published());
        if list.count() > 0
            && let Err(e) = consumer.commit(&list, CommitMode::Sync)
        {
            tracing::warn!(target: "connectors", why, error = %e, "cannot commit Kafka offsets");
        }
    }

    /// Hands the partitions' state over, after what this instance consumed of them.
    fn release(&self, partitions: &[(String, i32)]) {
        let through = self.publication.appended();
        let deadline = std::time::Instant::now() + PUBLISH_WAIT;
        for (topic, partition) in partitions {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            self.owners.released(topic, *partition, through, wait);
            self.reread_through
                .lock()
                .remove(&(topic.clone(), *partition));
        }
    }

    /// Starts each partition after what is already published, by any instance — or earlier,
    /// where the partition's state needs records it has not taken in yet (they are marked
    /// to be read again for that state only).
    fn resume_positions(&self, consumer: &BaseConsumer<Self>, assigned: &mut TopicPartitionList) {
        let published = match self.publication.published_offsets() {
            Ok(published) => published,
            Err(e) => {
                tracing::warn!(target: "connectors", error = %e, "cannot read the roll manifests; starting from committed offsets");
                return;
            }
        };
        let committed = consumer
            .committed_offsets(assigned.clone(), Timeout::After(Duration::from_secs(5)))
            .ok();
        let elements: Vec<(String, i32)> = assigned
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        for (topic, partition) in elements {
            let needed = self.owners.taken(&topic, partition);
            let committed_next = committed
                .as_ref()
                .and_then(|c| c.find_partition(&topic, partition))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let published_next = published
                .get(&topic)
                .and_then(|p| p.get(&partition))
                .map(|last| committed_next.unwrap_or(0).max(last + 1));
            let mut next = published_next.or(committed_next);
            if let Some(expected) = next
                && let Ok((_, end)) = consumer.fetch_watermarks(
                    &topic,
                    partition,
                    Timeout::After(Duration::from_secs(5)),
                )
                && end < expected
            {
                // Offsets only grow: a partition that ends before what was already taken from
                // it was recreated, or its broker lost its data. Its records are new.
                tracing::warn!(target: "connectors", topic, partition, end, expected, "the Kafka partition ends before offsets already taken from it: the topic was recreated or its broker lost its data; reading it from the start");
                next = Some(0);
                self.owners.offsets_reset(&topic, partition);
            }
            let start = match (needed, next) {
                (Some(needed), Some(next)) if needed < next => {
                    self.reread_through
                        .lock()
                        .insert((topic.clone(), partition), next - 1);
                    needed
                }
                (_, Some(next)) => next,
                (_, None) => continue,
            };
            tracing::info!(target: "connectors", topic, partition, start, published_next = ?published_next, committed = ?committed_next, state_needs = ?needed, "resuming the partition");
            let _ = assigned.set_partition_offset(&topic, partition, Offset::Offset(start));
        }
    }
}

impl<P: Publication> ConsumerContext for SourceContext<P> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.resume_positions(consumer, partitions);
                tracing::info!(target: "connectors", partitions = %describe(partitions), "Kafka partitions assigned");
                self.assigned.lock().extend(
                    partitions
                        .elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition())),
                );
                if let Err(e) = consumer.assign(partitions) {
                    tracing::error!(target: "connectors", error = %e, "cannot take the assigned Kafka partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.publish_and_commit(consumer, "partitions revoked");
                self.release(
                    &partitions
                        .elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition()))
                        .collect::<Vec<_>>(),
                );
                self.tracker.lock().forget(partitions);
                let mut assigned = self.assigned.lock();
                for e in partitions.elements() {
                    assigned.remove(&(e.topic().to_string(), e.partition()));
                }
                tracing::info!(target: "connectors", partitions = %describe(partitions), "Kafka partitions handed over");
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!(target: "connectors", error = ?other, "Kafka rebalance failed");
                self.assigned.lock().clear();
                let _ = consumer.unassign();
            }
        }
    }
}

fn describe(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts the source's thread. It stops reading when `stop` is cancelled, then publishes and
/// commits what it consumed, and leaves the group.
pub fn spawn<I: Intake, P: Publication>(
    settings: KafkaSettings,
    intake: I,
    publication: Arc<P>,
    owners: Arc<dyn PartitionState>,
    connected: SourceFlag,
    stop: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, KafkaError> {
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group)
        .set("client.id", &settings.client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Feeds readiness and the consumer-lag metric (`SourceContext::stats`).
        .set("statistics.interval.ms", "1000")
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            settings.heartbeat_interval_ms.to_string(),
        )
        // A topic created after start is picked up within seconds.
        .set("topic.metadata.refresh.interval.ms", "5000")
        // Eager rebalancing: a partition is revoked (and published) before anyone gets it.
        .set("partition.assignment.strategy", "range")
        // librdkafka prefetches up to 64 MB by default; the intake takes records one at a
        // time, so a few MB ahead keeps it busy and bounds memory (256 MB for the process).
        .set("queued.max.messages.kbytes", "8192")
        .set("fetch.max.bytes", "8388608");
    for (key, value) in &settings.properties {
        config.set(key, value);
    }
    let consumer: BaseConsumer<SourceContext<P>> = config.create_with_context(SourceContext {
        publication: publication.clone(),
        owners,
        reread_through: Mutex::new(HashMap::new()),
        tracker: tracker.clone(),
        assigned: Mutex::new(HashSet::new()),
        connected,
    })?;
    consumer.subscribe(&[&settings.gavage_topic, &settings.sqal_topic])?;
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("gaveurs-kafka".into())
        .spawn(move || {
            let mut reported_missing: HashSet<String> = HashSet::new();
            let mut committed_through = publication.published();
            let mut batch: Vec<RawInput> = Vec::with_capacity(BATCH);
            while !stop.is_cancelled() {
                let mut wait = Duration::from_millis(100);
                while batch.len() < BATCH {
                    match consumer.poll(wait) {
                        None => break,
                        Some(Err(KafkaError::MessageConsumption(code))) => {
                            if reported_missing.insert(format!("{code:?}")) {
                                tracing::warn!(target: "connectors", error = %code, "Kafka: a configured topic is not available yet; consuming the others and retrying");
                            }
                            break;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(target: "connectors", error = %e, "Kafka consumer error");
                            break;
                        }
                        Some(Ok(message)) => {
                            let mut input = raw_input(&settings, &message);
                            input.reread = consumer
                                .context()
                                .reread_through
                                .lock()
                                .get(&(message.topic().to_string(), message.partition()))
                                .is_some_and(|last| message.offset() <= *last);
                            batch.push(input);
                        }
                    }
                    wait = Duration::ZERO;
                }
                if !batch.is_empty() {
                    let assigned = consumer.context().assigned.lock().clone();
                    batch.retain(|input| {
                        let p = &input.provenance;
                        assigned.contains(&(
                            p.topic.clone().unwrap_or_default(),
                            p.partition.unwrap_or_default(),
                        ))
                    });
                    // Waiting here is the backpressure: a full log stops consumption.
                    let positions = runtime.block_on(async {
                        let mut positions = Vec::with_capacity(batch.len());
                        for input in batch.drain(..) {
                            let at = (
                                input.provenance.topic.clone().unwrap_or_default(),
                                input.provenance.partition.unwrap_or_default(),
                                input.provenance.offset.unwrap_or_default(),
                            );
                            let submitted = intake.submit(input).await;
                            drop(submitted.durable);
                            positions.push((at, publication.appended()));
                        }
                        positions
                    });
                    let mut tracker = tracker.lock();
                    for ((topic, partition, offset), position) in positions {
                        tracker.consumed(&topic, partition, offset, position);
                    }
                }
                let published = publication.published();
                if published > committed_through {
                    committed_through = published;
                    let list = tracker.lock().committable(published);
                    if list.count() > 0
                        && let Err(e) = consumer.commit(&list, CommitMode::Async)
                    {
                        tracing::warn!(target: "connectors", error = %e, "cannot commit Kafka offsets");
                    }
                }
            }
            consumer
                .context()
                .publish_and_commit(&consumer, "shutting down");
            let mine: Vec<(String, i32)> = consumer.context().assigned.lock().iter().cloned().collect();
            consumer.context().release(&mine);
            consumer.unsubscribe();
            // Leaving the group now hands the partitions over at once, with nothing unpublished.
            let _ = consumer.poll(Duration::from_millis(100));
            tracing::info!(target: "connectors", "Kafka source stopped; offsets committed");
        })
        .map_err(|e| KafkaError::ClientCreation(e.to_string()))
}

fn raw_input(settings: &KafkaSettings, message: &BorrowedMessage<'_>) -> RawInput {
    let target = if message.topic() == settings.gavage_topic {
        Target::GavageOrOutcome
    } else {
        Target::Sqal
    };
    let provenance = Provenance {
        topic: Some(message.topic().to_string()),
        partition: Some(message.partition()),
        offset: Some(message.offset()),
        ..Provenance::new(Transport::Kafka)
    };
    let token = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case("authorization"))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string)
    });
    let backfill = message.headers().is_some_and(|headers| {
        headers
            .iter()
            .any(|h| h.key.eq_ignore_ascii_case(BACKFILL) && h.value.is_some_and(backfill_flag))
    });
    RawInput {
        route: Route::to(target),
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        provenance,
        credentials: Credentials {
            message_token: token,
            connection_token: None,
        },
        received_at: Utc::now(),
        produced_at: message
            .timestamp()
            .to_millis()
            .and_then(DateTime::from_timestamp_millis),
        backfill,
        reread: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_committable_once_their_position_is_published() {
        let mut tracker = Tracker::default();
        tracker.consumed("t", 0, 10, 5);
        tracker.consumed("t", 0, 11, 5);
        tracker.consumed("t", 0, 12, 8);
        tracker.consumed("t", 1, 3, 6);
        assert_eq!(tracker.committable(4).count(), 0);
        let list = tracker.committable(6);
        assert_eq!(
            list.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(12)
        );
        assert_eq!(
            list.find_partition("t", 1).unwrap().offset(),
            Offset::Offset(4)
        );
        let list = tracker.committable(8);
        assert_eq!(list.count(), 1);
        assert_eq!(
            list.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(13)
        );
    }
}
