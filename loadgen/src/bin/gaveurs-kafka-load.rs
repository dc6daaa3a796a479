//! `gaveurs-kafka-load`: the Kafka side of the end-to-end benchmark.
//!
//! - `produce`: writes N gavage records (with an `authorization` header) to a topic and waits
//!   until the broker has them all.
//! - `bare`: a bare rdkafka consumer in a fresh group reads the topic from the start; its rate
//!   is the ceiling for any consumer on this machine.
//! - `committed`: watches a group's committed offsets on the topic until they reach N and
//!   reports the rate between the first and the last commit — the pipeline commits only what
//!   is in published Parquet files, so this is Kafka → Parquet throughput.

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

#[derive(Parser)]
#[command(name = "gaveurs-kafka-load", version)]
struct Args {
    #[arg(value_enum)]
    mode: Mode,
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "gaveurs.gavage.v1")]
    topic: String,
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Partitions of the topic (for `committed`).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// The group whose commits `committed` watches.
    #[arg(long, default_value = "gaveurs")]
    group: String,
    /// Bearer token for the `authorization` header (`produce`).
    #[arg(long, env = "GAVEURS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Distinguishes lots between runs.
    #[arg(long, default_value = "k")]
    tag: String,
    /// Report the peak RSS (VmHWM) of this process id (`committed`).
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Produce,
    Bare,
    Committed,
}

fn meal(tag: &str, n: u64) -> (String, String) {
    let lot = format!("LL{tag}{:07}", n / 28);
    let jour = (n % 28) / 2 + 1;
    let moment = if n.is_multiple_of(2) { "matin" } else { "soir" };
    let body = format!(
        r#"{{"code_lot":"{lot}","gaveur_id":1,"gaveur_nom":"Jean Martin","site":"LL","genetique":"Mulard","jour":{jour},"moment":"{moment}","dose_theorique":380.0,"dose_reelle":371.5,"poids_moyen":5820.0,"nb_canards_vivants":996,"taux_mortalite":0.4,"temperature_stabule":21.3,"humidite_stabule":63.0,"timestamp":"2026-01-20T18:05:00","pret_abattage":false}}"#
    );
    (lot, body)
}

async fn produce(args: &Args) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let bearer = args.token.as_ref().map(|t| format!("Bearer {t}"));
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for n in 0..args.records {
        let (lot, body) = meal(&args.tag, n);
        let mut headers = OwnedHeaders::new();
        if let Some(bearer) = &bearer {
            headers = headers.insert(Header {
                key: "authorization",
                value: Some(bearer.as_str()),
            });
        }
        let record = FutureRecord::to(&args.topic)
            .key(&lot)
            .payload(&body)
            .headers(headers);
        pending.push(
            producer
                .send_result(record)
                .unwrap_or_else(|(e, _)| panic!("queue: {e}")),
        );
        if pending.len() == 10_000 {
            for delivery in pending.drain(..) {
                delivery
                    .await
                    .unwrap()
                    .unwrap_or_else(|(e, _)| panic!("{e}"));
            }
        }
    }
    for delivery in pending {
        delivery
            .await
            .unwrap()
            .unwrap_or_else(|(e, _)| panic!("{e}"));
    }
    producer.flush(Timeout::Never).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"mode": "produce", "records": args.records, "seconds": elapsed,
                           "records_per_s": (args.records as f64 / elapsed).round()})
    );
}

fn bare(args: &Args) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("bare-{}", args.tag))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&args.topic]).unwrap();
    let mut read = 0u64;
    let mut first: Option<Instant> = None;
    let mut bytes = 0usize;
    let mut last = Instant::now();
    while read < args.records {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                first.get_or_insert_with(Instant::now);
                bytes += message.payload().map_or(0, |p| p.len());
                read += 1;
                last = Instant::now();
            }
            Some(Err(e)) => eprintln!("bare consumer: {e}"),
            None => assert!(
                last.elapsed() < Duration::from_secs(30),
                "bare consumer: nothing for 30 s after {read} records"
            ),
        }
    }
    let elapsed = first.unwrap().elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"mode": "bare", "records": read, "bytes": bytes, "seconds": elapsed,
                           "records_per_s": (read as f64 / elapsed).round()})
    );
}

fn committed(args: &Args) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &args.group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..args.partitions {
        list.add_partition(&args.topic, p);
    }
    let total = |list: &TopicPartitionList| -> u64 {
        consumer
            .committed_offsets(list.clone(), Timeout::After(Duration::from_secs(10)))
            .map(|c| {
                c.elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => o as u64,
                        _ => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let done = total(&list);
        let now = Instant::now();
        if done > 0 && first.is_none() {
            first = Some((now, done));
        }
        if done >= args.records {
            let (since, base) = first.unwrap();
            let elapsed = now.duration_since(since).as_secs_f64().max(0.001);
            let rss = args.pid.and_then(gaveurs_loadgen::memory::peak_rss_mb);
            println!(
                "{}",
                serde_json::json!({"mode": "committed", "records": done, "seconds": elapsed,
                                   "records_per_s": ((done - base) as f64 / elapsed).round(),
                                   "peak_rss_mb": rss})
            );
            return;
        }
        assert!(
            now < deadline,
            "only {done} of {} committed after 10 min",
            args.records
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match args.mode {
        Mode::Produce => produce(&args).await,
        Mode::Bare => bare(&args),
        Mode::Committed => committed(&args),
    }
}
