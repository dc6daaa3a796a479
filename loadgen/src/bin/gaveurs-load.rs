//! `gaveurs-load`: the end-to-end load tool. Publishes gavage meals (or SQAL samples) to an
//! MQTT endpoint at a target rate over several connections, each keeping a fixed window of
//! unacknowledged messages, and reports acknowledged records/s and PUBACK latency.
//!
//! PUBACK latency here is durability latency: the embedded listener acknowledges a record
//! only once it is fsynced.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use gaveurs_loadgen::producer::{MqttVersion, ServerPacket, connect};
use hdrhistogram::Histogram;
use parking_lot::Mutex;

#[derive(Parser)]
#[command(name = "gaveurs-load", version)]
struct Args {
    /// MQTT endpoint (the embedded listener).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// Target records per second over all connections; 0 = as fast as acknowledgements allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to publish.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Producer connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Unacknowledged messages each connection keeps in flight (1 = wait for every PUBACK).
    #[arg(long, default_value_t = 64)]
    window: usize,
    #[arg(long, value_enum, default_value_t = Kind::Gavage)]
    kind: Kind,
    /// Report the peak RSS (VmHWM) of this process id, e.g. the pipeline's.
    #[arg(long)]
    pid: Option<u32>,
    /// Distinguishes lots between runs, so runs against one pipeline are not duplicates.
    #[arg(long, default_value = "run")]
    tag: String,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
    /// Feed this many lots at once, each through its whole life: 28 meals (jour 1–14, matin
    /// and soir, one event-time day apart), then its outcome, then a new lot takes its slot
    /// 16 days of event time later. Event times start a year in the past, so finished lots
    /// age out of the pipeline's memory as they would over months. 0 (the default): every
    /// record is a meal of a new lot.
    #[arg(long, default_value_t = 0)]
    lots: usize,
    /// With `--pid`: print the process's RSS every this many seconds (one line on stderr
    /// each), for memory over a long run.
    #[arg(long)]
    rss_every: Option<u64>,
    /// Also measure live pushes: open WebSocket clients on this HTTP address's
    /// `/ws/gaveur/{id}` and report publish → receive latency (receive time − the record's
    /// timestamp, which is set to the publish time).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Meals each lot gets before the next lot starts (jour 1–14, matin then soir; 1 to 28).
    /// 1 (the default): every record is a meal of a new lot, so the pipeline's per-lot state
    /// grows for the whole run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=28))]
    meals_per_lot: u64,
    /// Gaveurs the gavage records are spread over (ids 1..=N), with `--http`.
    #[arg(long, default_value_t = 10)]
    gaveurs: i64,
    /// WebSocket clients per gaveur, with `--http`.
    #[arg(long, default_value_t = 1)]
    clients_per_gaveur: usize,
    /// Bearer token sent with every PUBLISH (MQTT 5 user property `authorization`) and on
    /// the WebSocket clients' URL, e.g. `$(gaveurs token --user admin@euralis.fr)`. Without
    /// one the pipeline refuses every record.
    #[arg(long, env = "GAVEURS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Gavage,
    Sqal,
}

struct Totals {
    latency_us: Histogram<u64>,
    acked: u64,
    refused: u64,
}

/// The `--lots` mode: each connection feeds its own share of the lot slots in turn.
struct Lifecycle {
    /// Per slot: (generation, meals served in this generation).
    slots: Vec<(u64, u64)>,
    next: usize,
    base: chrono::DateTime<chrono::Utc>,
    first_slot: usize,
}

impl Lifecycle {
    fn new(args: &Args, conn: usize) -> Option<Lifecycle> {
        if args.lots == 0 {
            return None;
        }
        let per = args.lots.div_ceil(args.connections);
        Some(Lifecycle {
            slots: vec![(0, 0); per],
            next: 0,
            base: chrono::Utc::now() - chrono::Duration::days(400),
            first_slot: conn * per,
        })
    }

    fn next(&mut self, tag: &str) -> (String, Bytes) {
        let index = self.next;
        self.next = (self.next + 1) % self.slots.len();
        let (generation, served) = self.slots[index];
        let slot = self.first_slot + index;
        let lot = format!("LL{tag}{slot:06}G{generation:03}");
        let start = self.base + chrono::Duration::days(16 * generation as i64);
        if served == 28 {
            self.slots[index] = (generation + 1, 0);
            let date_fin = (start + chrono::Duration::days(13)).date_naive();
            let body = format!(
                r#"{{"record_type":"lot_outcome","code_lot":"{lot}","gaveur_id":1,"site":"LL","nb_canards_mis_en_gavage":1000,"nb_canards_accroches":985,"poids_foie_moyen_g":562.5,"date_fin":"{date_fin}"}}"#
            );
            return ("gaveurs/LL/1/outcome".into(), Bytes::from(body));
        }
        self.slots[index].1 += 1;
        let jour = served / 2 + 1;
        let matin = served % 2 == 0;
        let timestamp = start
            + chrono::Duration::days(jour as i64 - 1)
            + chrono::Duration::hours(if matin { 6 } else { 17 });
        let body = format!(
            r#"{{"code_lot":"{lot}","gaveur_id":1,"gaveur_nom":"Jean Martin","site":"LL","genetique":"Mulard","jour":{jour},"moment":"{moment}","dose_theorique":{theo:.1},"dose_reelle":{reelle:.1},"poids_moyen":{poids:.1},"nb_canards_vivants":996,"taux_mortalite":0.4,"temperature_stabule":21.3,"humidite_stabule":63.0,"timestamp":"{timestamp}","pret_abattage":{last}}}"#,
            moment = if matin { "matin" } else { "soir" },
            theo = 200.0 + 20.0 * jour as f64,
            reelle = 198.0 + 20.0 * jour as f64,
            // Ducks gain weight as farms' do (the anomaly model reads the gain).
            poids = 4600.0 + 75.0 * jour as f64,
            timestamp = timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            last = served == 27,
        );
        ("gaveurs/LL/1/gavage".into(), Bytes::from(body))
    }
}

fn payload(args: &Args, conn: usize, n: u64) -> (String, Bytes) {
    let tag = &args.tag;
    match args.kind {
        Kind::Gavage => {
            let lot = format!("LL{tag}{conn:02}{:09}", n / args.meals_per_lot);
            let (jour, moment) = match n % args.meals_per_lot {
                _ if args.meals_per_lot == 1 => (1 + n % 14, "soir"),
                meal => (1 + meal / 2, if meal % 2 == 0 { "matin" } else { "soir" }),
            };
            let gaveur = if args.http.is_some() {
                1 + (n as i64 % args.gaveurs)
            } else {
                1
            };
            // With live measurement the timestamp is the publish time, in UTC.
            let timestamp = if args.http.is_some() {
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            } else {
                "2026-01-20T18:05:00".to_string()
            };
            let body = format!(
                r#"{{"code_lot":"{lot}","gaveur_id":{gaveur},"gaveur_nom":"Jean Martin","site":"LL","genetique":"Mulard","jour":{jour},"moment":"{moment}","dose_theorique":380.0,"dose_reelle":371.5,"poids_moyen":5820.0,"nb_canards_vivants":996,"taux_mortalite":0.4,"temperature_stabule":21.3,"humidite_stabule":63.0,"timestamp":"{timestamp}","pret_abattage":false}}"#
            );
            (format!("gaveurs/LL/{gaveur}/gavage"), Bytes::from(body))
        }
        Kind::Sqal => {
            let tag = &args.tag;
            let matrix = |v: u32| {
                let row = vec![v.to_string(); 8].join(",");
                format!("[{}]", vec![format!("[{row}]"); 8].join(","))
            };
            let bins = format!(
                "[{}]",
                vec![format!("[{}]", vec!["1234"; 128].join(",")); 64].join(",")
            );
            let body = format!(
                r#"{{"type":"sensor_data","device_id":"ESP32_LL_{conn:02}","sample_id":"{tag}-{n}","timestamp":"2026-01-20T10:00:00Z","vl53l8ch":{{"distance_matrix":{d},"reflectance_matrix":{r},"amplitude_matrix":{a},"ambient_matrix":{b},"status_matrix":{s},"volume_mm3":640000.0}},"vl53l8ch_raw":{{"bins_matrix":{bins}}},"as7341":{{"channels":{{"F1_415nm":101.0,"NIR":40.0}},"freshness_index":0.8}},"fusion":{{"final_score":0.82}}}}"#,
                d = matrix(123),
                r = matrix(41),
                a = matrix(812),
                b = matrix(7),
                s = matrix(5)
            );
            (
                format!("sqal/LL/ESP32_LL_{conn:02}/measurements"),
                Bytes::from(body),
            )
        }
    }
}

async fn producer(args: Arc<Args>, conn: usize, totals: Arc<Mutex<Totals>>, stop_at: Instant) {
    let (mut writer, mut reader) = connect(
        args.mqtt,
        MqttVersion::V5,
        &format!("load-{}-{conn}", args.tag),
        None,
    )
    .await
    .expect("connect");
    let per_conn_rate = args.rate as f64 / args.connections as f64;
    let started = Instant::now();
    let mut sent_at: Vec<Option<Instant>> = vec![None; 65_536];
    let mut inflight = 0usize;
    let mut n: u64 = 0;
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut lifecycle = Lifecycle::new(&args, conn);
    let (mut acked, mut refused) = (0u64, 0u64);
    loop {
        let publishing = Instant::now() < stop_at;
        while publishing && inflight < args.window {
            if per_conn_rate > 0.0 {
                let due = started + Duration::from_secs_f64(n as f64 / per_conn_rate);
                if due > Instant::now() {
                    if inflight > 0 {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            let pkid = (n % 65_535) as u16 + 1;
            let (topic, body) = match lifecycle.as_mut() {
                Some(lifecycle) => lifecycle.next(&args.tag),
                None => payload(&args, conn, n),
            };
            writer
                .publish(&topic, body, 1, pkid, args.token.as_deref())
                .unwrap();
            sent_at[pkid as usize] = Some(Instant::now());
            inflight += 1;
            n += 1;
        }
        writer.flush().await.expect("send");
        if inflight == 0 {
            if !publishing {
                break;
            }
            continue;
        }
        let next = if per_conn_rate > 0.0 && publishing && inflight < args.window {
            let due = started + Duration::from_secs_f64(n as f64 / per_conn_rate);
            match tokio::time::timeout_at(due.into(), reader.next()).await {
                Ok(packet) => packet,
                Err(_) => continue,
            }
        } else {
            reader.next().await
        };
        match next.expect("connection alive") {
            ServerPacket::Ack { pkid, reason } => {
                if let Some(at) = sent_at[pkid as usize].take() {
                    local.saturating_record(at.elapsed().as_micros() as u64);
                    inflight -= 1;
                    if reason == 0 {
                        acked += 1
                    } else {
                        refused += 1
                    }
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let _ = writer.disconnect().await;
    let mut totals = totals.lock();
    totals.latency_us.add(&local).unwrap();
    totals.acked += acked;
    totals.refused += refused;
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let totals = Arc::new(Mutex::new(Totals {
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
        acked: 0,
        refused: 0,
    }));
    let live = match args.http {
        Some(http) => Some(
            LiveClients::open(
                http,
                args.gaveurs,
                args.clients_per_gaveur,
                args.token.as_deref(),
            )
            .await,
        ),
        None => None,
    };
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(args.duration);
    if let (Some(pid), Some(every)) = (args.pid, args.rss_every) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(every.max(1)));
            loop {
                tick.tick().await;
                if let Some(mb) = gaveurs_loadgen::memory::rss_mb(pid) {
                    eprintln!(
                        "rss t={:.0}s rss_mb={mb:.1}",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| tokio::spawn(producer(args.clone(), c, totals.clone(), stop_at)))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let live = match live {
        Some(live) => Some(live.finish().await),
        None => None,
    };
    let totals = totals.lock();
    let h = &totals.latency_us;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let rss = args.pid.and_then(gaveurs_loadgen::memory::peak_rss_mb);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "target_rate": args.rate, "connections": args.connections, "window": args.window,
                "acked": totals.acked, "refused": totals.refused,
                "records_per_s": (totals.acked as f64 / elapsed).round(),
                "ack_p50_ms": ms(0.5), "ack_p99_ms": ms(0.99), "ack_max_ms": h.max() as f64 / 1000.0,
                "peak_rss_mb": rss,
                "ws_clients": live.as_ref().map(|l| l.clients),
                "ws_received": live.as_ref().map(|l| l.received),
                "ws_latency_p50_ms": live.as_ref().map(|l| l.p50_ms),
                "ws_latency_p99_ms": live.as_ref().map(|l| l.p99_ms),
                "ws_closed_slow": live.as_ref().map(|l| l.closed),
            })
        );
    } else {
        println!(
            "target {} rec/s, {} connections × window {}: {} acked ({} refused) in {:.1} s = {:.0} rec/s; PUBACK p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
            args.rate,
            args.connections,
            args.window,
            totals.acked,
            totals.refused,
            elapsed,
            totals.acked as f64 / elapsed,
            ms(0.5),
            ms(0.99),
            h.max() as f64 / 1000.0,
            rss.map(|r| format!("; pipeline peak RSS {r:.0} MB"))
                .unwrap_or_default()
        );
    }
}

/// WebSocket clients on gaveur channels, recording publish → receive latency.
struct LiveClients {
    tasks: Vec<tokio::task::JoinHandle<(Histogram<u64>, u64, bool)>>,
    stop: tokio_util::sync::CancellationToken,
}

struct LiveSummary {
    clients: usize,
    received: u64,
    p50_ms: f64,
    p99_ms: f64,
    closed: usize,
}

impl LiveClients {
    async fn open(
        http: SocketAddr,
        gaveurs: i64,
        per_gaveur: usize,
        token: Option<&str>,
    ) -> LiveClients {
        use futures::StreamExt;
        let stop = tokio_util::sync::CancellationToken::new();
        let mut tasks = Vec::new();
        for gaveur in 1..=gaveurs {
            for _ in 0..per_gaveur {
                let (mut socket, _) = tokio_tungstenite::connect_async(format!(
                    "ws://{http}/ws/gaveur/{gaveur}?token={}",
                    token.unwrap_or_default()
                ))
                .await
                .expect("open a gaveur channel");
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    let mut received = 0;
                    loop {
                        let message = tokio::select! {
                            _ = stop.cancelled() => return (latency, received, false),
                            message = socket.next() => message,
                        };
                        let text = match message {
                            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => text,
                            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
                            | None
                            | Some(Err(_)) => {
                                return (latency, received, true);
                            }
                            Some(Ok(_)) => continue,
                        };
                        let now = chrono::Utc::now();
                        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                        // `data.timestamp` is the UTC publish time set by this tool.
                        if let Some(sent) = frame["data"]["timestamp"]
                            .as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        {
                            let micros = (now - sent.with_timezone(&chrono::Utc))
                                .num_microseconds()
                                .unwrap_or(0);
                            latency.saturating_record(micros.max(1) as u64);
                            received += 1;
                        }
                    }
                }));
            }
        }
        LiveClients { tasks, stop }
    }

    async fn finish(self) -> LiveSummary {
        // Frames still in flight arrive within a moment of the last acknowledgement.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.stop.cancel();
        let clients = self.tasks.len();
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let (mut received, mut closed) = (0, 0);
        for task in self.tasks {
            let (latency, n, was_closed) = task.await.unwrap();
            all.add(&latency).unwrap();
            received += n;
            closed += usize::from(was_closed);
        }
        LiveSummary {
            clients,
            received,
            p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
            closed,
        }
    }
}
