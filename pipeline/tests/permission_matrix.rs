//! The permission matrix of SPEC §6, end to end: every HTTP endpoint and WebSocket channel of
//! the real binary, called by every demo principal (and by no one), against what SPEC says.
//!
//! One row per (method, endpoint or channel); one cell per principal:
//! - `Y` allowed: HTTP anything but 401/403 (200, 404, 400… all mean "got past
//!   authorization"), WebSocket the socket opens (for the ingest sockets too: whether a record
//!   is accepted is tested in auth.rs);
//! - `.` forbidden: HTTP 403, WebSocket close 4403;
//! - `U` unauthenticated: HTTP 401, WebSocket close 4401.
//!
//! The expectations come from SPEC §6 (its table, "everything else is denied") and §3/§5
//! where they name who may use a channel or acknowledge an alert — not from the code. Where
//! SPEC does not say which resource an endpoint belongs to, the row follows the intent the
//! code documents in its comments, and says so. Every cell is checked and every mismatch is
//! listed in one failure message, with the whole table as the pipeline answered it.

mod support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use gaveurs_loadgen::producer::MqttVersion;
use serde_json::{Value, json};
use support::{Gaveurs, http_get, http_get_as, publish_each, records};
use tokio_tungstenite::tungstenite::{self, Message};

/// Rolls files and computes KPIs quickly, so the lot is visible over HTTP within seconds.
const FAST: &str = "[storage]\nroll_interval_s = 1\n[analytics]\nbatch_interval_ms = 50\n";

/// The lot of gaveur 1 at LL the lot rows read; its one meal opens `refus_alimentaire`.
const LOT: &str = "LL2609001";
/// The SQAL station whose sample opens `quality_critical` (a station alert, no gaveur).
const DEVICE: &str = "ESP32_LL_09";

#[derive(Clone, Copy)]
enum Who {
    NoToken,
    /// A dev-mode token of this demo user (`operators/src/auth/dev.rs`).
    Demo(&'static str),
    Garbage,
}

/// The columns of the table, in order: who calls.
const PRINCIPALS: [(&str, Who); 8] = [
    ("no token", Who::NoToken),
    ("admin", Who::Demo("admin@euralis.fr")),
    ("superviseur", Who::Demo("superviseur@euralis.fr")),
    ("jean (gaveur 1 LL)", Who::Demo("jean.martin@gaveur.fr")),
    ("sophie (gaveur 2 LS)", Who::Demo("sophie.dubois@gaveur.fr")),
    ("technicien_sqal", Who::Demo("tech@sqal.fr")),
    ("gateway of LL (sensors)", Who::Demo("gateway-ll@sensors")),
    ("garbage token", Who::Garbage),
];

/// A token no verifier accepts (three base64 parts, no valid signature).
const GARBAGE: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJub2JvZHkifQ.c2lnbmF0dXJl";

#[derive(Clone, Debug)]
enum Call {
    Get(String),
    Post(String, Value),
    Ws(String),
}

impl Call {
    fn label(&self) -> String {
        match self {
            Call::Get(path) => format!("GET  {path}"),
            Call::Post(path, _) => format!("POST {path}"),
            Call::Ws(path) => format!("WS   {path}"),
        }
    }
}

struct Row {
    call: Call,
    /// How the table shows the call, when its path does not say enough (or has a generated id).
    label: Option<&'static str>,
    /// One cell per principal, in `PRINCIPALS` order; spaces are ignored.
    expected: &'static str,
    /// Where the expectation comes from.
    why: &'static str,
}

fn row(call: Call, expected: &'static str, why: &'static str) -> Row {
    Row {
        call,
        label: None,
        expected,
        why,
    }
}

impl Row {
    fn labelled(self, label: &'static str) -> Row {
        Row {
            label: Some(label),
            ..self
        }
    }

    fn label(&self) -> String {
        self.label
            .map(str::to_string)
            .unwrap_or_else(|| self.call.label())
    }
}

/// What one cell came to.
#[derive(Clone, Debug)]
enum Outcome {
    Status(u16),
    /// The socket opened and stayed open (it sent `what`, or nothing and answered nothing).
    Open(String),
    Closed(u16, String),
    /// The upgrade was answered with a plain HTTP response.
    Refused(u16),
    Broken(String),
}

impl Outcome {
    /// `Y`, `.`, `U`, or `?` for anything the matrix has no column for.
    fn cell(&self, websocket: bool) -> char {
        match (self, websocket) {
            (Outcome::Status(401), false) | (Outcome::Closed(4401, _), true) => 'U',
            (Outcome::Status(403), false) | (Outcome::Closed(4403, _), true) => '.',
            (Outcome::Status(_), false) | (Outcome::Open(_), true) => 'Y',
            _ => '?',
        }
    }

    fn describe(&self) -> String {
        match self {
            Outcome::Status(status) => format!("HTTP {status}"),
            Outcome::Open(what) => format!("socket open ({what})"),
            Outcome::Closed(code, reason) => format!("close {code} {reason:?}"),
            Outcome::Refused(status) => format!("upgrade refused with HTTP {status}"),
            Outcome::Broken(why) => why.clone(),
        }
    }
}

fn expectation(cell: char, websocket: bool) -> &'static str {
    match (cell, websocket) {
        ('Y', false) => "allowed (not 401/403)",
        ('Y', true) => "allowed (socket opens)",
        ('.', false) => "403",
        ('.', true) => "close 4403",
        ('U', false) => "401",
        ('U', true) => "close 4401",
        _ => "?",
    }
}

fn table(alert_of_jean: &str, station_alert: &str) -> Vec<Row> {
    use Call::*;
    let get = |path: &str| Get(path.to_string());
    let post = |path: String, body: Value| Post(path, body);
    let ws = |path: &str| Ws(path.to_string());
    let sql = |sql: &str| json!({ "sql": sql });
    // Cells, in `PRINCIPALS` order: no token, admin, superviseur, jean (gaveur 1 at LL),
    // sophie (gaveur 2 at LS), technicien_sqal, gateway of LL, garbage token.
    vec![
        row(
            get("/health/live"),
            "Y Y Y Y Y Y Y Y",
            "operations probe (SPEC §9), no data: public",
        ),
        row(
            get("/health/ready"),
            "Y Y Y Y Y Y Y Y",
            "operations probe (SPEC §9), no data: public",
        ),
        row(
            get("/metrics"),
            "Y Y Y Y Y Y Y Y",
            "Prometheus scrape (SPEC §9): public as the code serves it",
        ),
        row(
            get("/realms/gaveurs-production/protocol/openid-connect/certs"),
            "Y Y Y Y Y Y Y Y",
            "dev-mode JWKS at the Keycloak path (SPEC §6 zero-setup): public, as Keycloak's",
        ),
        row(
            get("/"),
            "Y Y Y Y Y Y Y Y",
            "web page shell (SPEC §3), no data; its script signs in: public",
        ),
        row(
            get("/sites"),
            "Y Y Y Y Y Y Y Y",
            "web page shell (SPEC §3), no data; its script signs in: public",
        ),
        row(
            get("/auth/config"),
            "Y Y Y Y Y Y Y Y",
            "how the page signs in: public",
        ),
        row(
            get("/auth/dev/users"),
            "Y Y Y Y Y Y Y Y",
            "dev-mode demo-user picker on loopback (SPEC §3): public by design",
        ),
        row(
            get("/api/v1/devices"),
            "U Y Y . . Y . U",
            "SPEC silent; code: sqal_data read ('Station status, for superviseurs and SQAL technicians')",
        ),
        row(
            get("/api/v1/lots?gaveur_id=1"),
            "U Y Y Y . . . U",
            "gavage_data read of gaveur 1 (own gaveur_id only, superviseur)",
        ),
        row(
            get("/api/v1/lots?gaveur_id=2"),
            "U Y Y . Y . . U",
            "gavage_data read of gaveur 2",
        ),
        row(
            Get(format!("/api/v1/lots/{LOT}")),
            "U Y Y Y . . . U",
            "gavage_data read of the lot's gaveur (1)",
        ),
        row(
            Get(format!("/api/v1/lots/{LOT}/meals")),
            "U Y Y Y . . . U",
            "gavage_data read of the lot's gaveur (1)",
        ),
        row(
            get("/api/v1/lots/LL0000000"),
            "U Y Y Y Y . . U",
            "an unknown lot: 404 for who may read some gavage data, else refused as any lot \
             (code's rule, so no one learns which lots exist)",
        ),
        row(
            get("/api/v1/alerts"),
            "U Y Y Y Y Y . U",
            "alerts are gavage (lot) or sqal (station) data, listed as each may read them; \
             the gateway may read neither (§6: write only; everything else is denied)",
        ),
        row(
            get("/api/v1/alerts?state=open"),
            "U Y Y Y Y Y . U",
            "as above (SPEC §3 names this query)",
        ),
        row(
            post(format!("/api/v1/alerts/{alert_of_jean}/ack"), Value::Null),
            "U Y Y Y . . . U",
            "an alert of gaveur 1's lot: acknowledged by its gaveur or a superviseur (SPEC §5)",
        )
        .labelled("POST /api/v1/alerts/{id}/ack (id: refus_alimentaire of gaveur 1's lot)"),
        row(
            post(format!("/api/v1/alerts/{station_alert}/ack"), Value::Null),
            "U Y Y . . . . U",
            "a station alert (no gaveur): a superviseur only (SPEC §5)",
        )
        .labelled("POST /api/v1/alerts/{id}/ack (id: quality_critical of a station)"),
        row(
            post("/api/v1/alerts/no-such-alert/ack".into(), Value::Null),
            "U Y Y Y Y . . U",
            "a bogus id: 404 for who may acknowledge some alert (gaveur, superviseur); the \
             others may acknowledge none (SPEC §5), so 403 as for a real one",
        ),
        row(
            get("/api/v1/ledger/keys"),
            "Y Y Y Y Y Y Y Y",
            "SPEC §8 'public keys at'; code: public, to check certificates offline",
        ),
        row(
            Get(format!("/api/v1/ledger/lots/{LOT}")),
            "U Y Y Y . . . U",
            "SPEC silent; code: a lot's certificate for its gaveur, a superviseur or an admin \
             (gavage_data read)",
        ),
        row(
            post(
                "/api/v1/query".into(),
                sql("SELECT code_lot, jour FROM gavage_meals"),
            ),
            "U Y Y . . . . U",
            "SPEC silent on the endpoint; code: analytics read ('for callers who may read \
             analytics (superviseur, admin)')",
        )
        .labelled("POST /api/v1/query (SELECT … FROM gavage_meals)"),
        row(
            post(
                "/api/v1/query".into(),
                sql("SELECT device_id, final_score FROM sqal_samples"),
            ),
            "U Y Y . . . . U",
            "as above: the endpoint is analytics read whatever the dataset (code's intent)",
        )
        .labelled("POST /api/v1/query (SELECT … FROM sqal_samples)"),
        row(
            ws("/ws/gaveur/1"),
            "U Y Y Y . . . U",
            "'only for that gaveur (or superviseur / admin)' (SPEC §3); gavage_data read",
        ),
        row(
            ws("/ws/gaveur/2"),
            "U Y Y . Y . . U",
            "'only for that gaveur (or superviseur / admin)' (SPEC §3); gavage_data read",
        ),
        row(
            ws("/ws/realtime/"),
            "U Y Y . . Y . U",
            "dashboards scoped to sites and roles (SPEC §3); code: superviseurs and admins \
             everything, a SQAL technician SQAL only",
        ),
        row(
            ws("/ws/realtime"),
            "U Y Y . . Y . U",
            "the same channel without the slash",
        ),
        row(
            ws("/ws/gavage"),
            "U Y . Y Y . Y U",
            "ingest of gavage records: gavage_data write (gaveur for its own id, gateway for \
             its site); superviseur and technicien_sqal may write none",
        ),
        row(
            ws("/ws/sensors/"),
            "U Y . . . Y Y U",
            "ingest of SQAL records: sqal_data write (technicien_sqal, gateway of its site)",
        ),
        row(
            ws("/ws/sensors"),
            "U Y . . . Y Y U",
            "the same socket without the slash",
        ),
    ]
}

/// Runs one cell.
async fn call(http: SocketAddr, call: &Call, token: Option<&str>) -> Outcome {
    match call {
        Call::Get(path) => Outcome::Status(match token {
            None => http_get(http, path).await.0,
            Some(token) => http_get_as(http, path, token).await.0,
        }),
        Call::Post(path, body) => {
            let mut request = reqwest::Client::new().post(format!("http://{http}{path}"));
            if !body.is_null() {
                request = request.json(body);
            }
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(response) => Outcome::Status(response.status().as_u16()),
                Err(e) => Outcome::Broken(format!("request failed: {e}")),
            }
        }
        Call::Ws(path) => socket(http, path, token).await,
    }
}

/// Opens a socket as `support::ws_connect` does (`?token=`; no token: none at all, so the
/// server asks for one and waits 3 s) but answers every failure as an outcome instead of a
/// panic, so one odd cell cannot hide the others. Then it watches the socket: a close frame gives its code; any
/// message but `auth_required`, or a reply to a ping sent once the socket has been quiet for
/// a second, means it is open.
async fn socket(http: SocketAddr, path: &str, token: Option<&str>) -> Outcome {
    let url = match token {
        Some(token) => format!("ws://{http}{path}?token={token}"),
        None => format!("ws://{http}{path}"),
    };
    let mut ws = match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(response)) => {
            return Outcome::Refused(response.status().as_u16());
        }
        Err(e) => return Outcome::Broken(format!("connect failed: {e}")),
    };
    let mut pinged = false;
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        // Quiet for a second (the gaveur channel says nothing until there is news): ask.
        let wait = if pinged || token.is_none() {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(1)
        };
        let next = tokio::time::timeout(wait, ws.next()).await;
        let message = match next {
            Err(_) if !pinged && token.is_some() => {
                pinged = true;
                // A socket the server already closed reports its close frame on the next read.
                let _ = ws
                    .send(Message::Text(json!({"type": "ping"}).to_string().into()))
                    .await;
                continue;
            }
            Err(_) => return Outcome::Broken("no close and no message within 12 s".into()),
            Ok(None) => return Outcome::Broken("dropped without a close frame".into()),
            Ok(Some(Err(e))) => return Outcome::Broken(format!("socket error: {e}")),
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Close(Some(frame)) => {
                return Outcome::Closed(u16::from(frame.code), frame.reason.to_string());
            }
            Message::Close(None) => return Outcome::Broken("closed without a code".into()),
            Message::Text(text) => {
                let kind = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "text".into());
                if kind != "auth_required" {
                    let _ = ws.close(None).await;
                    return Outcome::Open(kind);
                }
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            Message::Binary(_) => {
                let _ = ws.close(None).await;
                return Outcome::Open("binary".into());
            }
        }
    }
}

/// Polls `probe` until it gives a value (every 100 ms, up to 30 s).
async fn until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The id of the first alert of `rule` an admin sees in `GET /api/v1/alerts?query`.
async fn alert_id(gaveurs: &Gaveurs, query: &str, rule: &str) -> String {
    let path = format!("/api/v1/alerts?{query}");
    until(&format!("a {rule} alert"), || async {
        let (status, body) = http_get_as(gaveurs.http, &path, &gaveurs.admin).await;
        if status != 200 {
            return None;
        }
        let answer: Value = serde_json::from_str(&body).ok()?;
        answer["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["rule"] == rule)
            .and_then(|a| a["alert_id"].as_str().map(str::to_string))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_and_channel_answers_each_principal_as_spec_section_6_says() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), FAST);

    // A lot of gaveur 1 at LL with one meal far below its plan (refus_alimentaire), and a
    // poor SQAL sample (quality_critical), so the lot, its meals, its certificate and both
    // kinds of alert exist, with their real owners, before anyone asks.
    let mut meal = records::meal(LOT, 1, "LL", 3, "matin");
    meal["dose_reelle"] = json!(100.0);
    let sample = records::sqal(DEVICE, "S-PM-1", 0.2);
    let messages = [
        (
            "gaveurs/LL/1/gavage".to_string(),
            meal.to_string().into_bytes(),
            1,
        ),
        (
            format!("sqal/LL/{DEVICE}/measurements"),
            sample.to_string().into_bytes(),
            1,
        ),
    ];
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &messages).await;
    assert_eq!(codes, [0, 0], "both records accepted");
    let visible = |path: String, wanted: fn(&Value) -> bool| {
        let gaveurs = &gaveurs;
        async move {
            until(&format!("{path} for the admin"), || async {
                let (status, body) = http_get_as(gaveurs.http, &path, &gaveurs.admin).await;
                let body: Value = serde_json::from_str(&body).ok()?;
                (status == 200 && wanted(&body)).then_some(())
            })
            .await
        }
    };
    visible(format!("/api/v1/lots/{LOT}"), |_| true).await;
    visible(format!("/api/v1/lots/{LOT}/meals"), |b| {
        b["meals"].as_array().is_some_and(|m| !m.is_empty())
    })
    .await;
    visible(format!("/api/v1/ledger/lots/{LOT}"), |_| true).await;
    let alert_of_jean = alert_id(&gaveurs, &format!("code_lot={LOT}"), "refus_alimentaire").await;
    let station_alert =
        alert_id(&gaveurs, &format!("device_id={DEVICE}"), "quality_critical").await;

    let tokens: Vec<Option<String>> = PRINCIPALS
        .iter()
        .map(|(_, who)| match who {
            Who::NoToken => None,
            Who::Demo(email) => Some(gaveurs.token(email)),
            Who::Garbage => Some(GARBAGE.to_string()),
        })
        .collect();
    let rows = table(&alert_of_jean, &station_alert);

    // Every cell at once (the anonymous sockets each wait out the 3 s auth window).
    let http = gaveurs.http;
    let cells = rows.iter().flat_map(|row| {
        tokens
            .iter()
            .map(move |token| call(http, &row.call, token.as_deref()))
    });
    let outcomes = futures::future::join_all(cells).await;

    let mut mismatches = Vec::new();
    let mut got_table = String::new();
    let width = rows
        .iter()
        .map(|r| r.label().chars().count())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        got_table,
        "{:width$}  expected         got              (none admin sup jean sophie tech gw bad)",
        ""
    );
    for (n, row) in rows.iter().enumerate() {
        let websocket = matches!(row.call, Call::Ws(_));
        let expected: Vec<char> = row.expected.chars().filter(|c| *c != ' ').collect();
        assert_eq!(
            expected.len(),
            PRINCIPALS.len(),
            "row {} has one cell per principal",
            row.label()
        );
        let got: Vec<char> = outcomes[n * PRINCIPALS.len()..(n + 1) * PRINCIPALS.len()]
            .iter()
            .map(|o| o.cell(websocket))
            .collect();
        for (column, (principal, _)) in PRINCIPALS.iter().enumerate() {
            if got[column] != expected[column] {
                let outcome = &outcomes[n * PRINCIPALS.len() + column];
                mismatches.push(format!(
                    "{} — {principal}: expected {}, got {}\n      ({})",
                    row.label(),
                    expectation(expected[column], websocket),
                    outcome.describe(),
                    row.why,
                ));
            }
        }
        let spaced = |cells: &[char]| {
            cells
                .iter()
                .map(char::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            got_table,
            "{:width$}  {}  {}{}",
            row.label(),
            spaced(&expected),
            spaced(&got),
            if got == expected { "" } else { "  <- differs" },
        );
    }
    println!("{got_table}");
    gaveurs.stop_cleanly();
    assert!(
        mismatches.is_empty(),
        "{} cell(s) disagree with SPEC §6:\n  {}\n\nthe whole table (Y allowed, . forbidden \
         403/4403, U unauthenticated 401/4401, ? neither):\n{got_table}",
        mismatches.len(),
        mismatches.join("\n  "),
    );
}
