//! MQTT over TLS and HTTPS/WSS (`[tls]`), against a certificate authority made for the test:
//! `mosquitto_pub --cafile` publishes a meal over TLS, a WSS client receives its push, `curl
//! --cacert` reads the health endpoint. A client that does not trust the authority, or that
//! speaks plain MQTT to the TLS port, gets nothing through. The plain listeners keep working.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use support::records::meal;
use support::*;

struct TestAuthority {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1.
fn make_authority(dir: &Path) -> TestAuthority {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ca.key",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-days",
            "2",
            "-subj",
            "/CN=gaveurs test CA",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "server.key",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "server.key",
            "-subj",
            "/CN=localhost",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    TestAuthority {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    }
}

fn start_with_tls(dir: &Path, authority: &TestAuthority) -> Gaveurs {
    Gaveurs::start(
        dir,
        &format!(
            "[mqtt]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\n[http]\ntls_listen = \"127.0.0.1:0\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            authority.server_cert.display(),
            authority.server_key.display()
        ),
    )
}

/// `mosquitto_pub` at QoS 1 over MQTT 5 with the token as a user property; its exit status
/// says whether the PUBACK was a success.
fn mosquitto_pub(port: u16, tls: &[&str], token: &str, record: &Value) -> bool {
    let topic = format!("gaveurs/LL/{}/gavage", record["gaveur_id"]);
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "-V",
            "mqttv5",
            "-q",
            "1",
        ])
        .args(tls)
        .args(["-t", &topic, "-m", &record.to_string()])
        .args([
            "-D",
            "publish",
            "user-property",
            "authorization",
            &format!("Bearer {token}"),
        ])
        .status()
        .expect("mosquitto_pub runs (the test command installs mosquitto-clients)")
        .success()
}

fn curl(args: &[&str]) -> (bool, String) {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

async fn wss_connect(https: u16, path: &str, token: &str, ca: &Path) -> Ws {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://localhost:{https}{path}?token={token}"),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(client))),
    )
    .await
    .unwrap_or_else(|e| panic!("connect wss {path}: {e}"));
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_and_wss_carry_a_meal_from_a_station_to_its_gaveur() {
    let dir = tempfile::tempdir().unwrap();
    let authority = make_authority(dir.path());
    let gaveurs = start_with_tls(dir.path(), &authority);
    let mqtts = gaveurs
        .mqtts
        .expect("the ready line names the MQTT over TLS port")
        .port();
    let https = gaveurs
        .https
        .expect("the ready line names the HTTPS port")
        .port();
    let ca = authority.ca.to_str().unwrap();

    let mut jean = wss_connect(https, "/ws/gaveur/1", &gaveurs.admin, &authority.ca).await;
    let over_tls = meal("LL2601001", 1, "LL", 3, "matin");
    assert!(
        mosquitto_pub(mqtts, &["--cafile", ca], &gaveurs.admin, &over_tls),
        "mosquitto_pub over TLS with the test CA gets a successful PUBACK"
    );
    let pushed = next_json(&mut jean).await;
    assert_eq!(pushed["type"], "gavage");
    assert_eq!(pushed["data"]["code_lot"], "LL2601001");
    assert_eq!(pushed["data"]["jour"], 3);

    // Nothing gets through without trusting the authority, or without TLS at all.
    let untrusted = meal("LL2601001", 1, "LL", 3, "soir");
    let empty_store = dir.path().join("empty-ca");
    std::fs::create_dir(&empty_store).unwrap();
    assert!(!mosquitto_pub(
        mqtts,
        &["--capath", empty_store.to_str().unwrap()],
        &gaveurs.admin,
        &untrusted
    ));
    assert!(!mosquitto_pub(mqtts, &[], &gaveurs.admin, &untrusted));

    // The plain listener stays, for loopback.
    let plain = meal("LL2601001", 1, "LL", 4, "matin");
    assert!(mosquitto_pub(
        gaveurs.mqtt().port(),
        &[],
        &gaveurs.admin,
        &plain
    ));
    let pushed = next_json(&mut jean).await;
    assert_eq!(
        pushed["data"]["jour"], 4,
        "the untrusted meal never arrived"
    );

    let https_url = format!("https://localhost:{https}/health/ready");
    let (ok, body) = curl(&["--cacert", ca, &https_url]);
    assert!(ok, "HTTPS with the test CA: {body}");
    let (ok, body) = curl(&[
        "--cacert",
        ca,
        "--write-out",
        " %{http_code}",
        &format!("https://localhost:{https}/api/v1/alerts"),
    ]);
    assert!(
        ok && body.ends_with(" 401"),
        "the API over HTTPS still asks for a token: {body}"
    );
    let (ok, body) = curl(&[&https_url]);
    assert!(!ok, "curl without the CA refuses the certificate: {body}");
    let (ok, body) = curl(&[&format!("http://localhost:{https}/health/ready")]);
    assert!(
        !ok || !body.contains("ready"),
        "plain HTTP to the HTTPS port is not served: {body}"
    );

    gaveurs.stop_cleanly();
    let root = dir.path().join("data/parquet");
    let mut days: Vec<(i64, String)> = read_rows(&root, "gavage_meals")
        .iter()
        .map(|r| {
            (
                r["jour"].as_i64().unwrap(),
                r["moment"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    days.sort();
    assert_eq!(days, [(3, "matin".to_string()), (4, "matin".to_string())]);
}

#[test]
fn a_key_that_does_not_fit_its_certificate_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let authority = make_authority(dir.path());
    let config = dir.path().join("gaveurs.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            base_config(dir.path()).replace("[http]\n", "[http]\ntls_listen = \"127.0.0.1:0\"\n"),
            authority.server_cert.display(),
            dir.path().join("ca.key").display()
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_gaveurs"))
        .args(["run", "--config", config.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not fit its certificate chain"),
        "stderr: {stderr}"
    );
}
