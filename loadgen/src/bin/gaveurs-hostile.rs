//! `gaveurs-hostile`: misbehaving clients in a process of their own, so that a benchmark can
//! measure what they cost the well-behaved ones without sharing the load tool's runtime.
//! Opens a channel socket it never reads, idle MQTT connections (no CONNECT) and idle channel
//! sockets, prints `hostile ready` on stdout, then every second until `--duration` ends: a
//! 100 MB MQTT PUBLISH, a 100 MB channel message and a 100 MB ingest message, a burst of MQTT
//! sessions opened and dropped, and a flood of CONNECTs with a bad password. Prints one JSON
//! line of what the pipeline answered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use gaveurs_loadgen::hostile;

#[derive(Parser)]
#[command(name = "gaveurs-hostile", version)]
struct Args {
    /// MQTT endpoint (the embedded listener).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// The pipeline's HTTP address, for the WebSocket clients.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Seconds of hostile rounds after the idle connections are open.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Idle connections of each kind (MQTT without CONNECT, channel sockets).
    #[arg(long, default_value_t = 500)]
    idle: usize,
    /// MQTT sessions opened and dropped per round.
    #[arg(long, default_value_t = 50)]
    churn: usize,
    /// Bad-password CONNECTs per round, sent at once.
    #[arg(long, default_value_t = 30)]
    flood: usize,
    /// A valid token (for the sockets and the churning sessions), e.g. `$(gaveurs token --user
    /// admin@euralis.fr)`.
    #[arg(long, env = "GAVEURS_TOKEN", hide_env_values = true)]
    token: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deaf = hostile::open_socket(args.http, "/ws/gaveur/1", &args.token).await?;
    let idle_mqtt = hostile::idle_mqtt(args.mqtt, args.idle).await?;
    let idle_ws = hostile::idle_channels(args.http, &args.token, args.idle).await?;
    println!("hostile ready");

    let stop_at = Instant::now() + Duration::from_secs(args.duration);
    let mut rounds = 0;
    let mut huge_mqtt_max_taken = 0;
    let mut socket_ends: BTreeMap<String, usize> = BTreeMap::new();
    let mut connack_codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < stop_at {
        tick.tick().await;
        let tag = format!("r{rounds}");
        let huge_id = format!("huge-{tag}");
        let (taken, channel_end, ingest_end, (), codes) = tokio::join!(
            hostile::huge_mqtt_publish(args.mqtt, &huge_id, &args.token),
            hostile::huge_socket_message(args.http, "/ws/gaveur/1", &args.token),
            hostile::huge_socket_message(args.http, "/ws/gavage", &args.token),
            hostile::churn(args.mqtt, &args.token, &tag, args.churn),
            hostile::connect_flood(args.mqtt, &tag, args.flood),
        );
        huge_mqtt_max_taken = huge_mqtt_max_taken.max(taken);
        *socket_ends
            .entry(format!("channel {channel_end}"))
            .or_default() += 1;
        *socket_ends
            .entry(format!("ingest {ingest_end}"))
            .or_default() += 1;
        for code in codes {
            let code = code.map_or("none".into(), |c| c.to_string());
            *connack_codes.entry(code).or_default() += 1;
        }
        rounds += 1;
    }
    drop((deaf, idle_mqtt, idle_ws));
    println!(
        "{}",
        serde_json::json!({
            "rounds": rounds,
            "huge_mqtt_max_taken": huge_mqtt_max_taken,
            "socket_ends": socket_ends,
            "flood_connack_codes": connack_codes,
        })
    );
    Ok(())
}
