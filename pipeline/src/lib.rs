//! The `gaveurs` binary's library: configuration, wiring of sources, operators and sinks,
//! the HTTP server, lifecycle, SQL over the Parquet datasets, the simulator and `gaveurs
//! replay`, and the MQTT producer used by them, the load tool and the tests.

pub mod auth;
pub mod config;
pub mod instance;
pub mod ledger;
pub mod live;
pub mod log_salvage;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod run;
pub mod telemetry;
pub mod topology;
