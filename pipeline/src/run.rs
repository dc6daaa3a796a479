//! `gaveurs run`: recovery, start-up order, and shutdown.
//!
//! Start-up: recover the Parquet sink (finish an interrupted roll), open the durable log
//! (replaying what was not yet published), start the sinks, start the sources, and only then
//! bind the HTTP port — so a load balancer or test that sees HTTP up knows MQTT accepts
//! connections and recovery is done (SPEC §9).
//!
//! Shutdown (SIGINT/SIGTERM): stop reading input, send the acknowledgements owed, close the
//! log (everything accepted is fsynced), publish every buffered row to Parquet, exit 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use gaveurs_connectors::sources::kafka::{self as kafka_source, KafkaSettings, Publication};
use gaveurs_connectors::sources::mqtt_broker::{self, BrokerSettings};
use gaveurs_connectors::sources::mqtt_embedded::{EmbeddedListener, ListenerLimits};
use gaveurs_connectors::tls::{self, TlsIncoming};
use gaveurs_operators::alerts::rules::RuleSet;
use gaveurs_operators::analytics::Engine;
use gaveurs_operators::dedup::DedupIndex;
use gaveurs_operators::validate::Validator;
use gaveurs_sinks::kafka::{KafkaOutput, OutputSettings};
use gaveurs_sinks::parquet::derived::DerivedWriter;
use gaveurs_sinks::parquet::{self, ParquetOptions, RollControl};
use gaveurs_sinks::sms::{Credentials, SmsService};
use gaveurs_sinks::wal::{CheckpointFile, CursorOptions, Wal, WalEntry};
use gaveurs_sinks::websocket::{Hub, HubOptions};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::instance;
use crate::topology::{LogConsumers, spawn_named};
use gaveurs_api as http;
use gaveurs_operators::alerts::desk::{self as alerts, AlertDesk};
use gaveurs_operators::analytics::consumer::{self as analytics, LotBoard};
use gaveurs_operators::anomalies;
use gaveurs_operators::devices::DeviceRegistry;
use gaveurs_operators::intake::{IntakeParts, PipelineIntake};
use gaveurs_operators::ledger::{self, keys::KeyStore};

/// Where an instance keeps its files.
pub struct Paths {
    pub data_dir: PathBuf,
    pub parquet_root: PathBuf,
    pub instance_dir: PathBuf,
}

impl Paths {
    pub fn new(config: &Config, instance_id: &str) -> Self {
        let data_dir = config.storage.data_dir.clone();
        Self {
            parquet_root: data_dir.join("parquet"),
            instance_dir: data_dir.join("instances").join(instance_id),
            data_dir,
        }
    }
}

/// The simulator `gaveurs run --demo` feeds the pipeline with.
pub fn demo_simulation(
    destination: gaveurs_loadgen::simulate::Destination,
) -> gaveurs_loadgen::simulate::SimulateOptions {
    gaveurs_loadgen::simulate::SimulateOptions {
        destination,
        lots: 6,
        gaveurs: 3,
        devices: 3,
        rate: 4.0,
        sqal_rate: 0.5,
        duration: None,
        seed: rand::random(),
        token: None,
    }
}

pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    demo: bool,
    log_levels: crate::logs::Levels,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // Before anything can announce readiness, so an early SIGTERM is a clean stop.
    let stop_signals = StopSignals::install()?;
    let instance_id = instance::resolve(&config, &std::env::current_dir()?)?;
    let paths = Paths::new(&config, &instance_id);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        instance = %instance_id,
        config = config_path.as_deref().map(crate::telemetry::describe).unwrap_or_else(|| "built-in defaults".into()),
        data_dir = %crate::telemetry::describe(&paths.data_dir),
        "gaveurs starting"
    );

    // Recovery.
    let parquet_options = ParquetOptions {
        root: paths.parquet_root.clone(),
        state_dir: paths.instance_dir.join("parquet"),
        instance_id: instance_id.clone(),
        roll_interval: Duration::from_secs(config.storage.roll_interval_s),
        max_rows_per_roll: config.storage.max_rows_per_roll,
    };
    let recovered_state = parquet::recover(&parquet_options)
        .with_context(|| format!("recovering {}", paths.parquet_root.display()))?;
    let published_through = recovered_state.published_through;
    let saved_alerts =
        alerts::SavedAlerts::load(&paths.instance_dir.join("alerts"), published_through)?;
    let (wal, wal_writer) = Wal::open(
        config.storage.wal_options(&paths.instance_dir),
        published_through,
    )
    .context("opening the durable log")?;
    // What the log holds beyond the published position: its records are known (a second
    // copy is a duplicate) — except Kafka records, never taken from this log again: whoever
    // owns their partition now re-reads them from Kafka.
    let mut unpublished_keys = Vec::new();
    let mut unpublished_kafka = 0usize;
    wal.scan_after(published_through, |committed| {
        let WalEntry::Event(event) = committed.entry.as_ref() else {
            return;
        };
        if committed.entry.kafka_position().is_none() {
            unpublished_keys.push(event.record.dedup_key());
        } else {
            unpublished_kafka += 1;
        }
    })
    .context("reading the durable log")?;
    if unpublished_kafka > 0 {
        tracing::info!(
            skipped = unpublished_kafka,
            "unpublished Kafka records are left to be re-read from Kafka"
        );
    }
    let dedup = Arc::new(
        DedupIndex::open(
            &paths.instance_dir.join("published-keys.redb"),
            config.storage.dedup_limits(),
        )
        .context("opening the dedup index")?,
    );
    // An upgrade from a version that kept bare digests, or a lost index: the published
    // files say every key.
    let lost = published_through > 0 && dedup.is_empty().context("reading the dedup index")?;
    if recovered_state.legacy_digests.is_some() || lost {
        let keys =
            gaveurs_operators::dedup::recovery::rebuild_dedup_keys(&dedup, &paths.parquet_root)
                .await
                .context("building the dedup index from the published files")?;
        if let Some(legacy) = &recovered_state.legacy_digests {
            parquet::retire_legacy_digests(legacy)
                .with_context(|| format!("retiring {}", legacy.display()))?;
        }
        tracing::info!(keys, "dedup index built from the published files");
    }
    dedup
        .seed_unpublished(unpublished_keys.iter().copied())
        .context("seeding the dedup index")?;
    tracing::info!(
        published_through = recovered_state.published_through,
        unpublished = unpublished_keys.len(),
        log_bytes = wal.disk_bytes(),
        resident_lots = dedup.counts().resident_lots,
        stale_temp_files_removed = recovered_state.stale_removed,
        "recovery done"
    );
    drop(unpublished_keys);
    let roll_control = RollControl::new(recovered_state.published_through);
    // Every consumer of the log: one cursor and one thread each.
    let mut consumers = LogConsumers::default();
    consumers.register(
        CursorOptions {
            name: "parquet".into(),
            after: published_through,
            essential: true,
        },
        {
            let control = roll_control.clone();
            let dedup = dedup.clone();
            move |cursor| {
                spawn_named("gaveurs-parquet", move || {
                    let on_keys = Box::new(move |keys: &[gaveurs_schemas::records::DedupKey]| {
                        dedup.published(keys).map_err(std::io::Error::other)
                    });
                    parquet::run(parquet_options, &recovered_state, cursor, control, on_keys)
                        .context("publishing parquet files")
                })
            }
        },
    );

    // Sources.
    let validator = Validator {
        max_record_bytes: config.storage.max_record_bytes,
        zones: config.sites.zones()?,
        max_future_skew: config.storage.max_future_skew(),
    };
    let hub = Hub::new(HubOptions {
        replay: config.websocket.replay,
        client_queue: config.websocket.client_queue,
        replay_budget_bytes: (config.websocket.replay_budget_mb * 1024 * 1024) as usize,
        channel_idle: Duration::from_secs(config.websocket.channel_idle_s),
        ..HubOptions::default()
    });
    // Quiet channels go even when the replay budget is not reached.
    tokio::spawn({
        let hub = hub.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                hub.drop_quiet_channels();
            }
        }
    });
    let devices = Arc::new(DeviceRegistry::new(config.devices.limits()));
    let (verifier, dev_keys) = crate::auth::verifier(&config).await?;
    tracing::info!(
        target: "auth",
        mode = ?config.auth.mode,
        issuer = %verifier.settings().issuer,
        audience = ?config.auth.audience,
        "token verification ready"
    );
    let shutdown = CancellationToken::new();
    let kafka_output = match &config.kafka {
        Some(kafka) => {
            let settings = OutputSettings {
                brokers: kafka.brokers.clone(),
                dlq_topic: kafka.dlq_topic.clone(),
                live_topic: kafka.live_topic.clone(),
                kpis_topic: kafka.kpis_topic.clone(),
                alerts_topic: kafka.alerts_topic.clone(),
                instance: instance_id.clone(),
                properties: kafka.librdkafka.clone(),
            };
            let output =
                KafkaOutput::new(settings.clone()).context("starting the Kafka producer")?;
            if !settings.live_topic.is_empty() {
                gaveurs_sinks::kafka::spawn_live_reader(&settings, hub.clone(), shutdown.clone())
                    .context("reading the live topic")?;
            }
            if !settings.alerts_topic.is_empty() {
                // Alerts raised by other instances reach the gaveurs connected here.
                let hub = hub.clone();
                gaveurs_sinks::kafka::spawn_topic_reader(
                    &settings,
                    &settings.alerts_topic,
                    "alerts",
                    move |payload| match serde_json::from_slice(payload) {
                        Ok(change) => alerts::push_live(&hub, &change),
                        Err(e) => tracing::warn!(target: "websocket", error = %e, "unreadable message on the alerts topic"),
                    },
                    shutdown.clone(),
                )
                .context("reading the alerts topic")?;
            }
            Some(output)
        }
        None => None,
    };
    // The models, shared by the anomaly desk, the `anomalie` alert rule and the lot KPIs'
    // predicted outcome.
    let models = if config.ml.enabled {
        let models = config
            .ml
            .models(Path::new("."))
            .context("loading the [ml] models")?;
        let source = |path: &Option<std::path::PathBuf>| {
            path.as_ref()
                .map_or("built-in".to_string(), |p| p.display().to_string())
        };
        tracing::info!(target: "ml", model = %models.meal.model, version = %models.meal.version, threshold = models.meal.threshold, source = %source(&config.ml.meal_model), "meal model loaded");
        tracing::info!(target: "ml", model = %models.sqal.model, version = %models.sqal.version, threshold = models.sqal.threshold, source = %source(&config.ml.sqal_model), "SQAL model loaded");
        tracing::info!(target: "ml", model = %models.outcome.model, version = %models.outcome.version, source = %source(&config.ml.outcome_model), "lot outcome model loaded");
        Some(anomalies::desk::ModelSlot::new(models))
    } else {
        None
    };
    let lot_board = Arc::new(LotBoard::new(config.analytics.max_lots));
    if !config.analytics.enabled {
        tracing::info!("analytics disabled by [analytics] enabled = false");
    } else {
        let mut engine = Engine::new(config.analytics.settings());
        engine
            .check_queries()
            .await
            .context("checking the [analytics] KPI queries")?;
        let cursors_dir = paths.instance_dir.join("cursors");
        let (checkpoint, saved) = CheckpointFile::load(&cursors_dir, "analytics")
            .with_context(|| format!("reading {}", cursors_dir.display()))?;
        let outputs = analytics::Outputs {
            hub: hub.clone(),
            kafka: kafka_output.clone(),
            board: lot_board.clone(),
            writer: DerivedWriter::new(paths.parquet_root.clone(), instance_id.clone()),
            parquet_root: paths.parquet_root.clone(),
            dedup: dedup.clone(),
            published: roll_control.clone(),
            checkpoint,
            models: models.clone(),
        };
        // Lots are read back from Parquet when a record touches them, not all at start.
        let analytics_after = saved.unwrap_or(published_through);
        let batching = analytics::Batching {
            interval: Duration::from_millis(config.analytics.batch_interval_ms),
            max_records: config.analytics.batch_max_records,
            publish_every: Duration::from_secs(config.storage.roll_interval_s),
            step_delay: Duration::from_millis(config.analytics.test_step_delay_ms),
        };
        consumers.register(
            CursorOptions {
                name: "analytics".into(),
                after: analytics_after,
                essential: false,
            },
            move |cursor| analytics::spawn(engine, outputs, batching, cursor),
        );
    }
    let sms_stop = CancellationToken::new();
    let sms = SmsService::start(
        config.sms.settings(&config.sites.timezone)?,
        Credentials::from_env(),
        &paths.instance_dir.join("sms"),
        sms_stop.clone(),
    )
    .context("opening the SMS outbox")?;
    crate::metrics::register_components(&hub, &sms);
    let directory = config.sms.load_directory()?;
    tracing::info!(target: "alerts", phones = directory.len(), texting = sms.enabled(), "alerts ready");
    let alert_desk = AlertDesk::new(
        saved_alerts,
        RuleSet::from_config(&config.alerts).map_err(|e| anyhow::anyhow!(e))?,
        config.sms.min_severity()?,
        alerts::AlertOutputs {
            hub: hub.clone(),
            kafka: kafka_output.clone(),
            sms: sms.clone(),
            directory,
            parquet_root: paths.parquet_root.clone(),
        },
        alerts::AlertPaths {
            shards: paths.data_dir.join("shards"),
            instances: paths.data_dir.join("instances"),
            instance_id: instance_id.clone(),
        },
        Duration::from_millis(config.alerts.state_save_interval_ms.max(1)),
        models.clone(),
    );
    consumers.register(
        CursorOptions {
            name: "alerts".into(),
            after: alert_desk.saved_through(),
            essential: false,
        },
        {
            let desk = alert_desk.clone();
            let publish_every = Duration::from_secs(
                config
                    .alerts
                    .publish_interval_s
                    .unwrap_or(config.storage.roll_interval_s)
                    .max(1),
            );
            move |cursor| alerts::spawn(desk, cursor, publish_every)
        },
    );
    let anomaly_desk = if let Some(models) = &models {
        let desk = anomalies::desk::AnomalyDesk::open(
            models.clone(),
            anomalies::desk::ScoringOutputs {
                hub: hub.clone(),
                parquet_root: paths.parquet_root.clone(),
                state_dir: paths.instance_dir.join("anomalies"),
                instance_id: instance_id.clone(),
            },
            published_through,
            config.ml.max_lots,
            Duration::from_millis(config.ml.state_save_interval_ms.max(1)),
        )?;
        let publish_every = Duration::from_secs(config.storage.roll_interval_s.max(1));
        consumers.register(
            CursorOptions {
                name: "anomalies".into(),
                after: desk.saved_through(),
                essential: false,
            },
            {
                let desk = desk.clone();
                move |cursor| anomalies::desk::spawn(desk, cursor, publish_every)
            },
        );
        crate::metrics::register_anomalies(&desk);
        tokio::spawn(anomalies::desk::watch_model_file(
            desk.clone(),
            config.ml.clone(),
            PathBuf::from("."),
            Duration::from_secs(1),
            shutdown.clone(),
        ));
        Some(desk)
    } else {
        tracing::info!(target: "ml", "anomaly scoring disabled by [ml] enabled = false");
        None
    };
    let ledger_desk = if config.ledger.enabled {
        let keys = KeyStore::new(
            config
                .ledger
                .keys_dir
                .clone()
                .unwrap_or_else(|| paths.data_dir.join("keys").join("ledger")),
        );
        // With Kafka, each partition's records go to the partition's chain, taken by
        // whichever instance owns it; the others (MQTT, WebSocket) to this instance's.
        let local_chain = if config.kafka.is_some() {
            format!("instance-{instance_id}")
        } else {
            ledger::desk::LOCAL_CHAIN.to_string()
        };
        let desk = ledger::desk::LedgerDesk::open(
            &config.ledger,
            &local_chain,
            keys,
            ledger::desk::LedgerPaths {
                ledger_dir: paths.data_dir.join("ledger"),
                state_dir: paths.instance_dir.join("ledger"),
                shards: paths.data_dir.join("shards"),
                parquet_root: paths.parquet_root.clone(),
            },
            published_through,
            RuleSet::from_config(&config.alerts).map_err(|e| anyhow::anyhow!(e))?,
            models.clone(),
        )
        .context("opening the ledger")?;
        consumers.register(
            CursorOptions {
                name: "ledger".into(),
                after: desk.saved_through(),
                essential: false,
            },
            {
                let desk = desk.clone();
                let publish_every = Duration::from_secs(config.storage.roll_interval_s.max(1));
                move |cursor| ledger::desk::spawn(desk, cursor, publish_every)
            },
        );
        Some(desk)
    } else {
        tracing::info!(target: "ledger", "ledger disabled by [ledger] enabled = false");
        None
    };
    if let Some(kafka) = &kafka_output
        && kafka.has_live_topic()
    {
        let kafka = kafka.clone();
        let dir = paths.instance_dir.join("cursors");
        let (file, saved) = CheckpointFile::load(&dir, "live")
            .with_context(|| format!("reading {}", dir.display()))?;
        consumers.register(
            CursorOptions {
                name: "live".into(),
                // A first start sends no history: the topic is a notification.
                after: saved.unwrap_or_else(|| wal.durable_lsn()),
                essential: false,
            },
            move |cursor| crate::live::spawn(kafka, cursor, file),
        );
    }
    let consumers = consumers.start(&wal)?;
    // Compaction of closed days and retention (sinks/src/parquet/compact.rs).
    let storage_task = parquet::compact::spawn(config.storage.compaction(
        &paths.parquet_root,
        &paths.instance_dir.join("parquet"),
        &instance_id,
    ))?;
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let reloads = tokio::spawn(reload_on_hangup(
        hangups,
        config_path.clone(),
        alert_desk.clone(),
        anomaly_desk,
        ledger_desk.clone(),
        log_levels,
    ));
    let intake = PipelineIntake::new(IntakeParts {
        validator,
        dedup,
        wal: wal.clone(),
        hub: hub.clone(),
        devices: devices.clone(),
        verifier: verifier.clone(),
        kafka: kafka_output.clone(),
    });
    let mut sources = tokio::task::JoinSet::new();
    let mut mqtt_addr: Option<SocketAddr> = None;
    let mut mqtts_addr: Option<SocketAddr> = None;
    let tls = config
        .tls
        .as_ref()
        .map(|files| -> anyhow::Result<TlsConfigs> {
            Ok(TlsConfigs {
                mqtt: tls::server_config(&files.cert, &files.key, &[])?,
                http: tls::server_config(&files.cert, &files.key, &[b"http/1.1"])?,
            })
        })
        .transpose()?;
    if let Some(addr) = config.mqtt.embedded_listen() {
        let limits = ListenerLimits {
            max_packet_bytes: config.mqtt.max_packet_bytes,
            max_inflight: config.mqtt.max_inflight,
            max_connections: config.mqtt.max_connections,
            ..ListenerLimits::default()
        };
        let mut listener = EmbeddedListener::bind(addr, limits)
            .await
            .with_context(|| format!("cannot listen for MQTT on {addr}"))?;
        mqtt_addr = Some(listener.local_addr()?);
        if let (Some(tls), Some(tls_addr)) = (&tls, config.mqtts_listen()) {
            let socket = tokio::net::TcpListener::bind(tls_addr)
                .await
                .with_context(|| format!("cannot listen for MQTT over TLS on {tls_addr}"))?;
            listener = listener.with_tls(TlsIncoming::spawn(socket, tls.mqtt.clone())?);
            mqtts_addr = listener.tls_local_addr();
        }
        sources.spawn(listener.run(intake.clone(), shutdown.clone()));
    }
    let source_health = gaveurs_connectors::sources::health::SourceHealth::default();
    if let Some(broker) = &config.mqtt.broker {
        let settings = BrokerSettings {
            host: broker.host.clone(),
            port: broker.port,
            client_id: config
                .mqtt
                .client_id
                .clone()
                .unwrap_or_else(|| format!("gaveurs-{instance_id}")),
            username: config.mqtt.username.clone(),
            password: config.mqtt.password.clone(),
            session_expiry_s: config.mqtt.session_expiry_s,
            shared_group: config.mqtt.shared_group.clone(),
            max_inflight: config.mqtt.max_inflight,
        };
        sources.spawn(mqtt_broker::run(
            settings,
            intake.clone(),
            shutdown.clone(),
            source_health.register(format!("MQTT broker {}:{}", broker.host, broker.port)),
        ));
    }

    let kafka_source = match &config.kafka {
        Some(kafka) => {
            // Each Kafka partition's alerts and ledger chain belong to the partition.
            let mut partition_states: Vec<Arc<dyn kafka_source::PartitionState>> =
                vec![alert_desk.clone()];
            if let Some(ledger_desk) = &ledger_desk {
                partition_states.push(ledger_desk.clone());
            }
            let settings = KafkaSettings {
                brokers: kafka.brokers.clone(),
                group: kafka.group.clone(),
                gavage_topic: kafka.gavage_topic.clone(),
                sqal_topic: kafka.sqal_topic.clone(),
                client_id: format!("gaveurs-{instance_id}"),
                session_timeout_ms: kafka.session_timeout_ms,
                heartbeat_interval_ms: kafka.heartbeat_interval_ms,
                properties: kafka.librdkafka.clone(),
            };
            let publication = Arc::new(LogPublication {
                wal: wal.clone(),
                control: roll_control.clone(),
                root: paths.parquet_root.clone(),
            });
            tracing::info!(target: "connectors", brokers = %kafka.brokers, group = %kafka.group, "consuming {} and {}", kafka.gavage_topic, kafka.sqal_topic);
            Some(
                kafka_source::spawn(
                    settings,
                    intake.clone(),
                    publication,
                    Arc::new(kafka_source::PartitionStates(partition_states)),
                    source_health.register(format!("Kafka {}", kafka.brokers)),
                    shutdown.clone(),
                )
                .context("starting the Kafka consumer")?,
            )
        }
        None => None,
    };

    // HTTP last.
    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))?;
    let http_addr = http_listener.local_addr()?;
    let ingest_sockets = tokio_util::task::TaskTracker::new();
    let dev_signin = dev_keys.as_ref().and_then(|keys| {
        let loopback = http_addr.ip().is_loopback();
        if !loopback && !config.auth.dev_signin {
            tracing::info!(target: "auth", listen = %http_addr, "the web page's demo-user sign-in is off: the HTTP listener is not on loopback ([auth] dev_signin = true serves it anyway)");
            return None;
        }
        if !loopback {
            tracing::warn!(target: "auth", listen = %http_addr, "[auth] dev_signin = true: the web page mints a demo user's token for anyone who reaches {http_addr}");
        }
        Some(http::DevSignin {
            keys: keys.clone(),
            issuer: crate::auth::issuer(&config),
            audience: config
                .auth
                .audience
                .first()
                .cloned()
                .unwrap_or_else(|| "backend-api".into()),
            ttl: Duration::from_secs(config.auth.dev_token_ttl_s),
            issuer_flow: Arc::new(gaveurs_operators::auth::dev_issuer::DevIssuer::new()),
        })
    });
    let web_issuer = (config.auth.mode == crate::config::AuthMode::Keycloak)
        .then(|| config.auth.issuer.clone())
        .flatten();
    let app = http::router(http::AppState {
        wal: wal.clone(),
        sources: source_health.clone(),
        intake: intake.clone(),
        hub: hub.clone(),
        devices,
        lots: lot_board,
        alerts: alert_desk,
        verifier,
        dev_keys,
        dev_signin,
        web_issuer,
        ping_every: Duration::from_secs(config.websocket.ping_interval_s),
        shutdown: shutdown.clone(),
        ingest_sockets: ingest_sockets.clone(),
        socket_slots: Arc::new(tokio::sync::Semaphore::new(
            config.websocket.max_connections,
        )),
        parquet_root: paths.parquet_root.clone(),
        query_limits: config.query.limits(),
        data_dir: paths.data_dir.clone(),
    });
    let http_task = tokio::spawn({
        let shutdown = shutdown.clone();
        let app = app.clone();
        async move {
            axum::serve(
                http_listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        }
    });
    for (what, addr) in [("MQTT", mqtt_addr), ("HTTP", Some(http_addr))] {
        if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
            tracing::warn!(target: "auth", listen = %addr, "plain {what} on {addr} carries tokens in clear; set [tls] and keep the plain listener on loopback");
        }
    }
    let https = match (&tls, config.https_listen()) {
        (Some(tls), Some(addr)) => {
            let socket = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for HTTPS on {addr}"))?;
            let incoming = TlsIncoming::spawn(socket, tls.http.clone())?;
            let https_addr = incoming.local_addr();
            let app = app
                .clone()
                .layer(axum::middleware::map_request(tls_peer_as_connect_info));
            let shutdown = shutdown.clone();
            let task = tokio::spawn(async move {
                axum::serve(
                    incoming,
                    app.into_make_service_with_connect_info::<tls::TlsPeer>(),
                )
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            });
            Some((https_addr, task))
        }
        _ => None,
    };
    let mqtt_text = mqtt_addr
        .map(|a| a.to_string())
        .unwrap_or_else(|| "off".into());
    tracing::info!(
        mqtt = %mqtt_text,
        mqtt_broker = config.mqtt.broker.as_ref().map(|b| format!("{}:{}", b.host, b.port)).unwrap_or_else(|| "none".into()),
        http = %http_addr,
        startup_ms = started.elapsed().as_millis() as u64,
        "gaveurs ready"
    );
    // One machine-readable line on stdout, for scripts and tests that bind port 0.
    let optional =
        |addr: Option<SocketAddr>| addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
    println!(
        "gaveurs ready mqtt={mqtt_text} http={http_addr} mqtts={} https={} instance={instance_id}",
        optional(mqtts_addr),
        optional(https.as_ref().map(|(addr, _)| *addr)),
    );

    let simulator_stop = CancellationToken::new();
    let simulator = demo.then(|| {
        let destination = match mqtt_addr {
            Some(addr) => gaveurs_loadgen::simulate::Destination::Mqtt(addr),
            None => gaveurs_loadgen::simulate::Destination::WebSocket(http_addr),
        };
        tracing::info!(
            ?destination,
            "demo: simulator publishing gavage lots and SQAL samples as admin@euralis.fr"
        );
        let mut options = demo_simulation(destination);
        match crate::auth::mint_dev_token(&config, "admin@euralis.fr", None) {
            Ok(token) => options.token = Some(token),
            Err(e) => tracing::warn!(
                "demo: no token for the simulator ({e:#}); its records will be refused"
            ),
        }
        tokio::spawn(gaveurs_loadgen::simulate::run(
            options,
            simulator_stop.clone(),
        ))
    });

    let failure = stop_signals.wait(&wal).await;
    let stopping = Instant::now();
    if let Some(simulator) = simulator {
        simulator_stop.cancel();
        match simulator.await {
            Ok(Ok(counters)) => tracing::info!("demo simulator stopped: {}", counters.summary()),
            Ok(Err(e)) => tracing::warn!("demo simulator failed: {e:#}"),
            Err(e) => tracing::warn!("demo simulator panicked: {e}"),
        }
    }
    tracing::info!("gaveurs stopping: no more input");
    shutdown.cancel();
    hub.close_all();
    // A pass in progress stops at its next file or batch.
    let _ = tokio::task::spawn_blocking(move || storage_task.stop()).await;
    while sources.join_next().await.is_some() {}
    if let Some(kafka) = kafka_source {
        // It publishes and commits what it consumed before leaving the group.
        let _ = tokio::task::spawn_blocking(move || kafka.join()).await;
    }
    if let Some(output) = kafka_output {
        let _ = tokio::task::spawn_blocking(move || output.flush(Duration::from_secs(1))).await;
    }
    ingest_sockets.close();
    ingest_sockets.wait().await;
    tokio::task::spawn_blocking(move || wal_writer.close()).await?;
    // Everything accepted is durable; now every consumer catches up with it, within the
    // shutdown deadline.
    let consumers_result = consumers
        .finish(&wal, stopping + config.storage.shutdown_catch_up())
        .await;
    reloads.abort();
    // Texts still queued stay in the outbox for the next start.
    sms_stop.cancel();
    sms.stop(Duration::from_secs(1)).await;
    let texts = sms.counters();
    tracing::info!(target: "alerts", sent = texts.sent, failed = texts.failed, retried = texts.retried, disabled = texts.disabled, dropped_budget = texts.dropped_budget, expired = texts.expired, pending = sms.pending_len(), "SMS sink stopped");
    let _ = http_task.await;
    if let Some((_, https_task)) = https {
        let _ = https_task.await;
    }
    tracing::info!(
        shutdown_ms = stopping.elapsed().as_millis() as u64,
        "gaveurs stopped: everything accepted is durable and published"
    );
    consumers_result?;
    match failure {
        Some(reason) => Err(anyhow::anyhow!(reason)),
        None => Ok(()),
    }
}

/// SIGHUP: reads the configuration file again and applies the alert thresholds and the log
/// levels (a file with a mistake is refused with the reason, and what runs stays).
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    config_path: Option<PathBuf>,
    desk: Arc<AlertDesk>,
    anomaly_desk: Option<Arc<anomalies::desk::AnomalyDesk>>,
    ledger_desk: Option<Arc<ledger::desk::LedgerDesk>>,
    log_levels: crate::logs::Levels,
) {
    while hangups.recv().await.is_some() {
        let reloaded = Config::load(config_path.as_deref()).and_then(|config| {
            let rules = RuleSet::from_config(&config.alerts).map_err(|e| anyhow::anyhow!(e))?;
            Ok((rules, config.sms.min_severity()?, config.logs, config.ml))
        });
        match reloaded {
            Ok((rules, text_from, logs, ml)) => {
                if let Some(anomaly_desk) = &anomaly_desk {
                    anomaly_desk.reload(&ml, Path::new("."), "SIGHUP");
                }
                let count = rules.rules.len();
                if let Some(ledger_desk) = &ledger_desk {
                    ledger_desk.reload(rules.clone());
                }
                desk.reload(rules, text_from);
                tracing::info!(target: "alerts", rules = count, "SIGHUP: alert rules reloaded");
                match log_levels.reload(&logs) {
                    Ok(()) => {
                        tracing::info!(level = %logs.level, modules = ?logs.modules, "SIGHUP: log levels reloaded")
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "SIGHUP: log levels not reloaded")
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "SIGHUP: configuration not reloaded; the running rules and levels stay")
            }
        }
    }
}

/// The Kafka source's view of the log and the Parquet sink.
struct LogPublication {
    wal: Wal,
    control: Arc<RollControl>,
    root: PathBuf,
}

impl Publication for LogPublication {
    fn appended(&self) -> u64 {
        self.wal.last_appended()
    }

    fn published(&self) -> u64 {
        self.control.published()
    }

    fn publish_through(&self, position: u64, timeout: Duration) -> bool {
        self.control.publish_through(position, timeout)
    }

    fn published_offsets(&self) -> std::io::Result<parquet::manifest::KafkaOffsets> {
        parquet::manifest::published_offsets(&self.root)
    }
}

struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for SIGINT or SIGTERM (`None`), or for the durable log to fail (`Some(reason)`).
    async fn wait(mut self, wal: &Wal) -> Option<String> {
        tokio::select! {
            _ = self.term.recv() => None,
            _ = self.int.recv() => None,
            _ = wal.on_failure() => Some("the durable log failed; stopping so nothing is acknowledged that is not on disk".into()),
        }
    }
}

/// The two server configurations of `[tls]`'s certificate: HTTP offers `http/1.1` by ALPN.
struct TlsConfigs {
    mqtt: Arc<rustls::ServerConfig>,
    http: Arc<rustls::ServerConfig>,
}

/// The HTTPS server's peer, where the handlers look for it (`ConnectInfo<SocketAddr>`).
async fn tls_peer_as_connect_info(mut request: axum::extract::Request) -> axum::extract::Request {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<tls::TlsPeer>>()
        .map(|info| info.0.0);
    if let Some(peer) = peer {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
    }
    request
}
