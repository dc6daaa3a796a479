use chrono::TimeZone;

use super::*;

fn meal(code_lot: &str, jour: i64, moment: &str, hour: u32, day: u32) -> Record {
    serde_json::from_value(serde_json::json!({
        "record_type": "gavage", "code_lot": code_lot, "gaveur_id": 1, "site": "LL",
        "jour": jour, "moment": moment, "dose_theorique": 200.0, "dose_reelle": 200.0,
        "timestamp": Utc.with_ymd_and_hms(2026, 1, day, hour, 0, 0).unwrap(),
    }))
    .unwrap()
}

#[tokio::test]
async fn default_queries_plan_against_empty_tables() {
    let mut engine = Engine::new(AnalyticsSettings::default());
    engine.check_queries().await.unwrap();
}

#[tokio::test]
async fn a_broken_query_names_itself() {
    let mut settings = AnalyticsSettings::default();
    settings.kpis.push(KpiQuery {
        name: "typo".into(),
        sql: "SELECT nope FROM meals".into(),
        dataset: None,
        stream: None,
    });
    let error = Engine::new(settings).check_queries().await.unwrap_err();
    assert!(error.to_string().contains("`typo`"), "{error}");
}

#[tokio::test]
async fn a_day_closes_once_the_lot_watermark_passes_its_end() {
    let mut engine = Engine::new(AnalyticsSettings::default());
    let first = meal("LL1", 1, "matin", 6, 5);
    engine.step(&[&first]).await.unwrap();
    assert!(engine.lots["LL1"].closed_days.is_empty());
    // 00:30 next day is within the hour of lateness: day 1 still open.
    let night = meal("LL1", 1, "soir", 23, 5);
    engine.step(&[&night]).await.unwrap();
    assert!(engine.lots["LL1"].closed_days.is_empty());
    let next = meal("LL1", 2, "matin", 6, 6);
    engine.step(&[&next]).await.unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
    assert!(engine.lots["LL1"].closed_days.contains(&day));
}

#[tokio::test]
async fn a_meal_seen_twice_counts_once() {
    let mut engine = Engine::new(AnalyticsSettings::default());
    let m = meal("LL1", 1, "matin", 6, 5);
    engine.step(&[&m]).await.unwrap();
    let out = engine.step(&[&m]).await.unwrap();
    let lot = out.kpis.iter().find(|k| k.kpi.name == "lot").unwrap();
    let rows = json_rows(&lot.batches).unwrap();
    assert_eq!(rows[0]["repas"], 1);
    assert_eq!(rows[0]["mais_total_g"], 200.0);
}

#[tokio::test]
async fn a_lots_meals_stay_in_day_order_whatever_order_they_arrive_in() {
    // A lot's sums are added in this order: the same records, in whatever order a replay or
    // a rebalance delivers them, give the same KPI values to the last bit.
    let mut engine = Engine::new(AnalyticsSettings::default());
    let day2 = meal("LL1", 2, "matin", 6, 6);
    let day1_soir = meal("LL1", 1, "soir", 16, 5);
    let day1_matin = meal("LL1", 1, "matin", 6, 5);
    engine.step(&[&day2]).await.unwrap();
    engine.step(&[&day1_soir]).await.unwrap();
    engine.step(&[&day1_matin, &day1_soir]).await.unwrap();
    let keys: Vec<(i64, &str)> = engine.lots["LL1"]
        .meals
        .values()
        .map(|m| (m.jour, m.moment.as_str()))
        .collect();
    assert_eq!(keys, [(1, "matin"), (1, "soir"), (2, "matin")]);
}

#[tokio::test]
async fn a_configured_query_still_reads_the_meals_of_window_days() {
    let mut settings = AnalyticsSettings::default();
    settings.kpis.push(KpiQuery {
        name: "window_meal_counts".into(),
        sql: "SELECT CAST(key AS BIGINT) AS gaveur_id, day, count(*) AS meals \
              FROM window_meals WHERE scope = 'gaveur' GROUP BY key, day"
            .into(),
        dataset: None,
        stream: None,
    });
    let mut engine = Engine::new(settings);
    let day_one = [meal("LL1", 1, "matin", 6, 5), meal("LL1", 1, "soir", 18, 5)];
    engine
        .step(&day_one.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    // The next morning closes day one: its windows are computed.
    let out = engine
        .step(&[&meal("LL1", 2, "matin", 6, 6)])
        .await
        .unwrap();
    let counts = out
        .kpis
        .iter()
        .find(|k| k.kpi.name == "window_meal_counts")
        .unwrap();
    let rows = json_rows(&counts.batches).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["day"], "2026-01-05");
    assert_eq!(rows[0]["meals"], 2);
}
