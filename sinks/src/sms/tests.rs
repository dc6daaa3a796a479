//! The outbox on disk, and the sender against a small Twilio stand-in.

use std::collections::{HashMap, VecDeque};
use std::future::IntoFuture;
use std::time::Instant as StdInstant;

use axum::Form;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::NaiveDate;

use super::*;

// ---------------------------------------------------------------------------------------------
// Outbox

fn queued(id: &str, to: &str) -> QueuedSms {
    QueuedSms {
        id: id.to_string(),
        gaveur_id: 12,
        to: to.to_string(),
        body: format!("alerte {id}"),
        critical: true,
        queued_at: Utc::now(),
    }
}

fn pending_ids(outbox: &Outbox) -> Vec<String> {
    outbox.pending().map(|sms| sms.id.clone()).collect()
}

#[test]
fn the_outbox_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let sms_dir = dir.path().join("instances/a/sms");
    let a1 = queued("a1", "+33600000001");
    {
        let mut outbox = Outbox::open(&sms_dir).unwrap();
        assert!(outbox.enqueue(a1.clone()).unwrap());
        assert!(outbox.enqueue(queued("a2", "+33600000002")).unwrap());
        assert!(outbox.enqueue(queued("a3", "+33600000003")).unwrap());
        assert!(!outbox.enqueue(queued("a2", "+33600000002")).unwrap());
    }
    let mut outbox = Outbox::open(&sms_dir).unwrap();
    assert_eq!(pending_ids(&outbox), ["a1", "a2", "a3"]);
    assert_eq!(outbox.pending().next(), Some(&a1));

    let sent = Outcome::Sent {
        twilio_sid: Some("SM1".into()),
    };
    assert!(outbox.mark_done("a2", sent, Utc::now()).unwrap());
    assert!(!outbox.mark_done("a2", Outcome::GaveUp, Utc::now()).unwrap());
    assert!(!outbox.mark_done("zz", Outcome::GaveUp, Utc::now()).unwrap());
    drop(outbox);

    let mut outbox = Outbox::open(&sms_dir).unwrap();
    assert_eq!(pending_ids(&outbox), ["a1", "a3"]);
    assert!(outbox.is_known("a2"));
    assert!(!outbox.enqueue(queued("a2", "+33600000002")).unwrap());
    assert!(!outbox.enqueue(queued("a1", "+33600000001")).unwrap());
    assert_eq!(
        outbox.sent_to_since("+33600000002", Utc::now() - TimeDelta::hours(1)),
        1
    );
    assert_eq!(
        outbox.sent_to_since("+33600000001", Utc::now() - TimeDelta::hours(1)),
        0
    );

    // The journal is plain JSON lines.
    let journal = std::fs::read_to_string(sms_dir.join(outbox::JOURNAL)).unwrap();
    let records: Vec<serde_json::Value> = journal
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{journal}");
    assert_eq!(records[0]["record"], "queued");
    assert_eq!(records[0]["id"], "a1");
    assert_eq!(records[2]["record"], "done");
    assert_eq!(records[2]["outcome"]["kind"], "sent");
    assert_eq!(records[2]["outcome"]["twilio_sid"], "SM1");
}

#[test]
fn a_torn_last_line_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut outbox = Outbox::open(dir.path()).unwrap();
        outbox.enqueue(queued("a1", "+33600000001")).unwrap();
        outbox.enqueue(queued("a2", "+33600000002")).unwrap();
    }
    let path = dir.path().join(outbox::JOURNAL);
    let mut journal = std::fs::read(&path).unwrap();
    // A crash in the middle of the second append.
    let cut = journal.len() - 20;
    journal.truncate(cut);
    std::fs::write(&path, &journal).unwrap();

    let mut outbox = Outbox::open(dir.path()).unwrap();
    assert_eq!(pending_ids(&outbox), ["a1"]);
    // The torn line is gone from the compacted journal, so appends are whole lines again.
    assert!(outbox.enqueue(queued("a2", "+33600000002")).unwrap());
    drop(outbox);
    let outbox = Outbox::open(dir.path()).unwrap();
    assert_eq!(pending_ids(&outbox), ["a1", "a2"]);

    // Garbage in the middle is skipped, not fatal.
    let mut journal = std::fs::read(&path).unwrap();
    journal.splice(0..0, b"{not json\n".iter().copied());
    std::fs::write(&path, &journal).unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    assert_eq!(pending_ids(&outbox), ["a1", "a2"]);
}

#[test]
fn compaction_keeps_pending_and_recent_done() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    {
        let mut outbox = Outbox::open(dir.path()).unwrap();
        for id in ["old", "recent", "pending"] {
            outbox.enqueue(queued(id, "+33600000001")).unwrap();
        }
        let sent = Outcome::Sent { twilio_sid: None };
        outbox
            .mark_done("old", sent.clone(), now - TimeDelta::days(8))
            .unwrap();
        outbox
            .mark_done("recent", sent, now - TimeDelta::days(6))
            .unwrap();
    }
    let path = dir.path().join(outbox::JOURNAL);
    let before = std::fs::read_to_string(&path).unwrap().lines().count();
    assert_eq!(before, 5);

    let mut outbox = Outbox::open_at(dir.path(), now).unwrap();
    assert_eq!(pending_ids(&outbox), ["pending"]);
    assert!(outbox.is_known("recent"));
    assert!(!outbox.is_known("old"), "forgotten after 7 days");
    // Both were sent more than an hour ago.
    assert_eq!(
        outbox.sent_to_since("+33600000001", now - TimeDelta::hours(1)),
        0
    );
    let after = std::fs::read_to_string(&path).unwrap();
    assert_eq!(after.lines().count(), 2, "{after}");
    assert!(after.contains("\"recent\"") && !after.contains("\"old\""));
    assert!(outbox.enqueue(queued("old", "+33600000001")).unwrap());
    assert!(!outbox.enqueue(queued("recent", "+33600000001")).unwrap());

    // A hidden temporary file is all compaction may leave behind, and only on a crash.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [outbox::JOURNAL]);
}

// ---------------------------------------------------------------------------------------------
// Quiet hours and backoff

fn paris(date: (i32, u32, u32), time: (u32, u32)) -> DateTime<Utc> {
    let local = NaiveDate::from_ymd_opt(date.0, date.1, date.2)
        .unwrap()
        .and_hms_opt(time.0, time.1, 0)
        .unwrap();
    chrono_tz::Europe::Paris
        .from_local_datetime(&local)
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}

fn hm(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).unwrap()
}

#[test]
fn quiet_hours() {
    let night = QuietHours::new(hm(22, 0), hm(7, 0), chrono_tz::Europe::Paris);
    assert!(night.bypass_critical);
    let day = (2026, 1, 20);
    assert_eq!(night.ends_after(paris(day, (21, 59))), None);
    assert_eq!(
        night.ends_after(paris(day, (22, 0))),
        Some(paris((2026, 1, 21), (7, 0)))
    );
    assert_eq!(
        night.ends_after(paris(day, (3, 0))),
        Some(paris(day, (7, 0)))
    );
    assert_eq!(night.ends_after(paris(day, (7, 0))), None);
    assert_eq!(night.ends_after(paris(day, (12, 0))), None);

    let lunch = QuietHours::new(hm(12, 0), hm(14, 0), chrono_tz::Europe::Paris);
    assert_eq!(lunch.ends_after(paris(day, (11, 59))), None);
    assert_eq!(
        lunch.ends_after(paris(day, (13, 0))),
        Some(paris(day, (14, 0)))
    );
    assert_eq!(lunch.ends_after(paris(day, (14, 0))), None);

    let never = QuietHours::new(hm(8, 0), hm(8, 0), chrono_tz::Europe::Paris);
    assert_eq!(never.ends_after(paris(day, (8, 0))), None);

    // Quiet hours ending inside the spring-forward gap (02:00 → 03:00, 29 March 2026).
    let gap = QuietHours::new(hm(1, 0), hm(2, 30), chrono_tz::Europe::Paris);
    let now = paris((2026, 3, 29), (1, 30));
    let end = gap.ends_after(now).unwrap();
    assert!(end > now);
    assert_eq!(end, paris((2026, 3, 29), (3, 30)));

    // Ending at an ambiguous time (02:30 happens twice on 25 October 2026): the end is always
    // still to come, also during the second 02:xx hour.
    let ambiguous = QuietHours::new(hm(1, 0), hm(2, 30), chrono_tz::Europe::Paris);
    let first = paris((2026, 10, 25), (2, 10));
    assert!(ambiguous.ends_after(first).unwrap() > first);
    let second = first + TimeDelta::hours(1);
    let end = ambiguous.ends_after(second).unwrap();
    assert!(
        end > second && end - second <= TimeDelta::minutes(20),
        "{end}"
    );
}

#[test]
fn backoff_doubles_with_full_jitter_up_to_the_max() {
    let settings = SmsSettings {
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
        ..SmsSettings::default()
    };
    for _ in 0..100 {
        assert!(backoff(&settings, 1, None) <= Duration::from_millis(100));
        assert!(backoff(&settings, 3, None) <= Duration::from_millis(400));
        assert!(backoff(&settings, 50, None) <= Duration::from_secs(1));
    }
    let spread: Vec<_> = (0..20).map(|_| backoff(&settings, 4, None)).collect();
    assert!(spread.iter().any(|d| *d != spread[0]), "no jitter");
    assert_eq!(
        backoff(&settings, 1, Some(Duration::from_millis(300))),
        Duration::from_millis(300)
    );
    assert_eq!(
        backoff(&settings, 1, Some(Duration::from_secs(60))),
        Duration::from_secs(1)
    );
}

#[test]
fn phone_numbers_are_masked() {
    assert_eq!(masked("+33612345678"), "***5678");
    assert_eq!(masked("+1"), "***+1");
}

// ---------------------------------------------------------------------------------------------
// The service against a Twilio stand-in

#[derive(Debug, Clone)]
struct Seen {
    account: String,
    to: String,
    from: String,
    body: String,
    status: u16,
}

#[derive(Default)]
struct FakeState {
    script: VecDeque<u16>,
    retry_after: Option<u64>,
    requests: Vec<Seen>,
}

#[derive(Clone)]
struct Fake {
    base_url: String,
    state: Arc<Mutex<FakeState>>,
}

impl Fake {
    async fn start(script: &[u16]) -> Fake {
        let state = Arc::new(Mutex::new(FakeState {
            script: script.iter().copied().collect(),
            ..FakeState::default()
        }));
        let app = axum::Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(fake_messages),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, app).into_future());
        Fake { base_url, state }
    }

    fn requests(&self) -> Vec<Seen> {
        self.state.lock().requests.clone()
    }
}

async fn fake_messages(
    State(state): State<Arc<Mutex<FakeState>>>,
    UrlPath(account): UrlPath<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    assert!(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Basic ")),
        "no basic auth"
    );
    let mut state = state.lock();
    let status = state.script.pop_front().unwrap_or(201);
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let n = state.requests.len();
    state.requests.push(Seen {
        account,
        to: field("To"),
        from: field("From"),
        body: field("Body"),
        status,
    });
    let code = StatusCode::from_u16(status).unwrap();
    match status {
        200..=299 => (
            code,
            axum::Json(serde_json::json!({"sid": format!("SM{n:032}"), "status": "queued"})),
        )
            .into_response(),
        400 => (
            code,
            axum::Json(serde_json::json!({"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400})),
        )
            .into_response(),
        _ => {
            let mut response = (
                code,
                axum::Json(serde_json::json!({"code": 20429, "message": "Too Many Requests", "status": status})),
            )
                .into_response();
            if let Some(seconds) = state.retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", seconds.to_string().parse().unwrap());
            }
            response
        }
    }
}

fn credentials() -> Credentials {
    Credentials {
        account_sid: "AC0123".into(),
        auth_token: "token".into(),
        from: "+15005550006".into(),
    }
}

fn fast(fake: &Fake) -> SmsSettings {
    SmsSettings {
        base_url: fake.base_url.clone(),
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
        ..SmsSettings::default()
    }
}

fn message(id: &str, to: &str, critical: bool) -> SmsMessage {
    SmsMessage {
        id: id.to_string(),
        gaveur_id: 12,
        to: to.to_string(),
        body: format!("CRITIQUE {id} : refus alimentaire, vérifiez l’abreuvoir"),
        critical,
    }
}

/// Polls `condition` until it holds; panics after 10 s.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let start = StdInstant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Lets the sender run a little, to show that it does nothing more.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn retryable_then_sent() {
    let fake = Fake::start(&[429, 503]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();
    let service =
        SmsService::start(fast(&fake), Some(credentials()), dir.path(), token.clone()).unwrap();
    assert!(service.enabled());
    assert!(
        service
            .enqueue(message("a1", "+33612345678", true))
            .unwrap()
    );
    assert!(
        !service
            .enqueue(message("a1", "+33612345678", true))
            .unwrap()
    );
    wait_until("sent", || service.counters().sent == 1).await;
    settle().await;

    let requests = fake.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 503, 201]);
    let last = &requests[2];
    assert_eq!(last.account, "AC0123");
    assert_eq!(last.to, "+33612345678");
    assert_eq!(last.from, "+15005550006");
    assert_eq!(
        last.body,
        "CRITIQUE a1 : refus alimentaire, vérifiez l'abreuvoir"
    );
    let counters = service.counters();
    assert_eq!(
        (counters.sent, counters.retried, counters.failed),
        (1, 2, 0)
    );
    assert_eq!(service.pending_len(), 0);

    token.cancel();
    service.stop(Duration::from_secs(5)).await;
    let journal = std::fs::read_to_string(dir.path().join(outbox::JOURNAL)).unwrap();
    assert!(
        journal.contains(&format!("\"twilio_sid\":\"SM{:032}\"", 2)),
        "{journal}"
    );
}

#[tokio::test]
async fn a_rejection_is_not_retried() {
    let fake = Fake::start(&[400]).await;
    let dir = tempfile::tempdir().unwrap();
    let service = SmsService::start(
        fast(&fake),
        Some(credentials()),
        dir.path(),
        CancellationToken::new(),
    )
    .unwrap();
    service
        .enqueue(message("a1", "+33612345678", true))
        .unwrap();
    wait_until("rejected", || service.counters().failed == 1).await;
    settle().await;
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(service.counters().sent, 0);
    assert_eq!(service.pending_len(), 0);
    service.stop(Duration::from_secs(5)).await;

    let journal = std::fs::read_to_string(dir.path().join(outbox::JOURNAL)).unwrap();
    assert!(journal.contains("\"kind\":\"rejected\""), "{journal}");
    assert!(journal.contains("21211"), "{journal}");
}

#[tokio::test]
async fn retry_after_is_honoured_and_attempts_run_out() {
    let fake = Fake::start(&[500, 500, 500]).await;
    fake.state.lock().retry_after = Some(0);
    let dir = tempfile::tempdir().unwrap();
    let settings = SmsSettings {
        max_attempts: 3,
        // Only `Retry-After: 0` makes this test finish quickly.
        retry_initial: Duration::from_secs(60),
        retry_max: Duration::from_secs(60),
        ..fast(&fake)
    };
    let service = SmsService::start(
        settings,
        Some(credentials()),
        dir.path(),
        CancellationToken::new(),
    )
    .unwrap();
    service
        .enqueue(message("a1", "+33612345678", true))
        .unwrap();
    wait_until("given up", || service.counters().failed == 1).await;
    settle().await;
    assert_eq!(fake.requests().len(), 3);
    assert_eq!(service.counters().retried, 2);
    assert_eq!(service.pending_len(), 0);
    service.stop(Duration::from_secs(5)).await;
    let journal = std::fs::read_to_string(dir.path().join(outbox::JOURNAL)).unwrap();
    assert!(journal.contains("\"kind\":\"gave_up\""), "{journal}");
}

#[tokio::test]
async fn a_pending_message_is_sent_once_after_a_restart() {
    let fake = Fake::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // Queued by a run that crashed before sending it.
    Outbox::open(dir.path())
        .unwrap()
        .enqueue(queued("a1", "+33612345678"))
        .unwrap();

    for _ in 0..2 {
        let token = CancellationToken::new();
        let service =
            SmsService::start(fast(&fake), Some(credentials()), dir.path(), token.clone()).unwrap();
        // Known from the first run: not queued again.
        assert!(
            !service
                .enqueue(message("a1", "+33612345678", true))
                .unwrap()
        );
        wait_until("sent", || fake.requests().len() == 1).await;
        settle().await;
        token.cancel();
        service.stop(Duration::from_secs(5)).await;
    }
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_message_pending_longer_than_its_max_age_expires_unsent() {
    let fake = Fake::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // Queued two hours ago by a run that stopped before it could send them (an outage).
    let mut outbox = Outbox::open(dir.path()).unwrap();
    for id in ["old1", "old2"] {
        let stale = QueuedSms {
            queued_at: Utc::now() - chrono::TimeDelta::hours(2),
            ..queued(id, "+33612345678")
        };
        outbox.enqueue(stale).unwrap();
    }
    drop(outbox);

    for _ in 0..2 {
        let token = CancellationToken::new();
        let service =
            SmsService::start(fast(&fake), Some(credentials()), dir.path(), token.clone()).unwrap();
        // A fresh alert still goes out, after the stale ones were settled.
        service
            .enqueue(message("fresh", "+33612345678", true))
            .unwrap();
        wait_until("the fresh one sent", || !fake.requests().is_empty()).await;
        settle().await;
        token.cancel();
        service.stop(Duration::from_secs(5)).await;
        assert_eq!(service.pending_len(), 0);
    }
    let sent: Vec<String> = fake.requests().iter().map(|r| r.body.clone()).collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("fresh"), "{sent:?}");
    let journal = std::fs::read_to_string(dir.path().join(outbox::JOURNAL)).unwrap();
    for id in ["old1", "old2"] {
        let line = journal
            .lines()
            .find(|l| l.contains(&format!("\"id\":\"{id}\"")) && l.contains("\"done\""))
            .unwrap_or_else(|| panic!("{id} settled: {journal}"));
        assert!(line.contains("\"kind\":\"expired\""), "{line}");
    }
}

#[tokio::test]
async fn the_hourly_budget_holds_across_restarts() {
    let fake = Fake::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = SmsSettings {
        budget_per_hour: 2,
        ..fast(&fake)
    };
    let service = SmsService::start(
        settings.clone(),
        Some(credentials()),
        dir.path(),
        CancellationToken::new(),
    )
    .unwrap();
    for id in ["a1", "a2", "a3"] {
        service.enqueue(message(id, "+33612345678", false)).unwrap();
    }
    service
        .enqueue(message("b1", "+33699999999", false))
        .unwrap();
    service
        .enqueue(message("a4", "+33612345678", true))
        .unwrap();
    wait_until("all settled", || service.pending_len() == 0).await;
    let counters = service.counters();
    assert_eq!((counters.sent, counters.dropped_budget), (3, 2));
    let to: Vec<String> = fake.requests().into_iter().map(|r| r.to).collect();
    assert_eq!(to, ["+33612345678", "+33612345678", "+33699999999"]);
    service.stop(Duration::from_secs(5)).await;

    // After a restart the two sends of the last hour still count; critical messages may bypass.
    let settings = SmsSettings {
        budget_bypass_critical: true,
        ..settings
    };
    let service = SmsService::start(
        settings,
        Some(credentials()),
        dir.path(),
        CancellationToken::new(),
    )
    .unwrap();
    service
        .enqueue(message("a5", "+33612345678", false))
        .unwrap();
    service
        .enqueue(message("a6", "+33612345678", true))
        .unwrap();
    wait_until("all settled", || service.pending_len() == 0).await;
    let counters = service.counters();
    assert_eq!((counters.sent, counters.dropped_budget), (1, 1));
    assert_eq!(fake.requests().len(), 4);
    assert!(fake.requests()[3].body.contains("a6"));
    service.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn quiet_hours_hold_non_critical_messages() {
    let fake = Fake::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now().time();
    let settings = SmsSettings {
        // Quiet from an hour ago to an hour from now.
        quiet_hours: Some(QuietHours::new(
            now - TimeDelta::hours(1),
            now + TimeDelta::hours(1),
            chrono_tz::UTC,
        )),
        ..fast(&fake)
    };
    // Queued long ago: the quiet hours hold it, they do not expire it.
    let held_overnight = QueuedSms {
        critical: false,
        queued_at: Utc::now() - TimeDelta::hours(3),
        ..queued("held", "+33612345678")
    };
    Outbox::open(dir.path())
        .unwrap()
        .enqueue(held_overnight)
        .unwrap();
    let service = SmsService::start(
        settings,
        Some(credentials()),
        dir.path(),
        CancellationToken::new(),
    )
    .unwrap();
    service
        .enqueue(message("low", "+33612345678", false))
        .unwrap();
    service
        .enqueue(message("high", "+33612345678", true))
        .unwrap();
    wait_until("critical sent", || service.counters().sent == 1).await;
    settle().await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].body.contains("high"));
    assert_eq!(service.counters().deferred_quiet, 2);
    assert_eq!(service.counters().expired, 0);
    assert_eq!(service.pending_len(), 2);

    let start = StdInstant::now();
    service.stop(Duration::from_secs(5)).await;
    assert!(start.elapsed() < Duration::from_secs(1));
    // Still there for the next start.
    let outbox = Outbox::open(dir.path()).unwrap();
    assert_eq!(pending_ids(&outbox), ["held", "low"]);
}

#[tokio::test]
async fn shutdown_is_prompt_and_keeps_pending_messages() {
    let fake = Fake::start(&[503]).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = SmsSettings {
        retry_initial: Duration::from_secs(3600),
        retry_max: Duration::from_secs(3600),
        ..fast(&fake)
    };
    fake.state.lock().retry_after = Some(3600);
    let token = CancellationToken::new();
    let service =
        SmsService::start(settings, Some(credentials()), dir.path(), token.clone()).unwrap();
    service
        .enqueue(message("a1", "+33612345678", true))
        .unwrap();
    wait_until("retrying", || service.counters().retried == 1).await;

    token.cancel();
    let start = StdInstant::now();
    service.stop(Duration::from_secs(5)).await;
    assert!(start.elapsed() < Duration::from_secs(1));
    // Enqueued after the stop: kept for the next run.
    assert!(
        service
            .enqueue(message("a2", "+33612345678", true))
            .unwrap()
    );
    settle().await;
    assert_eq!(fake.requests().len(), 1);

    let outbox = Outbox::open(dir.path()).unwrap();
    assert_eq!(pending_ids(&outbox), ["a1", "a2"]);
}

#[tokio::test]
async fn unreachable_twilio_is_retryable() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = TwilioClient::new(
        twilio::messages_url(&base_url, "AC1").unwrap(),
        credentials(),
    )
    .unwrap();
    let outcome = client.send("+33612345678", "x").await;
    assert!(
        matches!(&outcome, SendOutcome::Retryable { retry_after: None, reason } if reason.contains("connect")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn without_credentials_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let sms_dir = dir.path().join("sms");
    let service = SmsService::start(
        SmsSettings::default(),
        None,
        &sms_dir,
        CancellationToken::new(),
    )
    .unwrap();
    assert!(!service.enabled());
    assert!(
        !service
            .enqueue(message("a1", "+33612345678", true))
            .unwrap()
    );
    assert!(
        !service
            .enqueue(message("a2", "+33612345678", true))
            .unwrap()
    );
    assert_eq!(service.counters().disabled, 2);
    assert_eq!(service.pending_len(), 0);
    assert!(!sms_dir.exists());
    service.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_bad_base_url_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let settings = SmsSettings {
        base_url: "api.twilio.com".into(),
        ..SmsSettings::default()
    };
    let err = SmsService::start(
        settings,
        Some(credentials()),
        dir.path(),
        CancellationToken::new(),
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}
