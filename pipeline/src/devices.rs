//! Last status of each SQAL station, from heartbeats and status messages.

use std::collections::BTreeMap;

use gaveurs_schemas::records::DeviceStatus;
use parking_lot::Mutex;

#[derive(Default)]
pub struct DeviceRegistry {
    devices: Mutex<BTreeMap<String, DeviceStatus>>,
}

impl DeviceRegistry {
    pub fn update(&self, status: DeviceStatus) {
        if status.device_id.is_empty() {
            return;
        }
        self.devices.lock().insert(status.device_id.clone(), status);
    }

    pub fn snapshot(&self) -> Vec<DeviceStatus> {
        self.devices.lock().values().cloned().collect()
    }
}
