//! Sources: where records enter the pipeline.
//!
//! A source turns a transport's messages into [`intake::RawInput`]s, hands them to an
//! [`intake::Intake`] (which the pipeline provides: validation, auth, the durable log) and
//! answers the producer with the verdict once the intake says the input is durable. Sources
//! know nothing of records beyond their topic conventions; the intake knows nothing of
//! transports.
//!
//! - [`sources::mqtt_embedded`]: the pipeline's own MQTT 3.1.1/5 listener.
//! - [`sources::mqtt_broker`]: a subscription to an external broker (Mosquitto, EMQX…).
//! - [`sources::websocket`]: the V3-compatible WebSocket ingest (`/ws/gavage`, `/ws/sensors/`).

pub mod intake;
pub mod sources;
pub mod tls;
pub mod topics;
