//! The data dir on a small filesystem (a tmpfs with a size; mounting it needs root, as CI
//! has) that fills up during a run: intake refuses what it cannot keep (MQTT 5 0x97), readiness
//! says why, what was taken before is not lost (the Parquet sink waits for space too), and
//! intake resumes by itself once there is space again.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gaveurs_loadgen::producer::{MqttVersion, ServerPacket, connect};
use support::{Gaveurs, http_get, read_rows, records};

/// A size-limited tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size_mb: u64) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a {size_mb} MB tmpfs at {} failed: this test needs root (CI runs as root)",
            at.display()
        );
        SmallDisk(at.to_path_buf())
    }

    /// Writes a file until the filesystem refuses more.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = file.write_all(&chunk) {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                return path;
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn meal(n: usize) -> (String, Vec<u8>) {
    let payload = records::meal(&format!("LLFULL{n:03}"), 1, "LL", 1, "matin");
    (
        "gaveurs/LL/1/gavage".into(),
        payload.to_string().into_bytes(),
    )
}

/// Publishes one meal on its own connection: the PUBACK's reason code and reason string.
async fn publish_one(addr: SocketAddr, token: &str, n: usize) -> (u8, Option<String>) {
    let (mut writer, mut reader) = connect(addr, MqttVersion::V5, &format!("full-{n}"), None)
        .await
        .unwrap();
    let (topic, payload) = meal(n);
    writer
        .publish(&topic, payload.into(), 1, 1, Some(token))
        .unwrap();
    writer.flush().await.unwrap();
    match reader.next_with_reason().await.unwrap() {
        (ServerPacket::Ack { pkid: 1, reason }, text) => (reason, text),
        other => panic!("unexpected {other:?}"),
    }
}

async fn readiness(gaveurs: &Gaveurs) -> (u16, String) {
    http_get(gaveurs.http, "/health/ready").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_disk_refuses_input_then_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = SmallDisk::mount(&data, 64);
    let gaveurs = Gaveurs::start(
        dir.path(),
        &format!(
            "[storage]\ndata_dir = \"{}\"\nroll_interval_s = 3\n",
            data.display()
        ),
    );
    support::wait_ready(gaveurs.http).await;
    let (addr, token) = (gaveurs.mqtt(), gaveurs.admin.clone());
    for n in 0..5 {
        assert_eq!(publish_one(addr, &token, n).await.0, 0);
    }

    let filler = disk.fill();
    // Records keep coming; the first one the log cannot write waits, unanswered, for space
    // (those before it may still fit in the file's last page).
    let mut acknowledged: Vec<usize> = (0..5).collect();
    let mut n = 5;
    let (waiting_n, waiting) = loop {
        let mut publish = tokio::spawn({
            let token = token.clone();
            async move { publish_one(addr, &token, n).await }
        });
        let full = loop {
            tokio::select! {
                answered = &mut publish => {
                    assert_eq!(answered.unwrap().0, 0);
                    break false;
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if readiness(&gaveurs).await.0 == 503 {
                        break true;
                    }
                }
            }
        };
        if full {
            break (n, publish);
        }
        acknowledged.push(n);
        n += 1;
    };
    let not_ready = readiness(&gaveurs).await;
    assert_eq!(not_ready.0, 503);
    assert!(not_ready.1.contains("disk is full"), "{}", not_ready.1);
    // Anything new is refused at once, with the reason.
    let (code, reason) = publish_one(addr, &token, 900).await;
    assert_eq!(code, 0x97, "quota exceeded");
    assert!(reason.unwrap_or_default().contains("disk is full"));
    assert!(
        !waiting.is_finished(),
        "the waiting record was answered while the disk was full"
    );

    // The Parquet sink meets the full disk too (its first roll is due after the fill): it
    // keeps the entries in the log and tries again.
    let storage_log = dir.path().join("logs/storage.log");
    support::eventually(
        Duration::from_secs(30),
        "the parquet sink to meet the full disk",
        || {
            let log = std::fs::read_to_string(&storage_log).unwrap_or_default();
            Some(()).filter(|_| log.contains("parquet files not written: the data disk is full"))
        },
    );
    // Space again: the waiting record is written and acknowledged, and intake resumes.
    std::fs::remove_file(filler).unwrap();
    assert_eq!(waiting.await.unwrap().0, 0);
    acknowledged.push(waiting_n);
    support::wait_ready(gaveurs.http).await;
    assert_eq!(publish_one(addr, &token, 901).await.0, 0);
    acknowledged.push(901);

    let root = gaveurs.parquet_root();
    let lots = || -> Vec<String> {
        let mut lots: Vec<String> = read_rows(&root, "gavage_meals")
            .iter()
            .map(|r| r["code_lot"].as_str().unwrap().to_string())
            .collect();
        lots.sort();
        lots
    };
    support::eventually(
        Duration::from_secs(30),
        "every acknowledged meal stored",
        || Some(()).filter(|_| lots().len() >= acknowledged.len()),
    );
    gaveurs.stop_cleanly();
    let expected: Vec<String> = acknowledged
        .iter()
        .map(|n| format!("LLFULL{n:03}"))
        .collect();
    assert_eq!(
        lots(),
        expected,
        "the refused one (900) is not stored, nothing else is lost"
    );
    let errors = std::fs::read_to_string(dir.path().join("logs/storage.log")).unwrap();
    assert!(errors.contains("the data disk is full"), "{errors}");
    assert!(errors.contains("has space again"), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_logs_dir_drops_lines_and_never_stops_intake() {
    let dir = tempfile::tempdir().unwrap();
    let logs = SmallDisk::mount(&dir.path().join("logs"), 1);
    let gaveurs = Gaveurs::start(dir.path(), "[logs]\nlevel = \"debug\"\n");
    support::wait_ready(gaveurs.http).await;
    let filler = logs.fill();
    // Every record is taken as usual while its log lines have nowhere to go.
    let (addr, token) = (gaveurs.mqtt(), gaveurs.admin.clone());
    for n in 0..20 {
        assert_eq!(publish_one(addr, &token, n).await.0, 0);
    }
    assert_eq!(readiness(&gaveurs).await.0, 200);
    // Counted, then scraped: a few lines were surely dropped by now, but the counter is read
    // until it shows them rather than at one instant.
    let mut dropped = 0.0;
    for _ in 0..100 {
        let (_, metrics) = http_get(gaveurs.http, "/metrics").await;
        dropped = metrics
            .lines()
            .find(|l| l.starts_with("gaveurs_log_lines_dropped_total"))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0.0);
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::remove_file(filler).unwrap();
    gaveurs.stop_cleanly();
    assert!(dropped > 0.0);
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let reports = stderr.matches("log lines are dropped").count();
    assert_eq!(
        reports, 1,
        "one line on standard error, not one per line:\n{stderr}"
    );
}
