//! Whether each source that depends on a broker is connected, for `/health/ready`.
//!
//! A source registers once and then says when it goes up or down; readiness names the first
//! source that is down and why, so an operator can tell "Mosquitto is gone" from "Kafka is".

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// The sources' connection states; cheap to clone, shared by the sources and the HTTP server.
#[derive(Clone, Default)]
pub struct SourceHealth {
    /// Source name → `None` when connected, or why it is not.
    states: Arc<Mutex<BTreeMap<String, Option<String>>>>,
}

impl SourceHealth {
    /// Registers `name`, down until it says otherwise: a source is not ready before it has
    /// connected once.
    pub fn register(&self, name: impl Into<String>) -> SourceFlag {
        let name = name.into();
        self.states
            .lock()
            .insert(name.clone(), Some("not connected yet".into()));
        SourceFlag {
            health: self.clone(),
            name,
        }
    }

    /// The first source that is down, with its reason; `None` when every source is up.
    pub fn problem(&self) -> Option<String> {
        self.states
            .lock()
            .iter()
            .find_map(|(name, down)| down.as_ref().map(|why| format!("{name}: {why}")))
    }
}

/// One source's entry in [`SourceHealth`].
pub struct SourceFlag {
    health: SourceHealth,
    name: String,
}

impl SourceFlag {
    pub fn up(&self) {
        self.set(None);
    }

    pub fn down(&self, why: impl Into<String>) {
        self.set(Some(why.into()));
    }

    pub fn is_up(&self) -> bool {
        self.health
            .states
            .lock()
            .get(&self.name)
            .is_some_and(Option::is_none)
    }

    fn set(&self, state: Option<String>) {
        self.health.states.lock().insert(self.name.clone(), state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_registered_source_is_up() {
        let health = SourceHealth::default();
        assert_eq!(health.problem(), None);
        let mqtt = health.register("MQTT broker 127.0.0.1:1883");
        let kafka = health.register("Kafka 127.0.0.1:9092");
        assert!(health.problem().unwrap().contains("not connected yet"));
        mqtt.up();
        kafka.up();
        assert_eq!(health.problem(), None);
        kafka.down("no broker reachable");
        assert_eq!(
            health.problem().as_deref(),
            Some("Kafka 127.0.0.1:9092: no broker reachable")
        );
        assert!(mqtt.is_up() && !kafka.is_up());
    }
}
