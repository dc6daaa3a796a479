use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use axum::extract::ws::Utf8Bytes;
use gaveurs_schemas::Event;
use gaveurs_schemas::records::{Grade, Record, Site};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::filters::{RealtimeFilters, RealtimeKind, RealtimeMeta, RealtimeScope};

/// One serialised message, shared by all its receivers.
#[derive(Debug, Clone)]
pub struct Frame {
    pub seq: u64,
    pub text: Utf8Bytes,
    /// When the record it carries was received, for the end-to-end latency metric; `None`
    /// for messages that are not a record (KPIs, alerts, notifications).
    pub ingest_time: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Frames each gaveur channel keeps for `?since=` resumes.
    pub replay: usize,
    /// Frames a client may have queued before it is closed with 1013.
    pub client_queue: usize,
    /// First sequence number of every channel. Starting from the start-up time in
    /// milliseconds keeps numbers growing across restarts, so a client resuming with a number
    /// from before a restart sees a gap instead of silently wrong frames.
    pub seq_base: u64,
    /// Bytes all channels' replay buffers may hold together; past it, channels nobody is
    /// connected to are dropped, the longest quiet first.
    pub replay_budget_bytes: usize,
    /// A channel nobody is connected to and that got nothing for this long is dropped.
    pub channel_idle: std::time::Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            replay: 512,
            client_queue: 256,
            seq_base: chrono::Utc::now().timestamp_millis().max(1) as u64,
            replay_budget_bytes: 64 * 1024 * 1024,
            channel_idle: std::time::Duration::from_secs(3600),
        }
    }
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Frame>,
    evicted: CancellationToken,
}

/// Pushes `frame` to every subscriber; those whose queue is full are evicted and removed.
fn fan_out(subscribers: &mut Vec<Subscriber>, frame: &Frame) -> usize {
    let before = subscribers.len();
    subscribers.retain(|s| match s.tx.try_send(frame.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            s.evicted.cancel();
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
    before - subscribers.len()
}

struct ChannelState {
    next_seq: u64,
    replay: VecDeque<Frame>,
    /// Bytes of the frames in `replay`.
    replay_bytes: usize,
    subscribers: Vec<Subscriber>,
    last_publish: std::time::Instant,
}

/// What a gaveur-channel client gets when it joins.
pub struct GaveurSubscription {
    /// Frames after `since` still in the replay buffer, oldest first.
    pub backlog: Vec<Frame>,
    /// `Some((since, oldest_kept))` when frames after `since` were already dropped.
    pub gap: Option<(u64, u64)>,
    pub frames: mpsc::Receiver<Frame>,
    /// Cancelled when the client fell too far behind.
    pub evicted: CancellationToken,
    pub(super) hub: Arc<Hub>,
    pub(super) gaveur_id: i64,
    pub(super) id: u64,
}

impl GaveurSubscription {
    /// Moves the live frames and the eviction token out, keeping the registration (which
    /// ends when the subscription is dropped).
    pub(super) fn take_stream(&mut self) -> (mpsc::Receiver<Frame>, CancellationToken) {
        let (_, empty) = mpsc::channel(1);
        (
            std::mem::replace(&mut self.frames, empty),
            self.evicted.clone(),
        )
    }
}

impl Drop for GaveurSubscription {
    fn drop(&mut self) {
        if let Some(channel) = self.hub.gaveurs.lock().get(&self.gaveur_id) {
            channel.lock().subscribers.retain(|s| s.id != self.id);
        }
    }
}

pub(super) struct RealtimeSubscriber {
    pub(super) id: u64,
    pub(super) tx: mpsc::Sender<Frame>,
    pub(super) evicted: CancellationToken,
    pub(super) filters: Arc<Mutex<RealtimeFilters>>,
    pub(super) scope: RealtimeScope,
}

pub struct Hub {
    options: HubOptions,
    gaveurs: Mutex<HashMap<i64, Arc<Mutex<ChannelState>>>>,
    /// Bytes of every channel's replay buffer.
    replay_bytes: AtomicUsize,
    /// The highest sequence number a dropped channel gave: a channel made again after it
    /// was dropped starts above it, so its numbers never go backwards.
    dropped_seq_high_water: AtomicU64,
    pub(super) realtime: Mutex<Vec<RealtimeSubscriber>>,
    next_subscriber: AtomicU64,
    slow_disconnects: AtomicU64,
    closing: CancellationToken,
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    seq: u64,
    data: &'a T,
}

impl Hub {
    pub fn new(options: HubOptions) -> Arc<Hub> {
        Arc::new(Hub {
            options,
            gaveurs: Mutex::new(HashMap::new()),
            replay_bytes: AtomicUsize::new(0),
            dropped_seq_high_water: AtomicU64::new(0),
            realtime: Mutex::new(Vec::new()),
            next_subscriber: AtomicU64::new(1),
            slow_disconnects: AtomicU64::new(0),
            closing: CancellationToken::new(),
        })
    }

    /// Closes every client socket (1001, going away); used at shutdown.
    pub fn close_all(&self) {
        self.closing.cancel();
    }

    pub(super) fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    pub fn options(&self) -> &HubOptions {
        &self.options
    }

    /// Clients closed with 1013 so far.
    pub fn slow_disconnects(&self) -> u64 {
        self.slow_disconnects.load(Ordering::Relaxed)
    }

    /// Connected clients: (gaveur channels, dashboards).
    pub fn clients(&self) -> (usize, usize) {
        let gaveurs = self
            .gaveurs
            .lock()
            .values()
            .map(|c| c.lock().subscribers.len())
            .sum();
        (gaveurs, self.realtime.lock().len())
    }

    fn channel(&self, gaveur_id: i64) -> Arc<Mutex<ChannelState>> {
        self.gaveurs
            .lock()
            .entry(gaveur_id)
            .or_insert_with(|| {
                let next_seq = self
                    .options
                    .seq_base
                    .max(self.dropped_seq_high_water.load(Ordering::Acquire) + 1);
                Arc::new(Mutex::new(ChannelState {
                    next_seq,
                    replay: VecDeque::new(),
                    replay_bytes: 0,
                    subscribers: Vec::new(),
                    last_publish: std::time::Instant::now(),
                }))
            })
            .clone()
    }

    /// Gaveur channels in memory (connected or keeping frames for a resume).
    pub fn channels(&self) -> usize {
        self.gaveurs.lock().len()
    }

    /// Bytes the channels' replay buffers hold.
    pub fn replay_bytes(&self) -> usize {
        self.replay_bytes.load(Ordering::Relaxed)
    }

    /// Drops channels nobody is connected to: those quiet for `channel_idle`, then the
    /// longest quiet ones while the replay buffers hold more than the budget. A client that
    /// comes back to a dropped channel with `?since=` is told of the gap.
    pub fn drop_quiet_channels(&self) {
        let mut channels = self.gaveurs.lock();
        let mut quiet: Vec<(std::time::Instant, i64, usize, u64)> = Vec::new();
        for (id, channel) in channels.iter() {
            // A channel being published to is busy, not quiet.
            let Some(state) = channel.try_lock() else {
                continue;
            };
            if state.subscribers.is_empty() {
                quiet.push((state.last_publish, *id, state.replay_bytes, state.next_seq));
            }
        }
        quiet.sort();
        let target = self.options.replay_budget_bytes / 10 * 9;
        let mut held = self.replay_bytes.load(Ordering::Acquire);
        for (last_publish, id, bytes, next_seq) in quiet {
            if held <= target && last_publish.elapsed() < self.options.channel_idle {
                break;
            }
            channels.remove(&id);
            self.dropped_seq_high_water
                .fetch_max(next_seq.saturating_sub(1), Ordering::AcqRel);
            held = held.saturating_sub(bytes);
            self.replay_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Sends `{"type": kind, "seq": N, "data": data}` on one gaveur's channel.
    pub fn publish_to_gaveur<T: Serialize>(&self, gaveur_id: i64, kind: &str, data: &T) {
        self.publish_to_gaveur_at(gaveur_id, kind, data, None);
    }

    fn publish_to_gaveur_at<T: Serialize>(
        &self,
        gaveur_id: i64,
        kind: &str,
        data: &T,
        ingest_time: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        let channel = self.channel(gaveur_id);
        let over_budget = {
            let mut state = channel.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            let text =
                serde_json::to_string(&Envelope { kind, seq, data }).expect("frames serialise");
            let frame = Frame {
                seq,
                text: text.into(),
                ingest_time,
            };
            let mut added = frame.text.len() as isize;
            state.replay.push_back(frame.clone());
            while state.replay.len() > self.options.replay {
                if let Some(old) = state.replay.pop_front() {
                    added -= old.text.len() as isize;
                }
            }
            state.replay_bytes = (state.replay_bytes as isize + added).max(0) as usize;
            state.last_publish = std::time::Instant::now();
            let held = if added >= 0 {
                self.replay_bytes
                    .fetch_add(added as usize, Ordering::AcqRel)
                    + added as usize
            } else {
                self.replay_bytes
                    .fetch_sub(added.unsigned_abs(), Ordering::AcqRel)
                    .saturating_sub(added.unsigned_abs())
            };
            let evicted = fan_out(&mut state.subscribers, &frame);
            self.slow_disconnects
                .fetch_add(evicted as u64, Ordering::Relaxed);
            held > self.options.replay_budget_bytes
        };
        if over_budget {
            self.drop_quiet_channels();
        }
    }

    /// Routes an accepted record to its gaveur's channel and to the dashboards.
    pub fn publish_event(&self, event: &Event) {
        match &event.record {
            Record::Gavage(meal) => {
                self.publish_to_gaveur_at(
                    meal.gaveur_id,
                    "gavage",
                    meal,
                    Some(event.envelope.ingest_time),
                );
                self.publish_realtime(
                    RealtimeMeta {
                        kind: RealtimeKind::Gavage,
                        site: meal.site,
                        device_id: None,
                        grade: None,
                    },
                    "gavage_realtime",
                    event.envelope.ingest_time,
                    Some(event.envelope.ingest_time),
                    meal,
                );
            }
            Record::Sqal(sample) => {
                self.publish_realtime(
                    RealtimeMeta {
                        kind: RealtimeKind::Sqal,
                        site: sample.site_code,
                        device_id: Some(sample.device_id.clone()),
                        grade: Some(sample.grade),
                    },
                    "sensor_update",
                    event.envelope.ingest_time,
                    Some(event.envelope.ingest_time),
                    sample.as_ref(),
                );
            }
            Record::LotOutcome(outcome) => {
                #[derive(Serialize)]
                struct Notification<'a, T> {
                    kind: &'static str,
                    #[serde(flatten)]
                    outcome: &'a T,
                }
                self.publish_to_gaveur(
                    outcome.gaveur_id,
                    "notification",
                    &Notification {
                        kind: "lot_outcome",
                        outcome,
                    },
                );
            }
        }
    }

    /// Sends a site's message to the dashboards that may see that site, as
    /// `{"type":<kind>,"timestamp":…,"site_code":…,"data":{…}}` (`kind` is `kpi` for KPI rows,
    /// `alert` for alert transitions); `sqal` messages are kept by the `sqal_only` filter,
    /// and a station's by its `device_id` filter.
    pub fn publish_site<T: Serialize>(
        &self,
        kind: &str,
        site: Site,
        sqal: bool,
        device_id: Option<String>,
        data: &T,
    ) {
        let meta = RealtimeMeta {
            kind: if sqal {
                RealtimeKind::Sqal
            } else {
                RealtimeKind::Gavage
            },
            site,
            device_id,
            grade: None,
        };
        self.publish_realtime(meta, kind, chrono::Utc::now(), None, data);
    }

    fn publish_realtime<T: Serialize>(
        &self,
        meta: RealtimeMeta,
        kind: &str,
        timestamp: chrono::DateTime<chrono::Utc>,
        ingest_time: Option<chrono::DateTime<chrono::Utc>>,
        data: &T,
    ) {
        let mut subscribers = self.realtime.lock();
        if subscribers.is_empty() {
            return;
        }
        #[derive(Serialize)]
        struct Message<'a, T> {
            #[serde(rename = "type")]
            kind: &'a str,
            timestamp: chrono::DateTime<chrono::Utc>,
            site_code: Site,
            #[serde(skip_serializing_if = "Option::is_none")]
            device_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            grade: Option<Grade>,
            data: &'a T,
        }
        let text = serde_json::to_string(&Message {
            kind,
            timestamp,
            site_code: meta.site,
            device_id: meta.device_id.as_deref(),
            grade: meta.grade,
            data,
        })
        .expect("frames serialise");
        let frame = Frame {
            seq: 0,
            text: text.into(),
            ingest_time,
        };
        let before = subscribers.len();
        subscribers.retain(|s| {
            if !s.scope.accepts(&meta) || !s.filters.lock().accepts(&meta) {
                return true;
            }
            match s.tx.try_send(frame.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.evicted.cancel();
                    self.slow_disconnects.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        let _ = before;
    }

    /// Joins a gaveur's channel, optionally resuming after `since`.
    pub fn subscribe_gaveur(
        self: &Arc<Self>,
        gaveur_id: i64,
        since: Option<u64>,
    ) -> GaveurSubscription {
        let channel = self.channel(gaveur_id);
        let mut state = channel.lock();
        let (tx, rx) = mpsc::channel(self.options.client_queue);
        let evicted = CancellationToken::new();
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let (backlog, gap) = match since {
            None => (Vec::new(), None),
            Some(since) => {
                let backlog: Vec<Frame> = state
                    .replay
                    .iter()
                    .filter(|f| f.seq > since)
                    .cloned()
                    .collect();
                let oldest = state
                    .replay
                    .front()
                    .map(|f| f.seq)
                    .unwrap_or(state.next_seq);
                // Frames after `since` that were published but are no longer kept.
                let gap = (since + 1 < oldest && since < state.next_seq.saturating_sub(1))
                    .then_some((since, oldest));
                (backlog, gap)
            }
        };
        state.subscribers.push(Subscriber {
            id,
            tx,
            evicted: evicted.clone(),
        });
        GaveurSubscription {
            backlog,
            gap,
            frames: rx,
            evicted,
            hub: self.clone(),
            gaveur_id,
            id,
        }
    }

    pub(super) fn next_id(&self) -> u64 {
        self.next_subscriber.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(replay: usize, queue: usize) -> Arc<Hub> {
        Hub::new(HubOptions {
            replay,
            client_queue: queue,
            seq_base: 1,
            ..HubOptions::default()
        })
    }

    #[test]
    fn channels_nobody_reads_stay_within_the_replay_budget_and_numbers_never_go_back() {
        let hub = Hub::new(HubOptions {
            replay: 100,
            client_queue: 64,
            seq_base: 1,
            replay_budget_bytes: 50_000,
            channel_idle: std::time::Duration::from_secs(3600),
        });
        let watched = hub.subscribe_gaveur(7, None);
        for round in 0..20 {
            for gaveur in 0..1_000 {
                hub.publish_to_gaveur(gaveur, "gavage", &format!("meal {round}"));
            }
        }
        // A producer inventing gaveur ids: one frame each.
        for gaveur in 1_000..20_000 {
            hub.publish_to_gaveur(gaveur, "gavage", &"meal");
        }
        assert!(
            hub.replay_bytes() <= 50_000 + 1_000,
            "{} bytes",
            hub.replay_bytes()
        );
        assert!(hub.channels() < 2_000, "{} channels", hub.channels());
        // A connected gaveur's channel is never dropped.
        let resumed = hub.subscribe_gaveur(7, Some(0));
        assert_eq!(resumed.backlog.len(), 20);
        drop(watched);
        // A dropped channel made again numbers above anything it gave before.
        let mut again = hub.subscribe_gaveur(0, Some(5));
        hub.publish_to_gaveur(0, "gavage", &"after");
        let (mut frames, _) = again.take_stream();
        let frame = frames.try_recv().unwrap();
        assert!(frame.seq > 20, "seq {}", frame.seq);
    }

    #[test]
    fn channels_number_frames_and_replay_after_since() {
        let hub = hub(3, 16);
        for n in 0..5 {
            hub.publish_to_gaveur(1, "gavage", &n);
        }
        hub.publish_to_gaveur(2, "gavage", &"other");
        let sub = hub.subscribe_gaveur(1, Some(3));
        let seqs: Vec<u64> = sub.backlog.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, vec![4, 5]);
        assert_eq!(sub.gap, None);
        assert_eq!(
            &*sub.backlog[0].text,
            r#"{"type":"gavage","seq":4,"data":3}"#
        );
        // Frames 2..=2 were dropped from the buffer (which keeps 3..=5).
        let late = hub.subscribe_gaveur(1, Some(1));
        assert_eq!(late.gap, Some((1, 3)));
        assert_eq!(late.backlog.len(), 3);
        // Another gaveur's channel numbers on its own.
        let other = hub.subscribe_gaveur(2, Some(0));
        assert_eq!(other.backlog[0].seq, 1);
    }

    #[tokio::test]
    async fn a_full_queue_evicts_only_that_client() {
        let hub = hub(8, 2);
        let slow = hub.subscribe_gaveur(1, None);
        let mut fast = hub.subscribe_gaveur(1, None);
        for n in 0..3 {
            hub.publish_to_gaveur(1, "gavage", &n);
            fast.frames.recv().await.unwrap();
        }
        assert!(slow.evicted.is_cancelled());
        assert!(!fast.evicted.is_cancelled());
        assert_eq!(hub.slow_disconnects(), 1);
        hub.publish_to_gaveur(1, "gavage", &9);
        assert_eq!(fast.frames.recv().await.unwrap().seq, 4);
        drop(slow);
        assert_eq!(hub.clients().0, 1);
    }
}
