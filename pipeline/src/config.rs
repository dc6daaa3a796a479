//! The configuration file (TOML). Every section is optional; unknown keys are errors.
//! Any key can be overridden from the environment as `GAVEURS_<SECTION>__<KEY>`, e.g.
//! `GAVEURS_HTTP__LISTEN=0.0.0.0:8000` or `GAVEURS_STORAGE__ROLL_INTERVAL_S=10`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gaveurs_connectors::sources::mqtt_broker::BrokerUrl;
use serde::Deserialize;

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
    /// Finished lots are remembered this many days of event time (default 90); a meal for a
    /// lot forgotten since is late and recomputes nothing.
    #[serde(default = "default_lot_retention_days")]
    pub lot_retention_days: u64,
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
    90
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
    /// Verified tokens kept in memory. Default 10000.
    #[serde(default = "default_token_cache")]
    pub token_cache: usize,
    /// Lifetime of tokens minted by `gaveurs token` in dev mode, seconds. Default 43200 (12 h).
    #[serde(default = "default_dev_token_ttl_s")]
    pub dev_token_ttl_s: u64,
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
            token_cache: default_token_cache(),
            dev_token_ttl_s: default_dev_token_ttl_s(),
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

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            replay: default_replay(),
            client_queue: default_client_queue(),
            ping_interval_s: default_ping_interval_s(),
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
}

fn default_http_listen() -> SocketAddr {
    "127.0.0.1:8000".parse().expect("valid address")
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
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
            broker: None,
            client_id: None,
            username: None,
            password: None,
            session_expiry_s: default_session_expiry_s(),
            shared_group: None,
            max_inflight: default_max_inflight(),
            max_packet_bytes: default_max_packet_bytes(),
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
fn default_compact_after_hours() -> u64 {
    2
}
fn default_compact_interval_s() -> u64 {
    300
}
fn default_compact_max_file_mb() -> u64 {
    256
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            roll_interval_s: default_roll_interval_s(),
            max_rows_per_roll: default_max_rows_per_roll(),
            max_record_bytes: default_max_record_bytes(),
            compact: true,
            compact_after_hours: default_compact_after_hours(),
            compact_interval_s: default_compact_interval_s(),
            compact_max_file_mb: default_compact_max_file_mb(),
            retention_days: Default::default(),
        }
    }
}

/// `[logs]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    /// Log folder. Default `./logs`. One file per module (`main`, `auth`, `audit`, `api`,
    /// `websocket`, `connectors`, `storage`, `alerts`, `ml`, `ledger`) plus `errors`; see
    /// `logs/README.md`.
    #[serde(default = "default_logs_dir")]
    pub dir: PathBuf,
    /// Also log to standard error. Default true.
    #[serde(default = "default_true")]
    pub console: bool,
    /// The level of every module without its own: `trace`, `debug`, `info` (default), `warn`,
    /// `error` or `off`. Reloaded on SIGHUP.
    #[serde(default = "default_level")]
    pub level: String,
    /// Levels of single modules, e.g. `[logs.modules] auth = "debug"`. Reloaded on SIGHUP.
    #[serde(default)]
    pub modules: std::collections::BTreeMap<String, String>,
    /// `text` (default): `2026-01-20 10:00:00 | INFO     | auth      … | message | key=value`;
    /// `json`: one JSON object per line.
    #[serde(default)]
    pub format: LogFormat,
    /// Days a rotated file (`<module>.log.YYYY-MM-DD`) is kept. Default 30.
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// The same for `errors.log`. Default 90.
    #[serde(default = "default_errors_retention_days")]
    pub errors_retention_days: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogsConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

fn default_retention_days() -> u64 {
    30
}
fn default_errors_retention_days() -> u64 {
    90
}
fn default_logs_dir() -> PathBuf {
    PathBuf::from("logs")
}
fn default_true() -> bool {
    true
}
fn default_level() -> String {
    "info".into()
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
        // Parse the file alone first, so its own mistakes are reported with line numbers.
        let mut config: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        let overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .collect();
        if !overrides.is_empty() {
            let mut table: toml::Table =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
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
        let datasets: Vec<&str> = crate::query::known_datasets()
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
        assert!(parse("[sites]\ntimezone = \"Mars/Olympus\"\n").is_err());
    }
}
