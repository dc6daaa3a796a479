//! The web page in a real browser (headless Chromium over the DevTools protocol) against the
//! real binary: a gaveur signs in with the dev-mode picker, sees their lot's meals arrive live
//! (and nobody else's), sees a critical alert and acknowledges it, and a second session sees
//! the acknowledgement. Screenshots at 360 px and on a desktop are written to the test
//! artifacts (`$CARGO_TARGET_TMPDIR/web-*.png`).

mod support;

use std::time::{Duration, Instant};

use gaveurs_loadgen::producer::MqttVersion;
use serde_json::Value;
use support::browser::Browser;
use support::records::meal;
use support::*;

fn gavage(record: &Value) -> (String, Vec<u8>, u8) {
    let site = record["site"].as_str().unwrap();
    let gaveur = record["gaveur_id"].as_i64().unwrap();
    (
        format!("gaveurs/{site}/{gaveur}/gavage"),
        record.to_string().into_bytes(),
        1,
    )
}

/// Publishes `records` over MQTT 5 as the admin; every one must be acknowledged.
async fn publish(gaveurs: &Gaveurs, records: &[(String, Vec<u8>, u8)]) {
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, records).await;
    assert!(codes.iter().all(|c| *c == 0), "{codes:?}");
}

/// Opens `/` and signs in with the dev-mode picker as `email`, until the live channel is open.
async fn sign_in(browser: &mut Browser, gaveurs: &Gaveurs, email: &str) {
    sign_in_at(browser, gaveurs, "/", email).await;
}

async fn sign_in_at(browser: &mut Browser, gaveurs: &Gaveurs, path: &str, email: &str) {
    browser
        .goto(&format!("http://{}{path}", gaveurs.http))
        .await;
    let picker = format!("document.querySelector('[data-user=\"{email}\"]')");
    browser
        .eval_until(&format!("!!{picker}"), Duration::from_secs(15))
        .await;
    browser.eval(&format!("{picker}.click()")).await;
    browser
        .eval_until(
            "document.body.dataset.live === 'open'",
            Duration::from_secs(15),
        )
        .await;
}

fn meals_of(code_lot: &str) -> String {
    format!("document.querySelector('[data-lot=\"{code_lot}\"] .meals')?.dataset.count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gaveur_signs_in_sees_meals_live_and_acknowledges_an_alert_seen_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");

    // The shell is for anyone and carries no data.
    let (status, shell) = http_get(gaveurs.http, "/").await;
    assert_eq!(status, 200);
    assert!(shell.contains("<main id=\"app\""), "{shell}");
    assert!(!shell.contains("LL26"), "{shell}");

    let mut phone = Browser::launch(360, 740).await;
    phone.goto(&format!("http://{}/", gaveurs.http)).await;
    let notice = phone
        .eval_until(
            "document.querySelector('.notice')?.textContent",
            Duration::from_secs(15),
        )
        .await;
    assert!(
        notice.as_str().unwrap().contains("Mode développement"),
        "{notice}"
    );
    sign_in(&mut phone, &gaveurs, "jean.martin@gaveur.fr").await;

    // Jean's meal shows on his page; Sophie's lot does not.
    let mine = meal("LL2612301", 1, "LL", 1, "matin");
    let hers = meal("LL2612399", 2, "LS", 1, "matin");
    publish(&gaveurs, &[gavage(&hers), gavage(&mine)]).await;
    phone
        .eval_until(
            &format!("{} === '1'", meals_of("LL2612301")),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        phone
            .eval("document.querySelectorAll('[data-lot=\"LL2612399\"]').length")
            .await,
        0
    );
    assert_eq!(
        phone
            .eval("document.querySelectorAll('[data-lot=\"LL2612301\"] canvas').length > 0")
            .await,
        true,
        "the lot's chart is drawn"
    );

    // The next meal reaches the screen without a reload (the time it took is printed, not
    // asserted: the closing note quotes it).
    let published = Instant::now();
    publish(&gaveurs, &[gavage(&meal("LL2612301", 1, "LL", 1, "soir"))]).await;
    phone
        .eval_until(
            &format!("{} === '2'", meals_of("LL2612301")),
            Duration::from_secs(10),
        )
        .await;
    println!(
        "meal on screen {} ms after it was published",
        published.elapsed().as_millis()
    );

    // A second session (a desktop) watches the same lot.
    let mut desktop = Browser::launch(1280, 800).await;
    sign_in(&mut desktop, &gaveurs, "jean.martin@gaveur.fr").await;

    // A refusal (50 of 240 g) raises a critical alert on both screens.
    let mut refusal = meal("LL2612301", 1, "LL", 2, "matin");
    refusal["dose_reelle"] = 50.0.into();
    publish(&gaveurs, &[gavage(&refusal)]).await;
    let alert = "document.querySelector('[data-lot=\"LL2612301\"] .alert.critical')";
    for browser in [&mut phone, &mut desktop] {
        let text = browser
            .eval_until(&format!("{alert}?.textContent"), Duration::from_secs(10))
            .await;
        assert!(text.as_str().unwrap().contains("Critique"), "{text}");
    }
    phone.screenshot(&artifact("web-360.png")).await;
    desktop.screenshot(&artifact("web-desktop.png")).await;

    // Acknowledged from the phone: the API and the desktop say so.
    let alert_id = phone
        .eval(&format!("{alert}.dataset.alert"))
        .await
        .as_str()
        .unwrap()
        .to_string();
    phone
        .eval(&format!("{alert}.querySelector('button').click()"))
        .await;
    desktop
        .eval_until(
            &format!("{alert}?.dataset.state === 'acknowledged'"),
            Duration::from_secs(10),
        )
        .await;
    let (status, body) = http_get_as(
        gaveurs.http,
        "/api/v1/alerts?code_lot=LL2612301",
        &gaveurs.admin,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let alerts = answer["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| answer.as_array().cloned().unwrap());
    let acked = alerts
        .iter()
        .find(|a| a["alert_id"] == alert_id.as_str())
        .unwrap();
    assert_eq!(acked["state"], "acknowledged", "{acked}");
    assert_eq!(acked["acknowledged_by"], "jean.martin");

    // The lot's ledger certificate as a QR code of its short URL.
    desktop
        .eval("document.querySelector('[data-lot=\"LL2612301\"] .certificate button').click()")
        .await;
    let shown = desktop
        .eval_until(
            "document.querySelector('[data-lot=\"LL2612301\"] figure.qr img')?.closest('figure').dataset.url",
            Duration::from_secs(10),
        )
        .await;
    let (status, body) = http_get_as(
        gaveurs.http,
        "/api/v1/ledger/lots/LL2612301",
        &gaveurs.admin,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let certificate: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown, certificate["url"]);
    desktop
        .screenshot(&artifact("web-desktop-certificate.png"))
        .await;

    // The lot's outcome: it leaves the lots in progress for the finished ones, with its ITM
    // (487 g of maize over 562.5 g of liver).
    publish(
        &gaveurs,
        &[(
            "gaveurs/LL/1/outcome".into(),
            support::records::outcome("LL2612301", 1, "LL")
                .to_string()
                .into_bytes(),
            1,
        )],
    )
    .await;
    let itm = phone
        .eval_until(
            "Number(document.querySelector('[data-finished=\"LL2612301\"] [data-itm]')?.dataset.itm)",
            Duration::from_secs(15),
        )
        .await;
    assert!(
        (itm.as_f64().unwrap() - 487.0 / 562.5).abs() < 0.01,
        "{itm}"
    );
    assert_eq!(
        phone
            .eval("document.querySelectorAll('.lots [data-lot=\"LL2612301\"]').length")
            .await,
        0
    );
    gaveurs.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_when_the_pipeline_is_gone_and_resumes_without_a_gap_or_a_twin() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed port, so the page finds the pipeline again after its restart.
    let config = format!("[http]\nlisten = \"127.0.0.1:{}\"\n", free_port());
    let gaveurs = Gaveurs::start(dir.path(), &config);
    let mut phone = Browser::launch(360, 740).await;
    sign_in(&mut phone, &gaveurs, "jean.martin@gaveur.fr").await;
    publish(&gaveurs, &[gavage(&meal("LL2612401", 1, "LL", 1, "matin"))]).await;
    phone
        .eval_until(
            &format!("{} === '1'", meals_of("LL2612401")),
            Duration::from_secs(10),
        )
        .await;

    gaveurs.stop_cleanly();
    let banner = phone
        .eval_until(
            "!document.querySelector('#banner').hidden && document.querySelector('#banner').textContent",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        banner.as_str().unwrap().contains("Connexion perdue"),
        "{banner}"
    );

    // Back, with a meal published before the page has reconnected: the resume brings it,
    // once, beside the meal already on screen.
    let gaveurs = Gaveurs::start(dir.path(), &config);
    publish(&gaveurs, &[gavage(&meal("LL2612401", 1, "LL", 1, "soir"))]).await;
    phone
        .eval_until(
            &format!(
                "document.querySelector('#banner').hidden && {} === '2'",
                meals_of("LL2612401")
            ),
            Duration::from_secs(30),
        )
        .await;
    // And live again after the resume.
    publish(&gaveurs, &[gavage(&meal("LL2612401", 1, "LL", 2, "matin"))]).await;
    phone
        .eval_until(
            &format!("{} === '3'", meals_of("LL2612401")),
            Duration::from_secs(10),
        )
        .await;
    let shown = phone
        .eval("document.querySelector('[data-lot=\"LL2612401\"] .meals').textContent")
        .await;
    assert!(shown.as_str().unwrap().starts_with("3 repas"), "{shown}");

    // A page opened after the restart shows the meal from before it too: the channel starts
    // empty, the published meals fill the lot's history.
    let mut late = Browser::launch(1280, 800).await;
    sign_in(&mut late, &gaveurs, "jean.martin@gaveur.fr").await;
    late.eval_until(
        &format!(
            "document.body.dataset.history === 'loaded' && {} === '3'",
            meals_of("LL2612401")
        ),
        Duration::from_secs(15),
    )
    .await;
    // Those two reads are the API's, with its permissions: another gaveur gets 403.
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let sophie = gaveurs.token("sophie.dubois@gaveur.fr");
    for path in ["/api/v1/lots?gaveur_id=1", "/api/v1/lots/LL2612401/meals"] {
        let (status, body) = http_get_as(gaveurs.http, path, &jean).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains("LL2612401"), "{body}");
        assert_eq!(
            http_get_as(gaveurs.http, path, &sophie).await.0,
            403,
            "{path}"
        );
    }
    gaveurs.stop_cleanly();
}

fn artifact(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_flow_with_pkce_signs_in_renews_the_token_on_the_open_channel_and_signs_out() {
    let dir = tempfile::tempdir().unwrap();
    // Access tokens of 6 s: the page must renew them, twice, on the open channel.
    let gaveurs = Gaveurs::start(dir.path(), "[auth]\ndev_token_ttl_s = 6\n");
    let mut phone = Browser::launch(360, 740).await;
    phone.goto(&format!("http://{}/", gaveurs.http)).await;
    let button = "document.querySelector('[data-signin=\"realm\"]')";
    phone
        .eval_until(&format!("!!{button}"), Duration::from_secs(15))
        .await;
    phone.eval(&format!("{button}.click()")).await;
    // The issuer's login page (Keycloak asks for a password here), then back with a code.
    let user = "document.querySelector('a[data-user=\"jean.martin@gaveur.fr\"]')";
    phone
        .eval_until(&format!("!!{user}"), Duration::from_secs(15))
        .await;
    let login_url = phone.eval("location.href").await;
    assert!(
        login_url
            .as_str()
            .unwrap()
            .contains("/realms/gaveurs-production/protocol/openid-connect/auth?"),
        "{login_url}"
    );
    phone.eval(&format!("{user}.click()")).await;
    phone
        .eval_until(
            "document.body.dataset.live === 'open'",
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(
        phone.eval("location.search").await,
        "",
        "the code is not left in the URL"
    );
    let first: Value = phone
        .eval("JSON.parse(atob(sessionStorage.getItem('gaveurs.token').split('.')[1].replace(/-/g,'+').replace(/_/g,'/')))")
        .await;
    assert_eq!(first["azp"], "gaveurs-web");
    assert_eq!(first["gaveur_id"], 1);

    // Two renewals later the first token has expired; the channel is still open and live.
    phone
        .eval_until(
            "Number(document.body.dataset.renewals) >= 2",
            Duration::from_secs(30),
        )
        .await;
    let expired = phone
        .eval(&format!("Date.now() / 1000 > {}", first["exp"]))
        .await;
    assert_eq!(expired, true);
    publish(&gaveurs, &[gavage(&meal("LL2612501", 1, "LL", 1, "matin"))]).await;
    phone
        .eval_until(
            &format!(
                "document.body.dataset.live === 'open' && {} === '1'",
                meals_of("LL2612501")
            ),
            Duration::from_secs(10),
        )
        .await;

    // Signing out revokes the session: its refresh token renews nothing any more.
    let refresh = phone
        .eval("JSON.parse(sessionStorage.getItem('gaveurs.session')).refresh")
        .await;
    phone
        .eval("document.querySelector('#signout').click()")
        .await;
    phone
        .eval_until(&format!("!!{button}"), Duration::from_secs(10))
        .await;
    let status = phone
        .eval(&format!(
            "fetch('/realms/gaveurs-production/protocol/openid-connect/token', {{method: 'POST', headers: {{'content-type': 'application/x-www-form-urlencoded'}}, body: new URLSearchParams({{grant_type: 'refresh_token', refresh_token: {refresh}, client_id: 'gaveurs-web'}})}}).then(r => r.status)"
        ))
        .await;
    assert_eq!(status, 400);
    gaveurs.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superviseur_sees_every_site_filters_alerts_and_opens_a_lot_a_technician_sees_stations() {
    let dir = tempfile::tempdir().unwrap();
    // Rolls every second, so the sites' published KPIs come quickly.
    let gaveurs = Gaveurs::start(dir.path(), "[storage]\nroll_interval_s = 1\n");
    let mut refusal = meal("LL2612602", 2, "LS", 2, "matin");
    refusal["dose_reelle"] = 50.0.into();
    publish(
        &gaveurs,
        &[
            gavage(&meal("LL2612601", 1, "LL", 1, "matin")),
            gavage(&meal("LL2612602", 2, "LS", 1, "matin")),
            gavage(&refusal),
        ],
    )
    .await;

    let mut desk = Browser::launch(1280, 900).await;
    sign_in_to_sites(&mut desk, &gaveurs, "superviseur@euralis.fr").await;
    // Each site's lots as published (the page reads them again every 15 s).
    for site in ["LL", "LS"] {
        desk.eval_until(
            &format!("document.querySelector('tr[data-site=\"{site}\"] [data-kpi=\"lots_actifs\"]')?.textContent === '1'"),
            Duration::from_secs(40),
        )
        .await;
    }
    // A meal received live counts at once.
    publish(&gaveurs, &[gavage(&meal("LL2612601", 1, "LL", 1, "soir"))]).await;
    desk.eval_until(
        "document.querySelector('tr[data-site=\"LL\"] [data-kpi=\"live_meals\"]')?.textContent === '1'",
        Duration::from_secs(10),
    )
    .await;
    // The LS refusal's critical alert, gone when only LL's alerts are asked for.
    let alert = "document.querySelector('#site-alerts .alert.critical')";
    let text = desk
        .eval_until(&format!("{alert}?.textContent"), Duration::from_secs(10))
        .await;
    assert!(text.as_str().unwrap().contains("LL2612602"), "{text}");
    desk.eval("(() => { const s = document.querySelector('#alert-site'); s.value = 'LL'; s.dispatchEvent(new Event('change')); })()")
        .await;
    desk.eval_until(&format!("!{alert}"), Duration::from_secs(5))
        .await;
    desk.screenshot(&artifact("web-sites.png")).await;

    // Any lot, found and opened: its gaveur's channel, that lot only.
    desk.eval("(() => { document.querySelector('#lot-code').value = 'LL2612601'; document.querySelector('#lot-search button').click(); })()")
        .await;
    let link = "document.querySelector('[data-open-lot=\"LL2612601\"]')";
    desk.eval_until(&format!("!!{link}"), Duration::from_secs(10))
        .await;
    desk.eval(&format!("{link}.click()")).await;
    desk.eval_until(
        &format!("{} === '2'", meals_of("LL2612601")),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        desk.eval("document.querySelectorAll('[data-lot]').length")
            .await,
        1
    );

    // A SQAL technician: their site's stations only, no lot search.
    let mut tech = Browser::launch(360, 740).await;
    sign_in_to_sites(&mut tech, &gaveurs, "tech@sqal.fr").await;
    publish(
        &gaveurs,
        &[(
            "sqal/LL/ESP32_LL_01/measurements".into(),
            support::records::sqal("ESP32_LL_01", "W-61", 0.8)
                .to_string()
                .into_bytes(),
            1,
        )],
    )
    .await;
    tech.eval_until(
        "!!document.querySelector('[data-station=\"ESP32_LL_01\"]')",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        tech.eval("!!document.querySelector('#lot-search')").await,
        false
    );
    assert_eq!(
        tech.eval("document.querySelector('#app').textContent.includes('null')")
            .await,
        false
    );
    tech.screenshot(&artifact("web-sites-technician-360.png"))
        .await;
    gaveurs.stop_cleanly();
}

async fn sign_in_to_sites(browser: &mut Browser, gaveurs: &Gaveurs, email: &str) {
    sign_in_at(browser, gaveurs, "/sites", email).await;
    browser
        .eval_until(
            "!!document.querySelector('table.sites')",
            Duration::from_secs(15),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_sign_in_is_not_served_beyond_loopback_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("[http]\nlisten = \"0.0.0.0:{}\"\n", free_port());
    let gaveurs = Gaveurs::start(dir.path(), &listen);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], gaveurs.http.port()));
    assert_eq!(
        http_get(local, "/").await.0,
        200,
        "the page itself is for anyone"
    );
    assert_eq!(http_get(local, "/auth/dev/users").await.0, 404);
    let minted = reqwest::Client::new()
        .post(format!("http://{local}/auth/dev/token"))
        .json(&serde_json::json!({"email": "admin@euralis.fr"}))
        .send()
        .await
        .unwrap();
    assert_eq!(minted.status(), 404);
    let authorize = "/realms/gaveurs-production/protocol/openid-connect/auth?response_type=code&client_id=gaveurs-web&redirect_uri=http%3A%2F%2F127.0.0.1%2F&code_challenge=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx&code_challenge_method=S256";
    assert_eq!(http_get(local, authorize).await.0, 404);
    gaveurs.stop_cleanly();

    // Asked for explicitly: served, with a warning in the log.
    let gaveurs = Gaveurs::start(
        dir.path(),
        &format!("{listen}\n[auth]\ndev_signin = true\n"),
    );
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], gaveurs.http.port()));
    assert_eq!(http_get(local, "/auth/dev/users").await.0, 200);
    gaveurs.stop_cleanly();
    let errors = std::fs::read_to_string(dir.path().join("logs/errors.log")).unwrap();
    assert!(
        errors.contains("dev_signin = true: the web page mints a demo user's token for anyone"),
        "{errors}"
    );
}

/// Figures for the closing note, not a check: `scripts/bench-web.sh` runs it. The first
/// contentful paint of the page, the time until the sign-in picker is on screen, and the
/// browser's CPU (the page's tasks, from DevTools' `Performance.getMetrics`) while a lot
/// receives 5 meals a second for 20 s on a 360 px screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: scripts/bench-web.sh"]
async fn web_page_figures() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let mut phone = Browser::launch(360, 740).await;
    phone.goto(&format!("http://{}/", gaveurs.http)).await;
    phone
        .eval_until(
            "!!document.querySelector('[data-user=\"jean.martin@gaveur.fr\"]')",
            Duration::from_secs(15),
        )
        .await;
    let paint = phone
        .eval("performance.getEntriesByName('first-contentful-paint')[0]?.startTime")
        .await;
    let picker = phone.eval("performance.now()").await;
    let transferred = phone
        .eval("performance.getEntriesByType('resource').reduce((n, r) => n + r.transferSize, 0) + performance.getEntriesByType('navigation')[0].transferSize")
        .await;
    sign_in(&mut phone, &gaveurs, "jean.martin@gaveur.fr").await;
    phone
        .call("Performance.enable", serde_json::json!({}))
        .await;
    let task_seconds = |metrics: &Value| {
        metrics["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "TaskDuration")
            .and_then(|m| m["value"].as_f64())
            .unwrap()
    };
    let before = task_seconds(
        &phone
            .call("Performance.getMetrics", serde_json::json!({}))
            .await,
    );
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    for n in 0..100i64 {
        pace.tick().await;
        let record = meal(
            "LL2612901",
            1,
            "LL",
            1 + n / 2,
            if n % 2 == 0 { "matin" } else { "soir" },
        );
        publish(&gaveurs, &[gavage(&record)]).await;
    }
    phone
        .eval_until(
            &format!("{} === '100'", meals_of("LL2612901")),
            Duration::from_secs(30),
        )
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let after = task_seconds(
        &phone
            .call("Performance.getMetrics", serde_json::json!({}))
            .await,
    );
    println!(
        "web figures: first contentful paint {:.0} ms, sign-in picker on screen {:.0} ms, {} bytes transferred on first load, browser main-thread busy {:.1} % at 5 meals/s over {seconds:.1} s",
        paint.as_f64().unwrap_or(f64::NAN),
        picker.as_f64().unwrap(),
        transferred,
        (after - before) / seconds * 100.0
    );
    gaveurs.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_and_acknowledging_work_from_the_keyboard_alone() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let mut refusal = meal("LL2612701", 1, "LL", 1, "matin");
    refusal["dose_reelle"] = 50.0.into();
    publish(&gaveurs, &[gavage(&refusal)]).await;
    let mut phone = Browser::launch(360, 740).await;
    phone.goto(&format!("http://{}/", gaveurs.http)).await;
    // The page puts the focus on its first control: the realm's sign-in.
    phone
        .eval_until(
            "document.activeElement?.dataset?.signin === 'realm'",
            Duration::from_secs(15),
        )
        .await;
    phone.press("Enter").await;
    // The issuer's login page: Tab to the first person listed, Tab again to the next (Jean
    // comes after the admin and the superviseur), Enter.
    phone
        .eval_until(
            "!!document.querySelector('a[data-user]')",
            Duration::from_secs(15),
        )
        .await;
    for _ in 0..3 {
        phone.press("Tab").await;
    }
    assert_eq!(
        phone.eval("document.activeElement.dataset.user").await,
        "jean.martin@gaveur.fr"
    );
    phone.press("Enter").await;
    phone
        .eval_until(
            "document.body.dataset.live === 'open' && !!document.querySelector('[data-lot=\"LL2612701\"] .alert.critical button')",
            Duration::from_secs(15),
        )
        .await;
    // The alert's severity is written, not only coloured; its button is reached by Tab.
    let severity = phone
        .eval("document.querySelector('[data-lot=\"LL2612701\"] .alert.critical .severity').textContent")
        .await;
    assert_eq!(severity, "Critique");
    let mut reached = false;
    for _ in 0..20 {
        phone.press("Tab").await;
        if phone
            .eval("document.activeElement.closest('.alert.critical') !== null && document.activeElement.tagName === 'BUTTON'")
            .await
            == true
        {
            reached = true;
            break;
        }
    }
    assert!(reached, "the Acknowledge button is reachable with Tab");
    phone.press("Enter").await;
    phone
        .eval_until(
            "document.querySelector('[data-lot=\"LL2612701\"] .alert.critical')?.dataset.state === 'acknowledged'",
            Duration::from_secs(10),
        )
        .await;
    gaveurs.stop_cleanly();
}
