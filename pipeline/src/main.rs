//! `gaveurs`: the realtime pipeline of a foie-gras production system.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use gaveurs_loadgen::replay;
use gaveurs_loadgen::simulate::{self, Destination, SimulateOptions};
use gaveurs_pipeline::config::Config;
use gaveurs_pipeline::{run, telemetry};
use gaveurs_query as query;

/// Realtime pipeline for foie-gras production: MQTT and WebSocket in, durable log, live
/// WebSocket channels and Parquet out, and SQL over that Parquet (`gaveurs query`).
///
/// Data and logs go under the working directory by default (`./data`, `./logs`).
#[derive(Parser)]
#[command(name = "gaveurs", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline: embedded MQTT listener on 127.0.0.1:1883, HTTP and WebSockets on
    /// 127.0.0.1:8000 (/ws/gavage, /ws/sensors/, /ws/gaveur/{id}, /ws/realtime/).
    ///
    /// Records are acknowledged once fsynced to the durable log, pushed live right after
    /// validation, and published to Parquet under data/parquet/<dataset>/date=…/site=…/ at
    /// least every 30 s. Parquet, analytics, alerts, anomaly scoring and the Kafka live topic each read the
    /// log through their own cursor at their own pace (lag: gaveurs_cursor_lag_* in
    /// /metrics), so a slow one never delays an acknowledgement. SIGINT or SIGTERM stops
    /// intake, lets them catch up, and exits 0 within 5 s. Memory is bounded (every limit is
    /// in deploy/gaveurs.example.toml). A damaged log stops start-up naming the file and
    /// offset: see `gaveurs log salvage`.
    ///
    /// Every accepted record also feeds the analytics operator (`[analytics]`): KPIs in
    /// event time, as SQL queries run by DataFusion over micro-batches — per meal, lot-day and
    /// lot (ITM once the lot's outcome is in), gaveur and site windows, SQAL quality — sent
    /// as `kpi` messages on each gaveur's channel and the dashboards, served at
    /// GET /api/v1/lots/{code_lot}, and written to the lot_kpis and late datasets.
    ///
    /// Every accepted record is evaluated by the alert rules (`[alerts]`): alerts open,
    /// update, are acknowledged and clear; each transition is an `alerte` message on the
    /// owner's channel, `alert` on the dashboards, a row of the alerts dataset, and listed at
    /// GET /api/v1/alerts. Critical openings are texted through Twilio (`[sms]`, credentials
    /// from TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_PHONE_NUMBER) from a durable
    /// outbox, never for replayed (backfill) records.
    ///
    /// Every gavage meal and SQAL sample is scored by an anomaly model (`[ml]`; both built
    /// into the binary, see `gaveurs model`): a record at or above its threshold is a row of
    /// the anomalies dataset, an `anomalie` message on the owner's channel and an `alert` with
    /// `alert_type: "anomalie"` on the dashboards. A model file is swapped when it changes or
    /// on SIGHUP.
    ///
    /// Lot events (lot started, each feeding day closed, lot finished with its ITM, each SQAL
    /// control) are chained into the signed traceability ledger under data/ledger/
    /// (`[ledger]`; checked by `gaveurs ledger verify`), continued across restarts.
    ///
    /// Logs: one file per module in ./logs (main, auth, audit, api, websocket, connectors,
    /// storage, alerts, ml, ledger) plus errors.log, renamed with the date at local midnight.
    /// GET /metrics (Prometheus), /health/live, /health/ready. SIGHUP reloads the alert
    /// thresholds, the anomaly model and the log levels.
    ///
    /// POST /api/v1/query answers read-only SQL over the Parquet datasets to superviseurs and
    /// admins (as `gaveurs query` does), at most 100 000 rows, each query within `[query]`:
    /// `memory_limit_mb` (default 256; more answers 413) and `timeout_s` (default 30; longer
    /// answers 503). A refused query is cancelled; the pipeline goes on.
    ///
    /// Every record and every channel needs a JWT. Without `[auth]` the pipeline runs in dev
    /// mode: it keeps a signing key in data/auth/, serves its JWKS at
    /// /realms/gaveurs-production/protocol/openid-connect/certs, and `gaveurs token` mints
    /// tokens for the demo users. `[auth] mode = "keycloak"` verifies Keycloak's tokens.
    ///
    /// The HTTP port also serves the web pages: / (a gaveur's lots, live) and /sites
    /// (superviseurs), signed in through the realm's gaveurs-web client (authorization code
    /// with PKCE) or, in dev mode on a loopback listener, a demo-user picker.
    ///
    /// With `[kafka]`, it also joins the consumer group and reads gaveurs.gavage.v1 and
    /// gaveurs.sqal.v1 (committing offsets only once published), writes refused records to
    /// gaveurs.dlq.v1, live records to gaveurs.live.v1, KPI rows to gaveurs.kpis.v1 and
    /// alert transitions to gaveurs.alerts.v1; replicas share one data dir.
    Run {
        /// TOML configuration file; every section is optional. Keys can be overridden from
        /// the environment as GAVEURS_<SECTION>__<KEY>.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also run the built-in simulator, so data flows: 6 lots of 3 gaveurs (4 meals/s)
        /// and 3 SQAL stations (one sample every 2 s). Without it, `run` never makes records.
        #[arg(long)]
        demo: bool,
    },
    /// Publish realistic records to a running pipeline: gavage lots meal by meal (two meals a
    /// day over 11–14 days, rising doses, weights, deaths, barn climate), their outcomes, and
    /// SQAL measurements in the stations' full V3 shape (50–140 KB).
    Simulate {
        /// MQTT endpoint to publish to.
        #[arg(long, default_value = "127.0.0.1:1883", conflicts_with = "ws")]
        mqtt: SocketAddr,
        /// Publish to the V3 WebSocket ingest of the pipeline at this HTTP address instead
        /// (`/ws/gavage`, `/ws/sensors/`).
        #[arg(long)]
        ws: Option<SocketAddr>,
        /// Lots fed at the same time.
        #[arg(long, default_value_t = 10)]
        lots: usize,
        /// Gaveurs owning those lots (gaveur 1 farms at LL, 2 at LS, 3 at MT, …).
        #[arg(long, default_value_t = 4)]
        gaveurs: usize,
        /// SQAL stations.
        #[arg(long, default_value_t = 3)]
        devices: usize,
        /// Gavage records per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// SQAL measurements per second.
        #[arg(long, default_value_t = 1.0)]
        sqal_rate: f64,
        /// Seconds to run; runs until interrupted when absent.
        #[arg(long)]
        duration: Option<u64>,
        /// Random seed, to replay the same data.
        #[arg(long)]
        seed: Option<u64>,
        /// Bearer token to publish with. Default: a dev-mode token for `--user`, minted with
        /// the key of the pipeline running in this working directory (see `--config`).
        #[arg(long, env = "GAVEURS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Demo user to mint a dev-mode token for, when no `--token` is given.
        #[arg(long, default_value = "admin@euralis.fr")]
        user: String,
        /// The pipeline's configuration (for dev-mode tokens: data dir, issuer, audience).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Replay past feeding data into a running pipeline: every meal of a meals file as a
    /// gavage record, then every lot of a lots file as a lot outcome, flagged `backfill` (they
    /// never trigger an SMS).
    ///
    /// Both files are CSV with a header row, gzip'd or not, in the layout of
    /// ../shared/data (columns are found by name; others are ignored). A meal's site, gaveur
    /// and strain (genetique) come from its lot; its timestamp is the site's local time on
    /// date_debut + (jour - 1) days, at 07:00 for `matin` and 17:00 for `soir`; the lot's
    /// last meal is `pret_abattage`. Fields the files lack (weights, live count, mortality,
    /// barn climate) are left out.
    ///
    /// Records go over MQTT 5 at QoS 1, as fast as acknowledgements allow unless --rate is
    /// given; outcomes go once every meal is acknowledged. Values are sent as they are: the
    /// pipeline refuses impossible ones (e.g. a negative dose), which are counted and listed
    /// on stderr with their reason; rows that make no record (a bad number, a meal of an
    /// unknown lot) are skipped and listed. Exits 0 once every record is acknowledged or
    /// refused, non-zero if the files cannot be read or the pipeline cannot be reached or
    /// drops the connection (replaying again is safe: stored records are duplicates).
    /// stdout gets one line: `replayed meals=… meals_accepted=… meals_refused=… outcomes=…
    /// outcomes_accepted=… outcomes_refused=… skipped=… elapsed_s=… records_per_s=…`.
    Replay {
        /// Meals: code_lot, jour, moment, dose_theorique_g, dose_reelle_g (repas unused).
        #[arg(long)]
        meals: PathBuf,
        /// Lots: code_lot, site, gaveur_id, date_debut, date_fin, nb_canards_mis_en_gavage,
        /// nb_canards_accroches, and if present souche, poids_foie_moyen_g.
        #[arg(long)]
        lots: PathBuf,
        /// Records per second; without it, as fast as acknowledgements allow (a window of up
        /// to 1024 unacknowledged records).
        #[arg(long, value_parser = positive_rate)]
        rate: Option<f64>,
        /// The pipeline's MQTT listener. Default: `[mqtt] listen` of --config, else
        /// 127.0.0.1:1883.
        #[arg(long)]
        mqtt: Option<SocketAddr>,
        /// Bearer token to publish with. Default: a dev-mode token for `--user`, minted with
        /// the key of the pipeline running in this working directory (see `--config`).
        #[arg(long, env = "GAVEURS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Demo user to mint a dev-mode token for, when no `--token` is given; it must be
        /// allowed to write every gaveur's records.
        #[arg(long, default_value = "admin@euralis.fr")]
        user: String,
        /// The pipeline's configuration (dev-mode tokens: data dir, issuer, audience; and
        /// the MQTT address).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print a dev-mode token for a demo user (run it in the working directory of
    /// `gaveurs run`, with the same --config). The token is the last word on stdout.
    ///
    /// Users: admin@euralis.fr (admin), superviseur@euralis.fr (superviseur),
    /// jean.martin@gaveur.fr (gaveur 1, site LL), sophie.dubois@gaveur.fr (gaveur 2, site LS),
    /// tech@sqal.fr (technicien_sqal), gateway-ll@sensors (client role gateway of sensors,
    /// site LL).
    Token {
        #[arg(long)]
        user: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Lifetime in seconds; default `[auth] dev_token_ttl_s` (12 h).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Check a configuration file (and GAVEURS_… overrides) and exit non-zero if it is wrong:
    /// every section, the KPI queries (planned), the alert rules, the anomaly model artifact
    /// (`[ml] meal_model`: readable, of this binary's format, numbers all finite, its version
    /// matching its contents) and the SMS phone directory.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Durable-log tools, for a stopped pipeline.
    Log {
        #[command(subcommand)]
        action: LogAction,
    },
    /// The traceability ledger (`data/ledger/`): a hash chain of lot events (lot started,
    /// each feeding day closed, lot finished with its ITM, each SQAL control, critical alerts
    /// opened and cleared), every entry linked to the previous one by its SHA-256 and signed
    /// with Ed25519. The pipeline writes it from its first start (`[ledger]`; keys in
    /// data/keys/ledger, mode 0600) and continues it across restarts: one chain `local`, or
    /// with Kafka one per input partition (`kafka_<topic>_p<n>`) and one per instance
    /// (`instance-<id>`). Run with the pipeline's --config, these commands also write to its
    /// logs/ledger.log.
    Ledger {
        #[command(subcommand)]
        action: LedgerAction,
    },
    /// Anomaly models: train them on recorded lots, and measure them on injected anomalies.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Run a read-only SQL query (DataFusion's dialect) over the published Parquet datasets
    /// and print only its result on stdout; errors go to stderr with a non-zero exit.
    ///
    /// Reads `<data_dir>/parquet` of the configuration (`./data/parquet` by default), so run
    /// it in the pipeline's working directory with the same --config; the pipeline may be
    /// running. Only published files are read (not the rows of the current roll).
    /// `--help` lists the tables and their columns.
    ///
    /// Limits (`[query]` of --config): a query may hold at most `memory_limit_mb` of memory
    /// (default 256 MiB; it never spills to disk) and run at most `timeout_s` seconds
    /// (default 30). Past either it is cancelled and the command exits non-zero, naming the
    /// limit.
    Query {
        /// The query, e.g. "SELECT code_lot, jour, moment FROM gavage_meals ORDER BY jour".
        /// SELECT, WITH, EXPLAIN, SHOW TABLES and SHOW COLUMNS; writes and DDL are refused.
        sql: String,
        /// table: aligned text; csv: a header row, then one line per row; json: one JSON
        /// array of row objects (nulls written as null); arrow: an Arrow IPC stream.
        #[arg(long, value_enum, default_value = "table")]
        format: query::Format,
        /// The pipeline's configuration, for `[storage] data_dir`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LogAction {
    /// Keep every readable entry of a damaged durable log (`gaveurs run` refuses to start
    /// on damage anywhere but the torn tail of the newest segment, and names the file and
    /// offset). Each unreadable range is moved to data/instances/<id>/wal/quarantine/ and
    /// written as a dlq row (stage `log`, reason `log_damaged`); the next `gaveurs run`
    /// publishes every other acknowledged record. Run it in the pipeline's working
    /// directory, with its --config, while the pipeline is stopped.
    Salvage {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LedgerAction {
    /// Check every chain of a data dir offline: each entry's hash, its link to the previous
    /// entry, its signature and the key rotations. Exits 0, or 1 naming the first bad entry
    /// (file, line, sequence number and what is wrong). The pipeline may be running.
    Verify {
        /// The configuration whose `[storage] data_dir` to read (default ./data).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A data dir to read instead.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Export a lot's certificate: its entries, the chain's keys (genesis and rotations) and
    /// the chain's head, each with its hash and signature, as one JSON document (canonical,
    /// one line) with a short `url` fit for a QR code. The chain is verified first.
    Certificate {
        /// The lot's code.
        #[arg(long)]
        lot: String,
        /// Write it here rather than to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Rotate a chain's signing key: a new key (mode 0600, in `[ledger] keys_dir`) and a
    /// `key_rotated` entry signed by the old one that introduces it; later entries are
    /// signed by the new key. While a pipeline holds the chain, the command asks it (a
    /// `rotate-<chain>.request` file in the keys folder) and waits up to 30 s for the entry.
    RotateKey {
        /// The chain (`local` without Kafka; `gaveurs ledger verify` lists them all).
        #[arg(long, default_value = "local")]
        chain: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Check a certificate offline, without the data dir: every entry's hash and signature,
    /// the keys (the genesis signs itself, each rotation is signed by the key before it), its
    /// url and its canonical form. Exits 1 naming what is wrong and where.
    VerifyCertificate {
        /// The certificate's file.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TrainedModel {
    Meal,
    Sqal,
    Outcome,
}

#[derive(Subcommand)]
enum ModelAction {
    /// Train an anomaly model and write its artifact (JSON; its `version` a digest of its
    /// contents). Deterministic: the same input and seed give the same bytes.
    ///
    /// `--model meal` (default): the gavage meal model, from recorded lots (features,
    /// per-step parameters and scales, threshold, training data hash, evaluation metrics);
    /// built in: `gaveurs model train --data ../shared/data --out
    /// operators/models/gavage_meal.json`.
    ///
    /// `--model sqal`: the SQAL model, on the simulator's stations (`gaveurs simulate`'s,
    /// seeded): summary features of the ToF matrices and AS7341 spectrum, a Gaussian mixture
    /// density and a per-station gain CUSUM; built in: `gaveurs model train --model sqal --out
    /// operators/models/sqal_sample.json`.
    ///
    /// `--model outcome`: the early lot outcome model (`itm_pred`, `poids_foie_pred` on a
    /// lot's KPI row), one linear model per feeding day from the lots' outcomes; built in:
    /// `gaveurs model train --model outcome --data ../shared/data --out
    /// operators/models/lot_outcome.json`.
    Train {
        #[arg(long, value_enum, default_value_t = TrainedModel::Meal)]
        model: TrainedModel,
        /// A folder with lots*.csv[.gz] and meals*.csv[.gz], as ../shared/data, or a
        /// pipeline's data dir (its Parquet gavage_meals and lot_outcomes), for the meal and
        /// outcome models.
        #[arg(long, required_if_eq_any = [("model", "meal"), ("model", "outcome")])]
        data: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Chooses the lots held out to set the threshold (the SQAL model: the simulator's
        /// seed).
        #[arg(long, default_value_t = 2023)]
        seed: u64,
    },
    /// Split the lots (by lot), train on one part, inject labelled anomalies into the other,
    /// and print per anomaly type the recall of the model, of the SPEC §5 rules alone and of
    /// both, the detection delay in meals, and the share of clean meals flagged; then the
    /// early lot outcome's error, and the SQAL model's recall of dead ToF zones and spectral
    /// gain drifts injected into simulated samples.
    Eval {
        /// As for `train`: CSV files or a pipeline's data dir.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 2023)]
        seed: u64,
        /// Instead of the report, write the acceptance replay's input into this folder: the
        /// model trained without the test lots, the test lots as CSV (one in three with an
        /// injected spike, drop, level shift or off-protocol plan) and their labels
        /// (scripts/check-anomaly-acceptance.sh replays them through a running pipeline).
        #[arg(long)]
        acceptance: Option<PathBuf>,
    },
}

// glibc's malloc took a fifth of the pipeline's CPU in the Kafka benchmark (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
/// `mi_option_purge_delay`: its place in mimalloc.h's `mi_option_e` (v3, which `mimalloc`
/// builds by default; Cargo.lock holds libmimalloc-sys 0.1.49). The Rust bindings do not
/// name it, so check the enum when upgrading.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

fn main() -> ExitCode {
    // mimalloc keeps freed pages for 10 ms (arenas 100 ms) before giving them back; under a
    // steady stream that kept ~40 % more memory resident than glibc. Giving them back at once
    // costs no measurable throughput. `MIMALLOC_PURGE_DELAY` (ms) in the environment wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    // `query --help` lists the tables, from the schemas the query catalog registers.
    let command = Cli::command().mut_subcommand("query", |query| {
        query
            .after_help("Tables: see `gaveurs query --help` for their columns.")
            .after_long_help(query::help_text())
    });
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Query {
            sql,
            format,
            config,
        } => {
            telemetry::init_console_only();
            let loaded = match Config::load(config.as_deref()) {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let root = loaded.parquet_root();
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            let stdout = std::io::BufWriter::new(std::io::stdout().lock());
            let outcome = runtime.block_on(query::run(
                &root,
                &sql,
                format,
                stdout,
                loaded.query.limits(),
            ));
            // A cancelled query's tasks stop at their next yield; the exit need not wait.
            runtime.shutdown_background();
            match outcome {
                Ok(_) => ExitCode::SUCCESS,
                // `gaveurs query … | head`: the reader had enough.
                Err(query::QueryError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Log {
            action: LogAction::Salvage { config },
        } => {
            telemetry::init_console_only();
            let salvaged = Config::load(config.as_deref()).and_then(|loaded| {
                gaveurs_pipeline::log_salvage::run(&loaded, &std::env::current_dir()?)
            });
            print_report(salvaged)
        }
        Command::Ledger { action } => {
            let data_dir = |config: Option<PathBuf>, data: Option<PathBuf>| match data {
                Some(data) => Ok(data),
                None => Config::load(config.as_deref()).map(|c| c.storage.data_dir),
            };
            match action {
                LedgerAction::Verify { config, data } => {
                    let _logs = ledger_logs(config.as_deref(), data.as_deref());
                    print_report(
                        data_dir(config, data).and_then(|d| gaveurs_pipeline::ledger::verify(&d)),
                    )
                }
                LedgerAction::Certificate {
                    lot,
                    out,
                    config,
                    data,
                } => {
                    let _logs = ledger_logs(config.as_deref(), data.as_deref());
                    print_report(data_dir(config, data).and_then(|d| {
                        gaveurs_pipeline::ledger::certificate(&d, &lot, out.as_deref())
                    }))
                }
                LedgerAction::RotateKey {
                    chain,
                    config,
                    data,
                } => {
                    let _logs = ledger_logs(config.as_deref(), data.as_deref());
                    let rotated = Config::load(config.as_deref()).and_then(|loaded| {
                        let data_dir = data.unwrap_or(loaded.storage.data_dir);
                        let keys_dir = loaded
                            .ledger
                            .keys_dir
                            .unwrap_or_else(|| data_dir.join("keys").join("ledger"));
                        gaveurs_pipeline::ledger::rotate_key(&data_dir, &keys_dir, &chain)
                    });
                    print_report(rotated)
                }
                LedgerAction::VerifyCertificate { file } => {
                    telemetry::init_console_only();
                    print_report(gaveurs_pipeline::ledger::verify_certificate(&file))
                }
            }
        }
        Command::Model { action } => {
            telemetry::init_console_only();
            let outcome = match action {
                ModelAction::Train {
                    model,
                    data,
                    out,
                    seed,
                } => match (model, data) {
                    (TrainedModel::Sqal, _) => gaveurs_pipeline::model::train_sqal(&out, seed),
                    (TrainedModel::Meal, Some(data)) => {
                        gaveurs_pipeline::model::train(&data, &out, seed)
                    }
                    (TrainedModel::Outcome, Some(data)) => {
                        gaveurs_pipeline::model::train_outcome(&data, &out)
                    }
                    (_, None) => Err(anyhow::anyhow!("--data is needed for this model")),
                },
                ModelAction::Eval {
                    data,
                    seed,
                    acceptance: None,
                } => gaveurs_pipeline::model::eval(&data, seed),
                ModelAction::Eval {
                    data,
                    seed,
                    acceptance: Some(out),
                } => gaveurs_pipeline::model::acceptance(&data, &out, seed),
            };
            print_report(outcome)
        }
        Command::Check { config } => {
            telemetry::init_console_only();
            let checked = Config::load(Some(&config)).and_then(|loaded| {
                check_kpi_queries(&loaded)?;
                if loaded.ml.enabled {
                    loaded.ml.models(std::path::Path::new("."))?;
                }
                loaded.sms.load_directory().map(|_| ())
            });
            match checked {
                Ok(()) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Simulate {
            mqtt,
            ws,
            lots,
            gaveurs,
            devices,
            rate,
            sqal_rate,
            duration,
            seed,
            token,
            user,
            config,
        } => {
            telemetry::init_console_only();
            let token = match token {
                Some(token) => token,
                None => match Config::load(config.as_deref())
                    .and_then(|c| gaveurs_pipeline::auth::mint_dev_token(&c, &user, None))
                {
                    Ok(token) => token,
                    Err(e) => {
                        eprintln!("error: no --token, and no dev-mode token for {user}: {e:#}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            let options = SimulateOptions {
                destination: match ws {
                    Some(http) => Destination::WebSocket(http),
                    None => Destination::Mqtt(mqtt),
                },
                lots,
                gaveurs,
                devices,
                rate,
                sqal_rate,
                duration: duration.map(std::time::Duration::from_secs),
                seed: seed.unwrap_or_else(rand::random),
                token: Some(token),
            };
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(async {
                let stop = tokio_util::sync::CancellationToken::new();
                let on_signal = stop.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    on_signal.cancel();
                });
                match simulate::run(options, stop).await {
                    Ok(counters) => {
                        println!("{}", counters.summary());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Replay {
            meals,
            lots,
            rate,
            mqtt,
            token,
            user,
            config,
        } => replay(meals, lots, rate, mqtt, token, user, config),
        Command::Token { user, config, ttl } => {
            telemetry::init_console_only();
            let minted = Config::load(config.as_deref()).and_then(|c| {
                gaveurs_pipeline::auth::mint_dev_token(
                    &c,
                    &user,
                    ttl.map(std::time::Duration::from_secs),
                )
            });
            match minted {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config, demo } => {
            let loaded = match Config::load(config.as_deref()) {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let (_logs, levels) = match gaveurs_pipeline::logs::init(&loaded.logs) {
                Ok(logs) => logs,
                Err(e) => {
                    eprintln!(
                        "error: cannot set up logs in {}: {e:#}",
                        loaded.logs.dir.display()
                    );
                    return ExitCode::FAILURE;
                }
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("gaveurs")
                .build()
                .expect("tokio runtime");
            match runtime.block_on(run::run(loaded, config, demo, levels)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("gaveurs failed: {e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Plans every KPI query (shipped and configured) against empty tables.
fn check_kpi_queries(config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let mut engine = gaveurs_operators::analytics::Engine::new(config.analytics.settings());
    runtime.block_on(engine.check_queries())?;
    Ok(())
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of records per second"
        )),
    }
}

fn replay(
    meals: PathBuf,
    lots: PathBuf,
    rate: Option<f64>,
    mqtt: Option<SocketAddr>,
    token: Option<String>,
    user: String,
    config: Option<PathBuf>,
) -> ExitCode {
    telemetry::init_console_only();
    let loaded = || Config::load(config.as_deref());
    let mqtt = match (mqtt, &config) {
        (Some(addr), _) => addr,
        (None, Some(_)) => match loaded() {
            Ok(c) => c
                .mqtt
                .embedded_listen()
                .filter(|a| a.port() != 0)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1883))),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 1883)),
    };
    let (token, renew) = match token {
        Some(token) => (token, None),
        None => {
            let minted = loaded().and_then(|c| {
                let token = gaveurs_pipeline::auth::mint_dev_token(&c, &user, None)?;
                // Minted again at half its lifetime, for slow replays.
                let every = std::time::Duration::from_millis(c.auth.dev_token_ttl_s * 500);
                let user = user.clone();
                let mint: replay::Mint =
                    Box::new(move || gaveurs_pipeline::auth::mint_dev_token(&c, &user, None));
                Ok((token, Some((every, mint))))
            });
            match minted {
                Ok(minted) => minted,
                Err(e) => {
                    eprintln!("error: no --token, and no dev-mode token for {user}: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let plan = match replay::plan(&meals, &lots) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "replay: {} meals and {} outcomes to publish to {mqtt} ({} CSV rows skipped)",
        plan.meals.len(),
        plan.outcomes.len(),
        plan.skipped.len()
    );
    let options = replay::ReplayOptions {
        mqtt,
        rate,
        token,
        renew,
        progress: true,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (summary, result) = runtime.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        replay::publish(plan, options, stop).await
    });
    eprint!("{}", summary.report());
    println!("{}", summary.line());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A command's report on standard output, or its error on standard error, as the exit code.
/// The ledger commands that read the pipeline's configuration write their lines to its
/// `ledger.log` too (verifications, exports, rotations); given only `--data`, they print.
fn ledger_logs(
    config: Option<&std::path::Path>,
    data: Option<&std::path::Path>,
) -> Option<gaveurs_pipeline::logs::LogGuard> {
    let logs = match (data, Config::load(config)) {
        (None, Ok(loaded)) => loaded.logs,
        _ => {
            telemetry::init_console_only();
            return None;
        }
    };
    let quiet = gaveurs_pipeline::logs::LogsConfig {
        console: false,
        ..logs
    };
    match gaveurs_pipeline::logs::init(&quiet) {
        Ok((guard, _)) => Some(guard),
        Err(e) => {
            telemetry::init_console_only();
            tracing::warn!(error = %format!("{e:#}"), "ledger.log not written");
            None
        }
    }
}

fn print_report(outcome: anyhow::Result<String>) -> ExitCode {
    match outcome {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
