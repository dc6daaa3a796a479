//! The embedded MQTT listener against clients nobody here wrote: `mosquitto_pub` (QoS 1 over
//! MQTT 5 with the token as a user property, and over 3.1.1 with the token as the CONNECT
//! password) and the Eclipse paho client for Python. Each record must be acknowledged and
//! reach Parquet once; a record without a valid token must not.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::records::meal;
use support::*;

fn mosquitto_pub(gaveurs: &Gaveurs, version: &str, auth: &[&str], record: &Value) -> bool {
    let mqtt = gaveurs.mqtt();
    let topic = format!("gaveurs/LL/{}/gavage", record["gaveur_id"]);
    let status = Command::new("mosquitto_pub")
        .args(["-h", &mqtt.ip().to_string(), "-p", &mqtt.port().to_string()])
        .args(["-V", version, "-q", "1", "-i", &format!("pub-{version}")])
        .args(["-t", &topic, "-m", &record.to_string()])
        .args(auth)
        .status()
        .expect("mosquitto_pub runs (the test command installs mosquitto-clients)");
    status.success()
}

fn paho_publish(gaveurs: &Gaveurs, token: &str, record: &Value) -> String {
    let mqtt = gaveurs.mqtt();
    let script = r#"
import sys
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
host, port, token, topic, payload = sys.argv[1:6]
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-test", protocol=mqtt.MQTTv5)
acked = []
client.on_publish = lambda c, userdata, mid, reason, props: acked.append(str(reason))
client.connect(host, int(port))
client.loop_start()
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = ("authorization", "Bearer " + token)
info = client.publish(topic, payload, qos=1, properties=props)
info.wait_for_publish(timeout=10)
client.loop_stop()
client.disconnect()
print(acked[0] if acked else "no PUBACK")
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args([
            &mqtt.ip().to_string(),
            &mqtt.port().to_string(),
            token,
            &format!("gaveurs/LL/{}/gavage", record["gaveur_id"]),
            &record.to_string(),
        ])
        .output()
        .expect("python3 runs (the test command installs paho-mqtt)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn mosquitto_and_paho_clients_publish_at_qos_1_and_each_record_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "[storage]\nroll_interval_s = 1\n");
    let bearer = format!("Bearer {}", gaveurs.admin);
    let v5 = meal("LL26FC0001", 1, "LL", 1, "matin");
    assert!(mosquitto_pub(
        &gaveurs,
        "mqttv5",
        &["-D", "publish", "user-property", "authorization", &bearer],
        &v5,
    ));
    let v311 = meal("LL26FC0001", 1, "LL", 1, "soir");
    assert!(mosquitto_pub(
        &gaveurs,
        "mqttv311",
        &["-u", "gaveur", "-P", &gaveurs.admin],
        &v311,
    ));
    let paho = meal("LL26FC0001", 1, "LL", 2, "matin");
    assert_eq!(paho_publish(&gaveurs, &gaveurs.admin, &paho), "Success");
    // Refused: a 3.1.1 client whose password is not a token cannot even connect.
    let refused = meal("LL26FC0001", 1, "LL", 2, "soir");
    assert!(!mosquitto_pub(
        &gaveurs,
        "mqttv311",
        &["-u", "gaveur", "-P", "not-a-token"],
        &refused,
    ));

    let root = dir.path().join("data/parquet");
    let meals = eventually(Duration::from_secs(20), "three meals in Parquet", || {
        let rows = read_rows(&root, "gavage_meals");
        (rows.len() >= 3).then_some(rows)
    });
    gaveurs.stop_cleanly();
    let mut stored: Vec<(i64, String)> = meals
        .iter()
        .map(|r| {
            (
                r["jour"].as_i64().unwrap(),
                r["moment"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        [
            (1, "matin".to_string()),
            (1, "soir".to_string()),
            (2, "matin".to_string())
        ]
    );
    assert_eq!(read_rows(&root, "gavage_meals").len(), 3);
}
