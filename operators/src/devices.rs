//! Last status of each SQAL station, from heartbeats and status messages. Bounded: a status
//! larger than `max_status_bytes` is kept as its size only, a station not heard from for
//! `idle` is forgotten, and at most `max_devices` are kept (the longest silent go first), so
//! a producer inventing device ids cannot grow it without end.

use std::collections::BTreeMap;
use std::time::Duration;

use gaveurs_schemas::records::DeviceStatus;
use parking_lot::Mutex;

#[derive(Debug, Clone)]
pub struct DeviceLimits {
    pub max_devices: usize,
    pub idle: Duration,
    pub max_status_bytes: usize,
}

impl Default for DeviceLimits {
    fn default() -> Self {
        Self {
            max_devices: 10_000,
            idle: Duration::from_secs(7 * 24 * 3600),
            max_status_bytes: 16 * 1024,
        }
    }
}

#[derive(Default)]
pub struct DeviceRegistry {
    devices: Mutex<BTreeMap<String, DeviceStatus>>,
    limits: DeviceLimits,
}

impl DeviceRegistry {
    pub fn new(limits: DeviceLimits) -> Self {
        Self {
            devices: Mutex::new(BTreeMap::new()),
            limits,
        }
    }

    pub fn update(&self, mut status: DeviceStatus) {
        if status.device_id.is_empty() {
            return;
        }
        let size = status.status.to_string().len();
        if size > self.limits.max_status_bytes {
            status.status = serde_json::json!({ "truncated": true, "bytes": size });
        }
        let mut devices = self.devices.lock();
        if !devices.contains_key(&status.device_id) && devices.len() >= self.limits.max_devices {
            let idle =
                chrono::Duration::from_std(self.limits.idle).unwrap_or(chrono::Duration::MAX);
            let horizon = status.received_at - idle;
            devices.retain(|_, d| d.received_at >= horizon);
            if devices.len() >= self.limits.max_devices
                && let Some(oldest) = devices
                    .values()
                    .min_by_key(|d| d.received_at)
                    .map(|d| d.device_id.clone())
            {
                devices.remove(&oldest);
            }
        }
        devices.insert(status.device_id.clone(), status);
    }

    pub fn snapshot(&self) -> Vec<DeviceStatus> {
        self.devices.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.devices.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(device: &str, seconds_ago: i64, body: serde_json::Value) -> DeviceStatus {
        DeviceStatus {
            device_id: device.into(),
            received_at: chrono::Utc::now() - chrono::Duration::seconds(seconds_ago),
            status: body,
        }
    }

    #[test]
    fn invented_device_ids_cannot_grow_the_registry_past_its_limit() {
        let registry = DeviceRegistry::new(DeviceLimits {
            max_devices: 100,
            ..DeviceLimits::default()
        });
        for n in 0..1_000 {
            registry.update(status(
                &format!("ESP32_LL_{n}"),
                1_000 - n,
                serde_json::json!({}),
            ));
        }
        assert_eq!(registry.len(), 100);
        // The most recent ones are kept.
        assert!(
            registry
                .snapshot()
                .iter()
                .any(|d| d.device_id == "ESP32_LL_999")
        );
        assert!(
            !registry
                .snapshot()
                .iter()
                .any(|d| d.device_id == "ESP32_LL_0")
        );
    }

    #[test]
    fn a_huge_status_is_kept_as_its_size() {
        let registry = DeviceRegistry::new(DeviceLimits {
            max_status_bytes: 100,
            ..DeviceLimits::default()
        });
        registry.update(status(
            "ESP32_LL_01",
            0,
            serde_json::json!({"blob": "x".repeat(500)}),
        ));
        let kept = &registry.snapshot()[0];
        assert_eq!(kept.status["truncated"], true);
        assert!(kept.status["bytes"].as_u64().unwrap() > 500);
    }
}
