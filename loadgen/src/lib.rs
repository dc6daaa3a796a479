//! The operator tools that produce traffic for the pipeline: the simulator (`gaveurs simulate`,
//! `gaveurs run --demo`), the replay of recorded lots (`gaveurs replay`), the MQTT producer they
//! share with the tests, the load binaries `gaveurs-load` (MQTT, WebSocket) and
//! `gaveurs-kafka-load` (Kafka), and the misbehaving clients of `gaveurs-hostile`. Nothing here runs inside the pipeline's own process path.

pub mod hostile;
pub mod memory;
pub mod producer;
pub mod replay;
pub mod simulate;
