//! `gaveurs`: the realtime pipeline of a foie-gras production system.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gaveurs_pipeline::config::Config;
use gaveurs_pipeline::{run, telemetry};

/// Realtime pipeline for foie-gras production: MQTT in, durable log, Parquet out.
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
    /// Run the pipeline: embedded MQTT listener on 127.0.0.1:1883, HTTP on 127.0.0.1:8000.
    ///
    /// Records are acknowledged once fsynced to the durable log and published to Parquet
    /// under data/parquet/<dataset>/date=…/site=…/ at least every 30 s. SIGINT or SIGTERM
    /// stops intake, publishes everything accepted and exits 0.
    Run {
        /// TOML configuration file; every section is optional. Keys can be overridden from
        /// the environment as GAVEURS_<SECTION>__<KEY>.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file (and GAVEURS_… overrides) and exit non-zero if it is wrong.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => {
            telemetry::init_console_only();
            match Config::load(Some(&config)) {
                Ok(_) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            let loaded = match Config::load(config.as_deref()) {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let _logs = match telemetry::init(&loaded.logs) {
                Ok(guard) => guard,
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
            match runtime.block_on(run::run(loaded, config)) {
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
