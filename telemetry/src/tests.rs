use super::*;

#[test]
fn renders_openmetrics_with_types_and_labels() {
    let registry = Registry::default();
    let mqtt = registry.counter(
        "gaveurs_records_in_total",
        "Accepted records.",
        &[("stream", "gavage"), ("transport", "mqtt")],
    );
    mqtt.inc_by(3);
    registry
        .counter(
            "gaveurs_records_in_total",
            "Accepted records.",
            &[("stream", "gavage"), ("transport", "mqtt")],
        )
        .inc();
    registry.read_at_scrape("gaveurs_ws_clients", "Clients.", &[], || 2.0);
    registry.read_at_scrape(
        "gaveurs_sms_total",
        "Texts.",
        &[("outcome", "sent")],
        || 5.0,
    );
    let latency = registry.histogram(
        "gaveurs_latency_seconds",
        "Latency.",
        &[("path", "ws")],
        &[0.01, 0.1],
    );
    latency.observe(0.005);
    latency.observe(0.05);
    latency.observe(3.0);
    let text = registry.render();
    for line in [
        "# TYPE gaveurs_records_in counter\n",
        "gaveurs_records_in_total{stream=\"gavage\",transport=\"mqtt\"} 4\n",
        "# TYPE gaveurs_ws_clients gauge\n",
        "gaveurs_ws_clients 2.0\n",
        "# TYPE gaveurs_sms counter\n",
        "gaveurs_sms_total{outcome=\"sent\"} 5\n",
        "# TYPE gaveurs_latency_seconds histogram\n",
        "gaveurs_latency_seconds_bucket{le=\"0.01\",path=\"ws\"} 1\n",
        "gaveurs_latency_seconds_bucket{le=\"0.1\",path=\"ws\"} 2\n",
        "gaveurs_latency_seconds_bucket{le=\"+Inf\",path=\"ws\"} 3\n",
        "gaveurs_latency_seconds_count{path=\"ws\"} 3\n",
        "# EOF\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
}

#[test]
fn a_scrape_never_shows_a_bucket_ahead_of_the_count() {
    let registry = Arc::new(Registry::default());
    let histogram = registry.histogram("gaveurs_h_seconds", "H.", &[], LATENCY_BUCKETS);
    let writer = {
        let histogram = histogram.clone();
        std::thread::spawn(move || {
            for i in 0..200_000 {
                histogram.observe(f64::from(i % 100) / 1000.0);
            }
        })
    };
    let value = |text: &str, prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    while !writer.is_finished() {
        let text = registry.render();
        let count = value(&text, "gaveurs_h_seconds_count ");
        let infinite = value(&text, "gaveurs_h_seconds_bucket{le=\"+Inf\"} ");
        assert_eq!(infinite, count, "{text}");
    }
    writer.join().unwrap();
    assert_eq!(histogram.count(), 200_000);
}
