pub mod health;
pub mod kafka;
pub mod mqtt_broker;
pub mod mqtt_embedded;
pub mod websocket;
