//! Shared harness for the end-to-end tests: the real `gaveurs` binary in a temporary working
//! directory, a real Mosquitto, and Parquet read back by readers other than the writer.

#![allow(dead_code)]

pub mod browser;
pub mod hostile;
pub mod kafka;
pub mod records;
pub mod twilio;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_gaveurs");

/// A running `gaveurs run`.
pub struct Gaveurs {
    pub dir: PathBuf,
    pub mqtt: Option<SocketAddr>,
    pub http: SocketAddr,
    /// MQTT over TLS and HTTPS/WSS, when `[tls]` is configured.
    pub mqtts: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub instance: String,
    /// A dev-mode token of admin@euralis.fr, who may write everything.
    pub admin: String,
    config: Option<PathBuf>,
    child: Option<Child>,
}

/// Config shared by the tests: ephemeral ports, everything inside `dir`.
pub fn base_config(dir: &Path) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[storage]\ndata_dir = \"{data}\"\n\n[logs]\ndir = \"{logs}\"\nconsole = true\nlevel = \"info\"\n",
        data = dir.join("data").display(),
        logs = dir.join("logs").display(),
    )
}

impl Gaveurs {
    /// Starts the binary in `dir` with `base_config` plus `extra` TOML (which may add
    /// sections; `[mqtt] listen` defaults to an ephemeral port when `extra` has no `[mqtt]`).
    pub fn start(dir: &Path, extra: &str) -> Gaveurs {
        Self::start_with_env(dir, extra, &[])
    }

    /// [`Gaveurs::start`] with environment variables for the process; a value of `None`
    /// removes the variable.
    pub fn start_with_env(dir: &Path, extra: &str, env: &[(&str, Option<&str>)]) -> Gaveurs {
        let mut config: toml::Table = toml::from_str(&base_config(dir)).unwrap();
        let extra: toml::Table = toml::from_str(extra).expect("extra config is TOML");
        if !extra.contains_key("mqtt") {
            config.insert(
                "mqtt".into(),
                toml::from_str("listen = \"127.0.0.1:0\"").unwrap(),
            );
        }
        for (section, values) in extra {
            match (config.get_mut(&section), values) {
                (Some(toml::Value::Table(base)), toml::Value::Table(values)) => base.extend(values),
                (_, values) => {
                    config.insert(section, values);
                }
            }
        }
        let path = dir.join("gaveurs.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        Self::spawn(dir, &["run", "--config", path.to_str().unwrap()], env)
    }

    pub fn start_with(dir: &Path, args: &[&str]) -> Gaveurs {
        Self::spawn(dir, args, &[])
    }

    fn spawn(dir: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Gaveurs {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stderr.log"))
            .unwrap();
        // `GAVEURS_TEST_BIN` runs the suite against another build (a release binary, for the
        // long runs' memory figures).
        let binary = std::env::var("GAVEURS_TEST_BIN").unwrap_or_else(|_| BIN.to_string());
        let mut command = Command::new(binary);
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let mut child = command
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start gaveurs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("gaveurs ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "gaveurs did not get ready; stderr:\n{}",
                    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                );
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap()
                .to_string()
        };
        let config = args
            .windows(2)
            .find(|w| w[0] == "--config")
            .map(|w| PathBuf::from(w[1]));
        let mut gaveurs = Gaveurs {
            dir: dir.to_path_buf(),
            mqtt: field("mqtt").parse().ok(),
            http: field("http").parse().unwrap(),
            mqtts: field("mqtts").parse().ok(),
            https: field("https").parse().ok(),
            instance: field("instance"),
            admin: String::new(),
            config,
            child: Some(child),
        };
        if args.first() == Some(&"run")
            && !std::fs::read_to_string(gaveurs.config.as_ref().unwrap())
                .unwrap_or_default()
                .contains("keycloak")
        {
            gaveurs.admin = gaveurs.token("admin@euralis.fr");
        }
        gaveurs
    }

    /// A dev-mode token for a demo user, from `gaveurs token` in the pipeline's directory.
    pub fn token(&self, email: &str) -> String {
        self.mint(email, &[])
    }

    /// A dev-mode token that expires `ttl_s` seconds from now.
    pub fn token_with_ttl(&self, email: &str, ttl_s: u64) -> String {
        self.mint(email, &["--ttl", &ttl_s.to_string()])
    }

    fn mint(&self, email: &str, extra: &[&str]) -> String {
        let mut command = Command::new(BIN);
        command
            .current_dir(&self.dir)
            .args(["token", "--user", email])
            .args(extra);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "gaveurs token: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .split_whitespace()
            .last()
            .expect("the token is the last word")
            .to_string()
    }

    pub fn mqtt(&self) -> SocketAddr {
        self.mqtt.expect("embedded listener running")
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    /// SIGTERM, then waits; returns the exit status and how long the exit took.
    pub fn stop(mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        kill(self.pid(), Signal::SIGTERM).unwrap();
        let status = wait_with_deadline(self.child.as_mut().unwrap(), Duration::from_secs(30));
        self.child = None;
        (status, started.elapsed())
    }

    /// SIGTERM and insist on a clean, prompt exit.
    pub fn stop_cleanly(self) {
        let dir = self.dir.clone();
        let (status, took) = self.stop();
        assert!(
            status.success(),
            "gaveurs exited with {status}; stderr:\n{}",
            std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
        );
        assert!(
            took < Duration::from_secs(5),
            "shutdown took {took:?}; stderr:\n{}",
            std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
        );
    }

    pub fn kill9(mut self) {
        kill(self.pid(), Signal::SIGKILL).unwrap();
        let _ = self.child.as_mut().unwrap().wait();
        self.child = None;
    }

    pub fn parquet_root(&self) -> PathBuf {
        self.dir.join("data/parquet")
    }
}

impl Drop for Gaveurs {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every published Parquet file of a dataset (hidden in-progress files excluded).
pub fn parquet_files(root: &Path, dataset: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(dataset)];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet")
                && !path.file_name().unwrap().to_string_lossy().starts_with('.')
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Rows of a dataset as JSON objects, read with the arrow-rs Parquet reader.
pub fn read_rows(root: &Path, dataset: &str) -> Vec<serde_json::Map<String, Value>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut rows = Vec::new();
    for file in parquet_files(root, dataset) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            writer.write(&batch).unwrap();
            writer.finish().unwrap();
            let Value::Array(items) = serde_json::from_slice(&writer.into_inner()).unwrap() else {
                unreachable!()
            };
            rows.extend(items.into_iter().map(|v| match v {
                Value::Object(map) => map,
                _ => unreachable!(),
            }));
        }
    }
    rows
}

/// Runs `sql` in DuckDB (an independent Parquet reader) and returns the rows as JSON.
/// `{root}` in the query is replaced by the Parquet root.
/// Stored meals per lot (`gavage_meals`).
pub fn lot_counts(root: &Path) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for row in read_rows(root, "gavage_meals") {
        *counts
            .entry(row["code_lot"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    counts
}

pub fn duckdb(root: &Path, sql: &str) -> Vec<Value> {
    let sql = sql.replace("{root}", &root.display().to_string());
    let script = r#"
import json, sys, duckdb
con = duckdb.connect()
cur = con.execute(sys.argv[1])
cols = [d[0] for d in cur.description]
print(json.dumps([dict(zip(cols, row)) for row in cur.fetchall()], default=str))
"#;
    let output = Command::new("python3")
        .args(["-c", script, &sql])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "duckdb failed (install it with `pip install duckdb`; ./scripts/test.sh does): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Polls `probe` until it returns `Some`, failing after `limit`. For outcomes that have no
/// event to wait on (a broker delivering a backlog).
pub fn eventually<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Mosquitto broker on a free port, stopped on drop.
pub struct Mosquitto {
    pub port: u16,
    conf: PathBuf,
    child: Child,
}

impl Mosquitto {
    /// A broker that keeps sessions and queued messages in memory only.
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_with(dir, free_port(), "persistence false\n")
    }

    /// A broker that saves sessions and queued messages in `dir` when it stops, so a
    /// restart keeps them.
    pub fn start_persistent(dir: &Path) -> Mosquitto {
        // Run as root, Mosquitto would drop to its own user, which cannot write in `dir`.
        let persistence = format!(
            "persistence true\npersistence_location {}/\nuser root\n",
            dir.display()
        );
        Self::start_with(dir, free_port(), &persistence)
    }

    fn start_with(dir: &Path, port: u16, persistence: &str) -> Mosquitto {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}max_queued_messages 100000\n"
            ),
        )
        .unwrap();
        let child = Self::spawn(&conf, port);
        Mosquitto { port, conf, child }
    }

    fn spawn(conf: &Path, port: u16) -> Child {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed: run ./scripts/test.sh, which installs it");
        let child = Command::new(binary)
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        eventually(Duration::from_secs(10), "mosquitto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        child
    }

    /// Stops the broker: SIGTERM (it saves its persistence) or SIGKILL.
    pub fn stop(&mut self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same configuration.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.conf, self.port);
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Publishes each message and waits for its acknowledgement before the next; returns the
/// reason code of each (0 = success). QoS 2 messages are released after their PUBREC.
pub async fn publish_each(
    addr: SocketAddr,
    version: gaveurs_loadgen::producer::MqttVersion,
    token: &str,
    messages: &[(String, Vec<u8>, u8)],
) -> Vec<u8> {
    publish_each_with(addr, version, token, messages, &[]).await
}

/// [`publish_each`] with MQTT 5 user properties on every PUBLISH (e.g. `backfill: true`).
pub async fn publish_each_with(
    addr: SocketAddr,
    version: gaveurs_loadgen::producer::MqttVersion,
    token: &str,
    messages: &[(String, Vec<u8>, u8)],
    properties: &[(&str, &str)],
) -> Vec<u8> {
    use gaveurs_loadgen::producer::{MqttVersion, ServerPacket, connect};
    // MQTT 5 carries the token on every PUBLISH (it survives a broker); 3.1.1 can only give
    // it as the CONNECT password, which only the embedded listener reads.
    let (password, per_message) = match version {
        MqttVersion::V5 => (None, Some(token)),
        MqttVersion::V311 => (Some(token), None),
    };
    let (mut writer, mut reader) = connect(addr, version, &format!("test-{}", rand_id()), password)
        .await
        .unwrap();
    let mut codes = Vec::new();
    for (n, (topic, payload, qos)) in messages.iter().enumerate() {
        let pkid = (n % 60_000) as u16 + 1;
        writer
            .publish_with_properties(
                topic,
                bytes::Bytes::from(payload.clone()),
                *qos,
                pkid,
                per_message,
                properties,
            )
            .unwrap();
        writer.flush().await.unwrap();
        if *qos == 0 {
            codes.push(0);
            continue;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(10), reader.next())
                .await
                .expect("acknowledged within 10 s")
                .unwrap()
            {
                ServerPacket::Ack { pkid: p, reason } if p == pkid => {
                    codes.push(reason);
                    break;
                }
                ServerPacket::Received { pkid: p, reason } if p == pkid => {
                    writer.pubrel(pkid).unwrap();
                    writer.flush().await.unwrap();
                    if reason >= 0x80 {
                        codes.push(reason);
                    } else {
                        // The PUBCOMP follows.
                        continue;
                    }
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    writer.disconnect().await.unwrap();
    codes
}

/// Publishes every message at QoS 1 with as many in flight as the server's Receive Maximum
/// allows (at most `window`), token in the user properties; returns the reason code of every
/// acknowledgement, in the order they came.
pub async fn publish_pipelined(
    addr: SocketAddr,
    token: &str,
    messages: &[(String, Vec<u8>)],
    window: usize,
) -> Vec<u8> {
    use gaveurs_loadgen::producer::{MqttVersion, connect};
    let session = connect(addr, MqttVersion::V5, &format!("burst-{}", rand_id()), None)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    publish_pipelined_on(session, token, messages, window).await
}

/// `publish_pipelined` on a session already open.
pub async fn publish_pipelined_on(
    (mut writer, mut reader): (
        gaveurs_loadgen::producer::ProducerWriter,
        gaveurs_loadgen::producer::ProducerReader,
    ),
    token: &str,
    messages: &[(String, Vec<u8>)],
    window: usize,
) -> Vec<u8> {
    use gaveurs_loadgen::producer::ServerPacket;
    let window = window.min(usize::from(reader.receive_maximum().unwrap_or(u16::MAX)));
    let (mut in_flight, mut reasons) = (0usize, Vec::with_capacity(messages.len()));
    for (n, (topic, payload)) in messages.iter().enumerate() {
        while in_flight >= window {
            match reader.next().await.unwrap() {
                ServerPacket::Ack { reason, .. } => {
                    in_flight -= 1;
                    reasons.push(reason);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let pkid = (n % 60_000) as u16 + 1;
        writer
            .publish(
                topic,
                bytes::Bytes::from(payload.clone()),
                1,
                pkid,
                Some(token),
            )
            .unwrap();
        writer.flush().await.unwrap();
        in_flight += 1;
    }
    while in_flight > 0 {
        if let ServerPacket::Ack { reason, .. } = reader.next().await.unwrap() {
            in_flight -= 1;
            reasons.push(reason);
        }
    }
    writer.disconnect().await.unwrap();
    reasons
}

pub fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (std::process::id() as u64) << 20 | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// GET `path` on the pipeline's HTTP port: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// GET `path` with a bearer token: (status, body).
pub async fn http_get_as(addr: SocketAddr, path: &str, token: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Waits until `/health/ready` answers 200.
pub async fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http_get(addr, "/health/ready").await.0 == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "pipeline not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket on the pipeline's HTTP port, authenticated with `?token=`.
pub async fn ws_connect(http: SocketAddr, path: &str, token: &str) -> Ws {
    let separator = if path.contains('?') { '&' } else { '?' };
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{http}{path}{separator}token={token}"))
            .await
            .unwrap_or_else(|e| panic!("connect {path}: {e}"));
    ws
}

/// The next JSON text message (pings skipped), within 10 s.
pub async fn next_json(ws: &mut Ws) -> Value {
    next_json_or_close(ws)
        .await
        .unwrap_or_else(|code| panic!("unexpected close {code}"))
}

/// The next JSON text message (pings skipped), within 10 s, or the code the server closed
/// the socket with.
pub async fn next_json_or_close(ws: &mut Ws) -> Result<Value, u16> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("socket open")
            .expect("socket healthy");
        match message {
            Message::Text(text) => return Ok(serde_json::from_str(&text).unwrap()),
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(Some(frame)) => return Err(u16::from(frame.code)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub async fn send_json(ws: &mut Ws, value: &Value) {
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        value.to_string().into(),
    ))
    .await
    .unwrap();
}

/// Reads until the server closes the socket (pings and text skipped, within 15 s): the close
/// code and reason.
pub async fn next_close(ws: &mut Ws) -> (u16, String) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("closed within 15 s");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before the close frame: {e}"),
        }
    }
}

/// Opens a WebSocket without any token.
pub async fn ws_connect_anonymous(http: SocketAddr, path: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}{path}"))
        .await
        .unwrap_or_else(|e| panic!("connect {path}: {e}"));
    ws
}

/// Writes `text` gzip'd to `dir/name`.
pub fn gzip(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::default(),
    );
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap();
    path
}

/// Runs `gaveurs replay` in `dir` with `args`.
pub fn replay(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .arg("replay")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}
