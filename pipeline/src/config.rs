//! The configuration file (TOML). Every section is optional; unknown keys are errors.
//! Any key can be overridden from the environment as `GAVEURS_<SECTION>__<KEY>`, e.g.
//! `GAVEURS_HTTP__LISTEN=0.0.0.0:8000` or `GAVEURS_STORAGE__ROLL_INTERVAL_S=10`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gaveurs_connectors::sources::mqtt_broker::BrokerUrl;
use serde::Deserialize;

pub use crate::logs::{LogFormat, LogsConfig};

const ENV_PREFIX: &str = "GAVEURS_";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub instance: InstanceConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The server certificate for MQTT over TLS and HTTPS/WSS; absent = plain listeners only.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub logs: LogsConfig,
    #[serde(default)]
    pub sites: SitesConfig,
    #[serde(default)]
    pub websocket: WebSocketConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Kafka in and out; absent = no Kafka.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    #[serde(default)]
    pub analytics: AnalyticsConfig,
    /// The alert rules of SPEC §5: thresholds, hysteresis, cooldown (reloaded on SIGHUP).
    #[serde(default)]
    pub alerts: gaveurs_operators::alerts::rules::AlertsConfig,
    #[serde(default)]
    pub sms: SmsConfig,
    /// The SQAL stations' last status (`GET /api/v1/devices`).
    #[serde(default)]
    pub devices: DevicesConfig,
    #[serde(default)]
    pub query: QueryConfig,
    /// Anomaly scoring: on by default with the model built into the binary.
    #[serde(default)]
    pub ml: gaveurs_operators::anomalies::MlConfig,
    /// The traceability ledger: on by default, keys created on the first start.
    #[serde(default)]
    pub ledger: gaveurs_operators::ledger::desk::LedgerConfig,
}

/// `[query]`: what one analyst query (`gaveurs query`, `POST /api/v1/query`) may use. Queries
/// run inside the pipeline's process, so these bound what an analyst can take from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Memory one query may hold for its hash tables, sorts and joins, MiB (default 256). A
    /// query that needs more is cancelled (HTTP 413): queries never spill to disk, which
    /// belongs to the durable log.
    pub memory_limit_mb: u64,
    /// Seconds one query may run, until its last row (default 30). A longer one is cancelled
    /// (HTTP 503).
    pub timeout_s: u64,
}

impl Default for QueryConfig {
    /// The query engine's own defaults, so they are written once.
    fn default() -> Self {
        let limits = gaveurs_query::QueryLimits::default();
        Self {
            memory_limit_mb: limits.memory_limit_mb,
            timeout_s: limits.timeout_s,
        }
    }
}

impl QueryConfig {
    pub fn limits(&self) -> gaveurs_query::QueryLimits {
        gaveurs_query::QueryLimits {
            memory_limit_mb: self.memory_limit_mb,
            timeout_s: self.timeout_s,
        }
    }
}

/// `[devices]`: what is kept of each station's last heartbeat or status message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Stations kept at most (the longest silent go first). Default 10000.
    pub max: usize,
    /// A station not heard from for this many hours is forgotten. Default 168 (a week).
    pub idle_hours: u64,
    /// A status message larger than this (bytes of JSON) is kept as its size only.
    /// Default 16384.
    pub max_status_bytes: usize,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        let limits = gaveurs_operators::devices::DeviceLimits::default();
        Self {
            max: limits.max_devices,
            idle_hours: limits.idle.as_secs() / 3600,
            max_status_bytes: limits.max_status_bytes,
        }
    }
}

impl DevicesConfig {
    pub fn limits(&self) -> gaveurs_operators::devices::DeviceLimits {
        gaveurs_operators::devices::DeviceLimits {
            max_devices: self.max.max(1),
            idle: std::time::Duration::from_secs(self.idle_hours * 3600),
            max_status_bytes: self.max_status_bytes,
        }
    }
}

/// `[sms]`: alert text messages through Twilio. Credentials come from the environment
/// (`TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`, `TWILIO_PHONE_NUMBER`); without them the
/// pipeline logs one warning, pushes alerts as usual and texts nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsConfig {
    /// Twilio's API root; tests point it at a local server.
    pub twilio_base_url: String,
    /// CSV with a header row `gaveur_id,phone` (E.164, e.g. `+33612345678`), checked at
    /// start. Without it nobody is texted.
    pub directory: Option<PathBuf>,
    /// The least severity texted (`info`, `warning`, `critical`; default `critical`).
    pub min_severity: String,
    /// Texts per recipient per rolling hour (default 5); more are dropped and logged.
    pub budget_per_hour: u32,
    /// Critical alerts ignore the budget (default false).
    pub budget_bypass_critical: bool,
    /// Quiet hours in the site time zone, e.g. `{ start = "22:00", end = "06:00" }`; texts
    /// wait until they end. Default: none.
    pub quiet_hours: Option<QuietHoursConfig>,
    /// First retry delay after a 429, 5xx or network error (default 1000 ms); it doubles,
    /// with jitter, up to `retry_max_s` (default 300).
    pub retry_initial_ms: u64,
    pub retry_max_s: u64,
    /// Attempts before a message is given up (default 10).
    pub max_attempts: u32,
    /// A text still unsent this many seconds after its alert (or after the quiet hours that
    /// held it) is not sent late: the outbox marks it `expired` (default 3600).
    pub max_age_s: u64,
}

impl Default for SmsConfig {
    /// The SMS sink's own defaults, so they are written once.
    fn default() -> Self {
        let sink = gaveurs_sinks::sms::SmsSettings::default();
        Self {
            twilio_base_url: sink.base_url,
            directory: None,
            min_severity: gaveurs_schemas::alert::Severity::Critical.as_str().into(),
            budget_per_hour: sink.budget_per_hour,
            budget_bypass_critical: sink.budget_bypass_critical,
            quiet_hours: None,
            retry_initial_ms: sink.retry_initial.as_millis() as u64,
            retry_max_s: sink.retry_max.as_secs(),
            max_attempts: sink.max_attempts,
            max_age_s: sink.max_age.as_secs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursConfig {
    /// `HH:MM`, local time of `[sites] timezone`.
    pub start: String,
    pub end: String,
    /// Critical alerts are texted during quiet hours too (default true).
    #[serde(default = "default_true")]
    pub bypass_critical: bool,
}

impl SmsConfig {
    pub fn min_severity(&self) -> anyhow::Result<gaveurs_schemas::alert::Severity> {
        gaveurs_schemas::alert::Severity::parse(&self.min_severity).ok_or_else(|| {
            anyhow::anyhow!(
                "[sms] min_severity: {:?} is not info, warning or critical",
                self.min_severity
            )
        })
    }

    pub fn settings(&self, timezone: &str) -> anyhow::Result<gaveurs_sinks::sms::SmsSettings> {
        let quiet_hours = match &self.quiet_hours {
            None => None,
            Some(q) => {
                let time = |field: &str, text: &str| {
                    chrono::NaiveTime::parse_from_str(text, "%H:%M").map_err(|_| {
                        anyhow::anyhow!("[sms.quiet_hours] {field}: {text:?} is not HH:MM")
                    })
                };
                Some(gaveurs_sinks::sms::QuietHours {
                    start: time("start", &q.start)?,
                    end: time("end", &q.end)?,
                    timezone: timezone
                        .parse()
                        .map_err(|_| anyhow::anyhow!("[sites] timezone {timezone:?} is unknown"))?,
                    bypass_critical: q.bypass_critical,
                })
            }
        };
        Ok(gaveurs_sinks::sms::SmsSettings {
            base_url: self.twilio_base_url.clone(),
            budget_per_hour: self.budget_per_hour,
            budget_bypass_critical: self.budget_bypass_critical,
            quiet_hours,
            retry_initial: std::time::Duration::from_millis(self.retry_initial_ms.max(1)),
            retry_max: std::time::Duration::from_secs(self.retry_max_s.max(1)),
            max_attempts: self.max_attempts.max(1),
            max_age: std::time::Duration::from_secs(self.max_age_s.max(1)),
        })
    }

    /// The phone directory, checked (E.164); empty without `directory`.
    pub fn load_directory(&self) -> anyhow::Result<gaveurs_sinks::sms::Directory> {
        match &self.directory {
            None => Ok(gaveurs_sinks::sms::Directory::empty()),
            Some(path) => gaveurs_sinks::sms::Directory::load(path)
                .map_err(|e| anyhow::anyhow!("[sms] directory: {e}")),
        }
    }
}

/// `[analytics]`: KPIs in event time (SPEC §4), as SQL queries over micro-batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// `false` runs the pipeline without KPIs (e.g. an ingest-only tier): no `kpi`
    /// messages, no `lot_kpis` or `late` rows, no KPI topic.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A micro-batch closes this long after its first record (default 500 ms): the most a
    /// KPI trails its record.
    #[serde(default = "default_batch_interval_ms")]
    pub batch_interval_ms: u64,
    /// ... or once it holds this many records (default 8192).
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// A meal this far (default 3600 s) behind its lot's newest meal is late: it still
    /// counts everywhere, goes to the `late` dataset, and corrects its windows.
    #[serde(default = "default_allowed_lateness_s")]
    pub allowed_lateness_s: u64,
    /// Finished lots stay in memory this many days of event time after their last record
    /// (default 8: the 7-day windows still see them); a record for a lot that left memory
    /// reads it back from Parquet.
    #[serde(default = "default_lot_retention_days")]
    pub lot_retention_days: u64,
    /// A lot without a record for this many hours leaves memory (default 48).
    #[serde(default = "default_lot_idle_hours")]
    pub lot_idle_hours: u64,
    /// Lots kept in memory at most, with their latest KPIs for `GET /api/v1/lots/{code}`
    /// (default 50000); the least recently touched leave first (a lot answers from the
    /// `lot_kpis` dataset then).
    #[serde(default = "default_max_lots")]
    pub max_lots: usize,
    /// Test only: every micro-batch takes this much longer (milliseconds), to show that a
    /// slow operator never delays acknowledgements. Default 0.
    #[serde(default)]
    pub test_step_delay_ms: u64,
    /// Replace a shipped KPI (`meal`, `lot_day`, `lot`, `windows`, `sqal`) or add one:
    /// `[analytics.kpis.heavy_lots] sql = "SELECT code_lot, gaveur_id, … FROM meals …"`.
    /// The tables a query can read are listed in the README ("Analytics").
    #[serde(default)]
    pub kpis: std::collections::BTreeMap<String, gaveurs_operators::analytics::KpiQuery>,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

impl AnalyticsConfig {
    /// The shipped KPIs with this configuration's replacements and additions.
    pub fn settings(&self) -> gaveurs_operators::analytics::AnalyticsSettings {
        let mut kpis = gaveurs_operators::analytics::default_kpis();
        for (name, query) in &self.kpis {
            let query = gaveurs_operators::analytics::KpiQuery {
                name: name.clone(),
                ..query.clone()
            };
            match kpis.iter_mut().find(|k| &k.name == name) {
                Some(shipped) => *shipped = query,
                None => kpis.push(query),
            }
        }
        gaveurs_operators::analytics::AnalyticsSettings {
            allowed_lateness: chrono::Duration::seconds(self.allowed_lateness_s as i64),
            lot_retention: chrono::Duration::days(self.lot_retention_days as i64),
            lot_idle: std::time::Duration::from_secs(self.lot_idle_hours * 3600),
            max_lots: self.max_lots.max(1),
            kpis,
            ..Default::default()
        }
    }
}

fn default_batch_interval_ms() -> u64 {
    500
}
fn default_batch_max_records() -> usize {
    8192
}
fn default_allowed_lateness_s() -> u64 {
    3600
}
fn default_lot_retention_days() -> u64 {
    8
}
fn default_lot_idle_hours() -> u64 {
    48
}
fn default_max_lots() -> usize {
    50_000
}

/// `[kafka]`: consume the input topics in a consumer group, publish the output topics.
/// The MQTT listener and HTTP server keep running beside it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port,host:port`.
    pub brokers: String,
    /// Consumer group every instance of the pipeline joins. Default `gaveurs`.
    #[serde(default = "default_kafka_group")]
    pub group: String,
    #[serde(default = "default_gavage_topic")]
    pub gavage_topic: String,
    #[serde(default = "default_sqal_topic")]
    pub sqal_topic: String,
    /// Refused records, with reason, stage and provenance headers.
    #[serde(default = "default_dlq_topic")]
    pub dlq_topic: String,
    /// Every accepted record as pushed live; each instance's WebSocket tier reads it, so a
    /// gaveur on any instance sees every record of their lots. `""` turns it off (one
    /// instance only: its channels see its own records).
    #[serde(default = "default_live_topic")]
    pub live_topic: String,
    /// KPI rows as JSON (`{"kpi": name, …columns}`), keyed by `code_lot`, else site or
    /// station. `""` turns it off.
    #[serde(default = "default_kpis_topic")]
    pub kpis_topic: String,
    /// Alert transitions as JSON (`{"transition", "alert": {…}, "recorded_at"}`), keyed by
    /// `code_lot` or `device_id`. `""` turns it off.
    #[serde(default = "default_alerts_topic")]
    pub alerts_topic: String,
    /// Default 6000: a killed instance's partitions move on within 10 s.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// librdkafka settings passed through to every client, e.g.
    /// `"security.protocol" = "SASL_SSL"`, `"sasl.mechanism" = "SCRAM-SHA-512"`,
    /// `"sasl.username"`, `"sasl.password"`, `"ssl.ca.location"`.
    #[serde(default)]
    pub librdkafka: std::collections::BTreeMap<String, String>,
}

fn default_kafka_group() -> String {
    "gaveurs".into()
}
fn default_gavage_topic() -> String {
    "gaveurs.gavage.v1".into()
}
fn default_sqal_topic() -> String {
    "gaveurs.sqal.v1".into()
}
fn default_dlq_topic() -> String {
    "gaveurs.dlq.v1".into()
}
fn default_alerts_topic() -> String {
    "gaveurs.alerts.v1".into()
}
fn default_kpis_topic() -> String {
    "gaveurs.kpis.v1".into()
}
fn default_live_topic() -> String {
    "gaveurs.live.v1".into()
}
fn default_session_timeout_ms() -> u64 {
    6000
}
fn default_heartbeat_interval_ms() -> u64 {
    1000
}

/// How tokens are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Zero-setup: a signing key generated once in `data_dir/auth/`, its JWKS served at the
    /// Keycloak-shaped path on the HTTP port, tokens from `gaveurs token`.
    #[default]
    Dev,
    /// A Keycloak realm.
    Keycloak,
}

/// `[auth]`: every record, connection and request needs a verified token (SPEC §6).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `dev` (default) or `keycloak`.
    #[serde(default)]
    pub mode: AuthMode,
    /// The realm URL tokens must name as `iss`, e.g.
    /// `http://keycloak:8080/realms/gaveurs-production`. Required in keycloak mode; in dev
    /// mode `http://<[http] listen>/realms/gaveurs-production`.
    pub issuer: Option<String>,
    /// A token is for this pipeline when its `aud` or `azp` is one of these.
    #[serde(default = "default_audience")]
    pub audience: Vec<String>,
    /// Where the signing keys are; default `{issuer}/protocol/openid-connect/certs`.
    pub jwks_url: Option<String>,
    /// Clock leeway for `exp`, `nbf`, `iat`, seconds (at most 60). Default 30.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// A record that waited in a broker is judged at its broker timestamp, but not older
    /// than this many seconds. Default 604800 (7 days).
    #[serde(default = "default_max_backlog_age_s")]
    pub max_backlog_age_s: u64,
    /// A record from an external MQTT broker (which gives no publish time) whose token
    /// expired while it waited there is accepted when its event time lies within the
    /// token's validity and the token expired at most this many seconds ago. Default 86400.
    #[serde(default = "default_broker_token_grace_s")]
    pub broker_token_grace_s: u64,
    /// Verified tokens kept in memory. Default 10000.
    #[serde(default = "default_token_cache")]
    pub token_cache: usize,
    /// Lifetime of tokens minted by `gaveurs token` in dev mode, seconds. Default 43200 (12 h).
    #[serde(default = "default_dev_token_ttl_s")]
    pub dev_token_ttl_s: u64,
    /// Dev mode: the web page's demo-user sign-in mints tokens on a loopback HTTP listener
    /// only; `true` serves it on any listener (whoever reaches it picks who they are).
    #[serde(default)]
    pub dev_signin: bool,
}

fn default_audience() -> Vec<String> {
    vec!["backend-api".into()]
}
fn default_leeway_s() -> u64 {
    30
}
fn default_max_backlog_age_s() -> u64 {
    7 * 24 * 3600
}
fn default_broker_token_grace_s() -> u64 {
    24 * 3600
}
fn default_token_cache() -> usize {
    10_000
}
fn default_dev_token_ttl_s() -> u64 {
    12 * 3600
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Dev,
            issuer: None,
            audience: default_audience(),
            jwks_url: None,
            leeway_s: default_leeway_s(),
            max_backlog_age_s: default_max_backlog_age_s(),
            broker_token_grace_s: default_broker_token_grace_s(),
            token_cache: default_token_cache(),
            dev_token_ttl_s: default_dev_token_ttl_s(),
            dev_signin: false,
        }
    }
}

/// `[websocket]`: live channels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Messages each gaveur channel keeps for clients resuming with `?since=N`. Default 512.
    #[serde(default = "default_replay")]
    pub replay: usize,
    /// Messages a client may have waiting; a client further behind is closed with 1013.
    /// Default 256.
    #[serde(default = "default_client_queue")]
    pub client_queue: usize,
    /// Seconds between pings to channel and dashboard clients. Default 30.
    #[serde(default = "default_ping_interval_s")]
    pub ping_interval_s: u64,
    /// MiB all gaveur channels' replay buffers may hold together; past it, channels nobody
    /// is connected to are dropped, the longest quiet first. Default 64.
    #[serde(default = "default_replay_budget_mb")]
    pub replay_budget_mb: u64,
    /// A channel nobody is connected to and that got nothing for this many seconds is
    /// dropped (a client resuming it later is told of the gap). Default 3600.
    #[serde(default = "default_channel_idle_s")]
    pub channel_idle_s: u64,
    /// WebSockets open at once (channels, dashboards and ingest, over HTTP and HTTPS); past
    /// it a new one is answered 503. Default 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_replay() -> usize {
    512
}
fn default_client_queue() -> usize {
    256
}
fn default_ping_interval_s() -> u64 {
    30
}
fn default_replay_budget_mb() -> u64 {
    64
}
fn default_channel_idle_s() -> u64 {
    3600
}
fn default_max_connections() -> usize {
    10_000
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            replay: default_replay(),
            client_queue: default_client_queue(),
            ping_interval_s: default_ping_interval_s(),
            replay_budget_mb: default_replay_budget_mb(),
            channel_idle_s: default_channel_idle_s(),
            max_connections: default_max_connections(),
        }
    }
}

/// `[instance]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// This instance's id, in file names and private folders. Default: a random id created
    /// once and kept in `.gaveurs/instance-id` in the working directory.
    pub id: Option<String>,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP server (health, metrics, WebSockets). Default `127.0.0.1:8000`.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// Address of the same server over TLS (HTTPS and WSS), with `[tls]`'s certificate.
    /// Default `0.0.0.0:8443` when `[tls]` is set.
    pub tls_listen: Option<SocketAddr>,
}

/// `[tls]`: one server certificate for every TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Config {
    /// Where HTTPS/WSS listens, if it does.
    pub fn https_listen(&self) -> Option<SocketAddr> {
        self.tls.as_ref()?;
        Some(
            self.http
                .tls_listen
                .unwrap_or_else(|| "0.0.0.0:8443".parse().expect("valid address")),
        )
    }

    /// Where MQTT over TLS listens, if it does: only beside the embedded listener.
    pub fn mqtts_listen(&self) -> Option<SocketAddr> {
        self.tls.as_ref()?;
        self.mqtt.embedded_listen()?;
        Some(
            self.mqtt
                .tls_listen
                .unwrap_or_else(|| "0.0.0.0:8883".parse().expect("valid address")),
        )
    }
}

fn default_http_listen() -> SocketAddr {
    "127.0.0.1:8000".parse().expect("valid address")
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            tls_listen: None,
        }
    }
}

/// `[mqtt]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Address of the embedded MQTT listener. Default `127.0.0.1:1883`, unless `broker` is
    /// set, in which case the embedded listener runs only if `listen` is given too.
    pub listen: Option<SocketAddr>,
    /// Address of the embedded listener's MQTT over TLS, with `[tls]`'s certificate. Default
    /// `0.0.0.0:8883` when `[tls]` is set and the embedded listener runs.
    pub tls_listen: Option<SocketAddr>,
    /// `mqtt://host:port` of an external broker to subscribe to instead.
    pub broker: Option<BrokerUrl>,
    /// Client id at the external broker; it names the persistent session. Default
    /// `gaveurs-<instance id>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Seconds the external broker keeps the session while the pipeline is away. Default 86400.
    #[serde(default = "default_session_expiry_s")]
    pub session_expiry_s: u32,
    /// Share the subscription as `$share/<group>/…`, so instances split the messages.
    pub shared_group: Option<String>,
    /// Unacknowledged messages in flight per connection. Default 1024.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Largest MQTT packet accepted by the embedded listener, bytes. Default 16 MiB.
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: usize,
    /// Connections the embedded listener keeps open at once (plain and TLS); past it a new
    /// one is closed on arrival. Default 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_session_expiry_s() -> u32 {
    86_400
}
fn default_max_inflight() -> u16 {
    1024
}
fn default_max_packet_bytes() -> usize {
    16 * 1024 * 1024
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tls_listen: None,
            broker: None,
            client_id: None,
            username: None,
            password: None,
            session_expiry_s: default_session_expiry_s(),
            shared_group: None,
            max_inflight: default_max_inflight(),
            max_packet_bytes: default_max_packet_bytes(),
            max_connections: default_max_connections(),
        }
    }
}

impl MqttConfig {
    /// The embedded listener's address, if it runs.
    pub fn embedded_listen(&self) -> Option<SocketAddr> {
        match (self.listen, &self.broker) {
            (Some(addr), _) => Some(addr),
            (None, None) => Some("127.0.0.1:1883".parse().expect("valid address")),
            (None, Some(_)) => None,
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Where the durable log, Parquet datasets and keys live. Default `./data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Parquet files are published at least this often, seconds. Default 30.
    #[serde(default = "default_roll_interval_s")]
    pub roll_interval_s: u64,
    /// Parquet files are published early once this many rows wait. Default 500000.
    #[serde(default = "default_max_rows_per_roll")]
    pub max_rows_per_roll: usize,
    /// Largest record accepted, bytes; larger ones are dead-lettered. Default 1 MiB.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// A record whose event time is more than this many seconds after its receipt is
    /// dead-lettered as `timestamp_in_future` (one before 2000-01-01 as
    /// `timestamp_out_of_range`). Default 300.
    #[serde(default = "default_max_future_skew_s")]
    pub max_future_skew_s: u64,
    /// Merge each closed day's small files into one file per dataset, day and site (and
    /// instance). Default true.
    #[serde(default = "default_true")]
    pub compact: bool,
    /// A day is compacted once it ended (midnight UTC) this many hours ago; rows that arrive
    /// later for it are merged in at a later pass. Default 2.
    #[serde(default = "default_compact_after_hours")]
    pub compact_after_hours: u64,
    /// How often compaction and retention run, seconds (the first pass one interval after
    /// start). Default 300.
    #[serde(default = "default_compact_interval_s")]
    pub compact_interval_s: u64,
    /// A compacted file merges at most this many MiB of files; larger days get several.
    /// Default 256.
    #[serde(default = "default_compact_max_file_mb")]
    pub compact_max_file_mb: u64,
    /// Days each dataset keeps, e.g. `[storage.retention_days] dlq = 30, late = 90`
    /// (`lot_kpis` is the history behind the view); older `date=` partitions are removed,
    /// every instance's files. Default: every dataset keeps everything.
    #[serde(default)]
    pub retention_days: std::collections::BTreeMap<String, u32>,
    /// Size of one durable-log segment file, MiB (fractions allowed). Default 64.
    #[serde(default = "default_log_segment_mb")]
    pub log_segment_mb: f64,
    /// Newest log entries kept in memory for the log's consumers (Parquet, analytics,
    /// alerts, live topic), MiB of their encoded size (each is held decoded as well, about
    /// as large again); a consumer further behind reads the segment files. Default 8.
    #[serde(default = "default_log_tail_mb")]
    pub log_tail_mb: u64,
    /// Most log disk a lagging derived consumer (analytics, alerts, live topic) may hold,
    /// MiB. Past it the oldest segments are released anyway, with an error in
    /// `storage.log` and `gaveurs_log_retention_capped_total`, and that consumer skips what
    /// they held. The Parquet sink is never skipped. Default 4096.
    #[serde(default = "default_log_max_retained_mb")]
    pub log_max_retained_mb: u64,
    /// Lots whose dedup keys stay in memory at most (least recently used leave first; a lot
    /// that comes back has its keys read from disk). Default 50000.
    #[serde(default = "default_dedup_max_lots")]
    pub dedup_max_lots: usize,
    /// A lot without a record for this long leaves the dedup index's memory, seconds.
    /// Default 3600.
    #[serde(default = "default_dedup_idle_s")]
    pub dedup_idle_s: u64,
    /// Page cache of the published-keys database, MiB. Default 16.
    #[serde(default = "default_dedup_cache_mb")]
    pub dedup_cache_mb: u64,
    /// From SIGTERM to exit, milliseconds (SPEC §9: 5 s). Log consumers catch up with what
    /// was accepted within it; what they could not process stays in the log. Default 5000.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

impl StorageConfig {
    /// What the compaction and retention thread needs.
    pub fn compaction(
        &self,
        parquet_root: &Path,
        state_dir: &Path,
        instance_id: &str,
    ) -> gaveurs_sinks::parquet::compact::CompactOptions {
        gaveurs_sinks::parquet::compact::CompactOptions {
            root: parquet_root.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            instance_id: instance_id.to_string(),
            compact: self.compact,
            compact_after: std::time::Duration::from_secs(self.compact_after_hours * 3600),
            max_file_bytes: self.compact_max_file_mb * 1024 * 1024,
            retention_days: self.retention_days.clone(),
            interval: std::time::Duration::from_secs(self.compact_interval_s),
        }
    }

    /// A skew too large for a duration is no bound at all.
    pub fn max_future_skew(&self) -> chrono::Duration {
        i64::try_from(self.max_future_skew_s)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .unwrap_or(chrono::Duration::MAX)
    }

    pub fn wal_options(&self, instance_dir: &Path) -> gaveurs_sinks::wal::WalOptions {
        let mib = |n: u64| n.saturating_mul(1024 * 1024);
        gaveurs_sinks::wal::WalOptions {
            segment_bytes: (self.log_segment_mb.max(0.001) * 1024.0 * 1024.0) as u64,
            tail_bytes: mib(self.log_tail_mb) as usize,
            max_retained_bytes: mib(self.log_max_retained_mb.max(1)),
            ..gaveurs_sinks::wal::WalOptions::new(instance_dir.join("wal"))
        }
    }

    pub fn dedup_limits(&self) -> gaveurs_operators::dedup::DedupLimits {
        gaveurs_operators::dedup::DedupLimits {
            max_lots: self.dedup_max_lots.max(1),
            idle: std::time::Duration::from_secs(self.dedup_idle_s),
            cache_bytes: (self.dedup_cache_mb.max(1) * 1024 * 1024) as usize,
        }
    }

    /// How long the log consumers may take to catch up at shutdown: the shutdown timeout
    /// less what the steps after them need (SMS sink, HTTP, log flush).
    pub fn shutdown_catch_up(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.shutdown_timeout_ms.saturating_sub(1500).max(1000))
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_roll_interval_s() -> u64 {
    30
}
fn default_max_rows_per_roll() -> usize {
    500_000
}
fn default_max_record_bytes() -> usize {
    1024 * 1024
}
fn default_max_future_skew_s() -> u64 {
    gaveurs_operators::validate::DEFAULT_MAX_FUTURE_SKEW.num_seconds() as u64
}
fn default_compact_after_hours() -> u64 {
    2
}
fn default_compact_interval_s() -> u64 {
    300
}
fn default_compact_max_file_mb() -> u64 {
    256
}
fn default_log_segment_mb() -> f64 {
    64.0
}
fn default_log_tail_mb() -> u64 {
    // About a second of records at 20 k/s: consumers that keep up read memory, and 10,000
    // hostile 64 KB dead letters stay within the 256 MB the process may use.
    8
}
fn default_log_max_retained_mb() -> u64 {
    4096
}
fn default_dedup_max_lots() -> usize {
    50_000
}
fn default_dedup_idle_s() -> u64 {
    3600
}
fn default_dedup_cache_mb() -> u64 {
    16
}
fn default_shutdown_timeout_ms() -> u64 {
    5000
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            roll_interval_s: default_roll_interval_s(),
            max_rows_per_roll: default_max_rows_per_roll(),
            max_record_bytes: default_max_record_bytes(),
            max_future_skew_s: default_max_future_skew_s(),
            compact: true,
            compact_after_hours: default_compact_after_hours(),
            compact_interval_s: default_compact_interval_s(),
            compact_max_file_mb: default_compact_max_file_mb(),
            retention_days: Default::default(),
            log_segment_mb: default_log_segment_mb(),
            log_tail_mb: default_log_tail_mb(),
            log_max_retained_mb: default_log_max_retained_mb(),
            dedup_max_lots: default_dedup_max_lots(),
            dedup_idle_s: default_dedup_idle_s(),
            dedup_cache_mb: default_dedup_cache_mb(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
        }
    }
}

/// `[sites]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitesConfig {
    /// Time zone of timestamps sent without an offset. Default `Europe/Paris`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Per-site exceptions, e.g. `MT = "Europe/Paris"`.
    #[serde(default)]
    pub timezones: std::collections::BTreeMap<String, String>,
}

fn default_timezone() -> String {
    "Europe/Paris".into()
}

impl Default for SitesConfig {
    fn default() -> Self {
        Self {
            timezone: default_timezone(),
            timezones: Default::default(),
        }
    }
}

impl SitesConfig {
    pub fn zones(&self) -> anyhow::Result<gaveurs_schemas::time::SiteTimeZones> {
        let parse = |name: &str| -> anyhow::Result<chrono_tz::Tz> {
            name.parse()
                .map_err(|_| anyhow::anyhow!("[sites] unknown time zone {name:?}"))
        };
        let overrides = self
            .timezones
            .iter()
            .map(|(site, tz)| Ok((site.clone(), parse(tz)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(gaveurs_schemas::time::SiteTimeZones::new(
            parse(&self.timezone)?,
            overrides,
        ))
    }
}

impl Config {
    /// Where the datasets are: `<data_dir>/parquet`.
    pub fn parquet_root(&self) -> PathBuf {
        self.storage.data_dir.join("parquet")
    }

    /// Reads `path` (or the defaults when `None`), applies `GAVEURS_…` environment overrides
    /// and checks the result.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        Self::load_with_env(path, std::env::vars())
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?,
            None => String::new(),
        };
        let origin = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into());
        Self::from_toml(&text, &origin, env)
    }

    /// [`Config::load_with_env`] of a file's text; `origin` names it in errors.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        // Parse the file alone first, so its own mistakes are reported with line numbers.
        let mut config: Config =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        let overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .collect();
        if !overrides.is_empty() {
            let mut table: toml::Table =
                toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
            for (name, value) in &overrides {
                apply_override(&mut table, name, value)?;
            }
            config = Config::deserialize(toml::Value::Table(table)).map_err(|e| {
                anyhow::anyhow!("{origin} with environment overrides ({}): {e}", {
                    let names: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
                    names.join(", ")
                })
            })?;
        }
        config.check()?;
        Ok(config)
    }

    /// Rules that serde cannot express.
    fn check(&self) -> anyhow::Result<()> {
        gaveurs_operators::alerts::rules::RuleSet::from_config(&self.alerts)
            .map_err(|e| anyhow::anyhow!(e))?;
        crate::logs::check(&self.logs)?;
        self.sms.min_severity()?;
        self.sms.settings(&self.sites.timezone)?;
        if let Some(id) = &self.instance.id {
            check_instance_id(id)?;
        }
        if self.storage.roll_interval_s == 0 {
            bail!("[storage] roll_interval_s must be at least 1");
        }
        if self.storage.compact_interval_s == 0 || self.storage.compact_max_file_mb == 0 {
            bail!("[storage] compact_interval_s and compact_max_file_mb must be at least 1");
        }
        let datasets: Vec<&str> = gaveurs_query::known_datasets()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        for (dataset, days) in &self.storage.retention_days {
            if !datasets.contains(&dataset.as_str()) {
                bail!(
                    "[storage.retention_days] {dataset:?} is not a dataset; known: {}",
                    datasets.join(", ")
                );
            }
            if *days == 0 {
                bail!("[storage.retention_days] {dataset} must keep at least 1 day");
            }
        }
        if self.storage.max_record_bytes == 0 {
            bail!("[storage] max_record_bytes must be at least 1");
        }
        if self.storage.max_record_bytes > self.mqtt.max_packet_bytes {
            bail!(
                "[storage] max_record_bytes ({}) exceeds [mqtt] max_packet_bytes ({}): oversize records could not be dead-lettered",
                self.storage.max_record_bytes,
                self.mqtt.max_packet_bytes
            );
        }
        if self.query.memory_limit_mb == 0 || self.query.timeout_s == 0 {
            bail!("[query] memory_limit_mb and timeout_s must be at least 1");
        }
        if self.websocket.client_queue == 0 || self.websocket.ping_interval_s == 0 {
            bail!("[websocket] client_queue and ping_interval_s must be at least 1");
        }
        if self.auth.mode == AuthMode::Keycloak && self.auth.issuer.is_none() {
            bail!(
                "[auth] mode = \"keycloak\" needs `issuer`, e.g. \"http://keycloak:8080/realms/gaveurs-production\""
            );
        }
        if self.auth.leeway_s > 60 {
            bail!("[auth] leeway_s is at most 60 (got {})", self.auth.leeway_s);
        }
        if self.auth.audience.is_empty() {
            bail!("[auth] audience needs at least one client id, e.g. [\"backend-api\"]");
        }
        if self.mqtt.max_inflight == 0 {
            bail!("[mqtt] max_inflight must be at least 1");
        }
        if self.mqtt.max_connections == 0 || self.websocket.max_connections == 0 {
            bail!("[mqtt] max_connections and [websocket] max_connections must be at least 1");
        }
        if self.tls.is_none() && (self.mqtt.tls_listen.is_some() || self.http.tls_listen.is_some())
        {
            bail!(
                "[mqtt] tls_listen and [http] tls_listen need a certificate: add [tls] cert = \"server.pem\" and key = \"server.key\""
            );
        }
        if self.mqtt.embedded_listen().is_none() && self.mqtt.broker.is_none() {
            bail!("[mqtt] needs `listen` or `broker`");
        }
        self.sites.zones()?;
        tracing_subscriber::EnvFilter::try_new(&self.logs.level)
            .map_err(|e| anyhow::anyhow!("[logs] level {:?}: {e}", self.logs.level))?;
        Ok(())
    }
}

pub fn check_instance_id(id: &str) -> anyhow::Result<()> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        bail!(
            "[instance] id {id:?} must be 1–64 characters of A–Z, a–z, 0–9, '-' or '_' (it names files)"
        );
    }
    Ok(())
}

/// `GAVEURS_STORAGE__ROLL_INTERVAL_S=10` sets `[storage] roll_interval_s = 10`. The value is
/// read as TOML when it parses as such (numbers, booleans, arrays) and as a string otherwise.
fn apply_override(table: &mut toml::Table, name: &str, value: &str) -> anyhow::Result<()> {
    let path: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(|part| part.to_ascii_lowercase())
        .collect();
    if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
        bail!("environment override {name}: expected GAVEURS_<SECTION>__<KEY>");
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut node = table;
    for section in &path[..path.len() - 1] {
        let entry = node
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry.as_table_mut().ok_or_else(|| {
            anyhow::anyhow!("environment override {name}: {section} is not a section")
        })?;
    }
    node.insert(path[path.len() - 1].clone(), parsed);
    Ok(())
}

fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load_with_env(Some(&path), Vec::new())
    }

    #[test]
    fn defaults_without_a_file() {
        let config = Config::load_with_env(None, Vec::new()).unwrap();
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(
            config.mqtt.embedded_listen().unwrap().to_string(),
            "127.0.0.1:1883"
        );
        assert_eq!(config.storage.data_dir, PathBuf::from("data"));
        assert_eq!(config.storage.roll_interval_s, 30);
        assert!(config.storage.compact);
        assert_eq!(config.storage.compact_after_hours, 2);
        assert_eq!(config.storage.compact_interval_s, 300);
        assert!(config.storage.retention_days.is_empty());
        assert_eq!(config.storage.max_future_skew_s, 300);
        assert_eq!(config.query.memory_limit_mb, 256);
        assert_eq!(config.query.timeout_s, 30);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[storage]\nroll_intervall_s = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("roll_intervall_s"), "{err}");
        let err = parse("[nope]\n").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn broker_replaces_the_embedded_listener_unless_listen_is_given() {
        let config = parse("[mqtt]\nbroker = \"mqtt://localhost:1884\"\n").unwrap();
        assert_eq!(config.mqtt.embedded_listen(), None);
        let config =
            parse("[mqtt]\nbroker = \"mqtt://localhost:1884\"\nlisten = \"127.0.0.1:1999\"\n")
                .unwrap();
        assert!(config.mqtt.embedded_listen().is_some());
        assert!(parse("[mqtt]\nbroker = \"http://x\"\n").is_err());
    }

    #[test]
    fn environment_overrides_win_and_are_checked() {
        let env = vec![
            (
                "GAVEURS_STORAGE__ROLL_INTERVAL_S".to_string(),
                "7".to_string(),
            ),
            (
                "GAVEURS_HTTP__LISTEN".to_string(),
                "127.0.0.1:9999".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let config = Config::load_with_env(None, env).unwrap();
        assert_eq!(config.storage.roll_interval_s, 7);
        assert_eq!(config.http.listen.port(), 9999);
        let env = vec![("GAVEURS_STORAGE__NOPE".to_string(), "1".to_string())];
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn semantic_rules() {
        assert!(parse("[instance]\nid = \"a/b\"\n").is_err());
        assert!(parse("[storage]\nroll_interval_s = 0\n").is_err());
        assert!(parse("[storage]\ncompact_interval_s = 0\n").is_err());
        assert!(parse("[storage.retention_days]\ndql = 30\n").is_err());
        assert!(parse("[storage.retention_days]\ndlq = 0\n").is_err());
        let config = parse("[storage.retention_days]\ndlq = 30\nlate = 90\n").unwrap();
        assert_eq!(config.storage.retention_days["late"], 90);
        let storage = parse("[storage]\nmax_future_skew_s = 18446744073709551615\n")
            .unwrap()
            .storage;
        assert_eq!(storage.max_future_skew(), chrono::Duration::MAX);
        assert!(parse("[query]\nmemory_limit_mb = 0\n").is_err());
        assert!(parse("[query]\ntimeout_s = 0\n").is_err());
        assert!(parse("[query]\ntimeout = 5\n").is_err());
        let limits = parse("[query]\nmemory_limit_mb = 64\ntimeout_s = 5\n")
            .unwrap()
            .query
            .limits();
        assert_eq!((limits.memory_limit_mb, limits.timeout_s), (64, 5));
        assert!(parse("[sites]\ntimezone = \"Mars/Olympus\"\n").is_err());
    }
}
