//! The `gaveurs` binary's library: configuration, wiring of sources, operators and sinks,
//! the HTTP server, lifecycle, SQL over the Parquet datasets, the simulator and `gaveurs
//! replay`, and the MQTT producer used by them, the load tool and the tests.

pub mod alerts;
pub mod analytics;
pub mod auth;
pub mod config;
pub mod devices;
pub mod http;
pub mod instance;
pub mod intake;
pub mod live;
pub mod log_salvage;
pub mod logs;
pub mod metrics;
pub mod producer;
pub mod query;
pub mod recovery;
pub mod replay;
pub mod run;
pub mod simulate;
pub mod telemetry;
pub mod topology;
