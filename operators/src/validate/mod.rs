//! The validation operator: turns an input's bytes into a typed record, or into the
//! [`Rejection`] that becomes its dead-letter row.
//!
//! Event times are bounded (SPEC §1.4): one more than [`Validator::max_future_skew`] after the
//! record's receipt is `timestamp_in_future`, one before [`EARLIEST_EVENT_DATE`]
//! `timestamp_out_of_range`; any other age in the past is accepted. They are judged against
//! the receipt time the source stamped, never a fresh clock read, so a replay of the same
//! inputs gets the same verdicts.

use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, Utc};
use gaveurs_schemas::dead_letter::{RejectReason, Rejection};
use gaveurs_schemas::records::{DeviceStatus, GavageMeal, LotOutcome, Record, SqalSample};
use gaveurs_schemas::route::{Route, Target};
use gaveurs_schemas::time::{SiteTimeZones, local_to_utc};
use gaveurs_schemas::validation::DecodeError;

/// Largest record accepted by default (SPEC §9).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// How far ahead of its receipt an event time may be by default (SPEC §1.4): producers'
/// clocks drift, but not by more.
pub const DEFAULT_MAX_FUTURE_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// Event times before this day (UTC) are refused: no farm record is that old, and such a date
/// is a clock that was never set (1970) or a field left at its zero (year 0 or 1).
pub const EARLIEST_EVENT_DATE: NaiveDate = NaiveDate::from_ymd_opt(2000, 1, 1).expect("valid date");

pub enum Validated {
    Record(Record),
    DeviceStatus(DeviceStatus),
}

#[derive(Debug, Clone)]
pub struct Validator {
    pub max_record_bytes: usize,
    pub zones: SiteTimeZones,
    /// An event time later than the record's receipt plus this is refused.
    pub max_future_skew: chrono::Duration,
}

impl Default for Validator {
    fn default() -> Self {
        Self {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            zones: SiteTimeZones::default(),
            max_future_skew: DEFAULT_MAX_FUTURE_SKEW,
        }
    }
}

impl Validator {
    pub fn validate(
        &self,
        route: &Route,
        payload: &[u8],
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Validated, Rejection> {
        if payload.len() > self.max_record_bytes {
            return Err(Rejection::new(
                RejectReason::Oversize,
                format!(
                    "record of {} bytes exceeds the limit of {} bytes",
                    payload.len(),
                    self.max_record_bytes
                ),
            ));
        }
        let record = match route.target {
            Target::Unknown => {
                return Err(Rejection::new(
                    RejectReason::UnknownTopic,
                    "topic matches no stream (expected gaveurs/{site}/{gaveur_id}/gavage|outcome \
                     or sqal/{site}/{device_id}/measurements|status)",
                ));
            }
            Target::DeviceStatus => {
                // A heartbeat is never refused for its content: a station that cannot say
                // much still says it is alive.
                let status =
                    DeviceStatus::from_message(payload, route.device_id.as_deref(), received_at)
                        .unwrap_or_else(|| DeviceStatus {
                            device_id: route.device_id.clone().unwrap_or_default(),
                            received_at,
                            status: serde_json::Value::Null,
                        });
                return Ok(Validated::DeviceStatus(status));
            }
            Target::Gavage => Record::Gavage(decoded(GavageMeal::decode(payload, &self.zones))?),
            Target::LotOutcome => {
                Record::LotOutcome(decoded(LotOutcome::decode(payload, &self.zones))?)
            }
            Target::GavageOrOutcome => {
                if is_lot_outcome(payload)? {
                    Record::LotOutcome(decoded(LotOutcome::decode(payload, &self.zones))?)
                } else {
                    Record::Gavage(decoded(GavageMeal::decode(payload, &self.zones))?)
                }
            }
            Target::Sqal => Record::Sqal(Box::new(decoded(SqalSample::decode(payload))?)),
        };
        check_against_route(&record, route)?;
        self.check_event_time(&record, payload, received_at)?;
        Ok(Validated::Record(record))
    }

    fn check_event_time(
        &self,
        record: &Record,
        payload: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        match record {
            Record::Gavage(meal) => self.check_instant("timestamp", meal.timestamp, received_at),
            Record::Sqal(sample) => self.check_instant("timestamp", sample.timestamp, received_at),
            Record::LotOutcome(outcome) => {
                // Without a `timestamp`, an outcome's event time is the end of `date_fin`,
                // hours ahead when the lot is delivered that day: its date is what is judged.
                self.check_day(outcome, received_at)?;
                if gives_its_timestamp(payload) {
                    self.check_instant("timestamp", outcome.event_time, received_at)?;
                }
                Ok(())
            }
        }
    }

    fn check_instant(
        &self,
        field: &str,
        event_time: DateTime<Utc>,
        received_at: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        let text = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        if self.too_far_ahead(event_time, received_at) {
            return Err(Rejection::new(
                RejectReason::TimestampInFuture,
                format!(
                    "{field} {} is more than {} s after the record was received ({}); check the \
                     producer's clock",
                    text(event_time),
                    self.max_future_skew.num_seconds(),
                    text(received_at)
                ),
            ));
        }
        if event_time < earliest_event_time() {
            return Err(out_of_range(field, &text(event_time)));
        }
        Ok(())
    }

    fn too_far_ahead(&self, event_time: DateTime<Utc>, received_at: DateTime<Utc>) -> bool {
        // A skew past the end of time is no bound.
        received_at
            .checked_add_signed(self.max_future_skew)
            .is_some_and(|latest| event_time > latest)
    }

    /// `date_fin` is a day of the site's calendar: it may not begin after the record was
    /// received (give or take the skew).
    fn check_day(&self, outcome: &LotOutcome, received_at: DateTime<Utc>) -> Result<(), Rejection> {
        let tz = self.zones.for_site(outcome.site.as_str());
        let day_starts = local_to_utc(outcome.date_fin.and_time(NaiveTime::MIN), tz);
        if self.too_far_ahead(day_starts, received_at) {
            return Err(Rejection::new(
                RejectReason::TimestampInFuture,
                format!(
                    "date_fin {} is after the day the record was received ({} at the site)",
                    outcome.date_fin,
                    received_at.with_timezone(&tz).date_naive()
                ),
            ));
        }
        if outcome.date_fin < EARLIEST_EVENT_DATE {
            return Err(out_of_range("date_fin", &outcome.date_fin.to_string()));
        }
        Ok(())
    }
}

fn earliest_event_time() -> DateTime<Utc> {
    EARLIEST_EVENT_DATE.and_time(NaiveTime::MIN).and_utc()
}

fn out_of_range(field: &str, value: &str) -> Rejection {
    Rejection::new(
        RejectReason::TimestampOutOfRange,
        format!(
            "{field} {value} is before {EARLIEST_EVENT_DATE}, the earliest event time accepted"
        ),
    )
}

/// Whether an outcome carries its own `timestamp` (else its event time is derived from
/// `date_fin`). The payload already decoded as an outcome, so it is JSON.
fn gives_its_timestamp(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct RecordedAt {
        #[serde(default)]
        timestamp: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<RecordedAt>(payload).is_ok_and(|r| r.timestamp.is_some())
}

fn decoded<T>(result: Result<T, DecodeError>) -> Result<T, Rejection> {
    result.map_err(|e| match e {
        DecodeError::NotJson(message) => Rejection::new(RejectReason::NotJson, message),
        DecodeError::Invalid(invalid) => {
            Rejection::new(RejectReason::SchemaInvalid, invalid.to_string())
        }
    })
}

fn is_lot_outcome(payload: &[u8]) -> Result<bool, Rejection> {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(default)]
        record_type: Option<String>,
    }
    let kind: Kind = serde_json::from_slice(payload).map_err(|e| {
        if e.is_data() {
            Rejection::new(RejectReason::SchemaInvalid, format!("record_type: {e}"))
        } else {
            Rejection::new(RejectReason::NotJson, e.to_string())
        }
    })?;
    Ok(kind.record_type.as_deref() == Some("lot_outcome"))
}

/// A record must agree with what its topic says: a gateway publishing gaveur 2's meal on
/// gaveur 1's topic is misconfigured, and storing it would file it under the wrong farmer.
fn check_against_route(record: &Record, route: &Route) -> Result<(), Rejection> {
    let mismatch = |field: &str, record_value: &str, topic_value: &str| {
        Err(Rejection::new(
            RejectReason::TopicMismatch,
            format!("{field} {record_value} does not match the topic's {topic_value}"),
        ))
    };
    if let Some(site) = &route.site
        && record.site().as_str() != site
    {
        return mismatch("site", record.site().as_str(), site);
    }
    if let (Some(topic_gaveur), Some(gaveur)) = (route.gaveur_id, record.gaveur_id())
        && topic_gaveur != gaveur
    {
        return mismatch("gaveur_id", &gaveur.to_string(), &topic_gaveur.to_string());
    }
    if let (Some(device), Record::Sqal(sample)) = (&route.device_id, record)
        && &sample.device_id != device
    {
        return mismatch("device_id", &sample.device_id, device);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meal() -> Vec<u8> {
        json!({"code_lot": "LL1", "gaveur_id": 1, "site": "LL", "jour": 1, "moment": "matin",
               "dose_theorique": 200, "dose_reelle": 198, "timestamp": "2026-01-20T08:00:00"})
        .to_string()
        .into_bytes()
    }

    fn route(topic_site: &str, gaveur: i64) -> Route {
        Route {
            target: Target::Gavage,
            site: Some(topic_site.into()),
            gaveur_id: Some(gaveur),
            device_id: None,
        }
    }

    fn reason(result: Result<Validated, Rejection>) -> RejectReason {
        match result {
            Err(rejection) => rejection.reason,
            Ok(_) => panic!("expected a rejection"),
        }
    }

    #[test]
    fn each_bad_input_has_its_reason() {
        let v = Validator {
            max_record_bytes: 100,
            ..Validator::default()
        };
        let now = chrono::Utc::now();
        assert_eq!(
            reason(v.validate(&route("LL", 1), &[b' '; 101], now)),
            RejectReason::Oversize
        );
        let v = Validator::default();
        assert_eq!(
            reason(v.validate(&route("LL", 1), b"{not json", now)),
            RejectReason::NotJson
        );
        assert_eq!(
            reason(v.validate(&route("LL", 1), b"", now)),
            RejectReason::NotJson
        );
        assert_eq!(
            reason(v.validate(&route("LL", 1), br#"{"code_lot": 5}"#, now)),
            RejectReason::SchemaInvalid
        );
        assert_eq!(
            reason(v.validate(&route("LS", 1), &meal(), now)),
            RejectReason::TopicMismatch
        );
        assert_eq!(
            reason(v.validate(&route("LL", 2), &meal(), now)),
            RejectReason::TopicMismatch
        );
        assert_eq!(
            reason(v.validate(&Route::to(Target::Unknown), &meal(), now)),
            RejectReason::UnknownTopic
        );
        assert!(v.validate(&route("LL", 1), &meal(), now).is_ok());
    }

    #[test]
    fn the_kafka_gavage_topic_carries_outcomes() {
        let outcome = json!({"record_type": "lot_outcome", "code_lot": "LL1", "gaveur_id": 1,
            "site": "LL", "nb_canards_mis_en_gavage": 10, "nb_canards_accroches": 9,
            "date_fin": "2026-01-31"});
        let v = Validator::default();
        let now = chrono::Utc::now();
        let route = Route::to(Target::GavageOrOutcome);
        assert!(matches!(
            v.validate(&route, outcome.to_string().as_bytes(), now),
            Ok(Validated::Record(Record::LotOutcome(_)))
        ));
        assert!(matches!(
            v.validate(&route, &meal(), now),
            Ok(Validated::Record(Record::Gavage(_)))
        ));
    }

    fn received() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-20T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn meal_at(timestamp: &str) -> Vec<u8> {
        json!({"code_lot": "LL1", "gaveur_id": 1, "site": "LL", "jour": 1, "moment": "matin",
               "dose_theorique": 200, "dose_reelle": 198, "timestamp": timestamp})
        .to_string()
        .into_bytes()
    }

    fn sqal_at(timestamp: &str) -> Vec<u8> {
        let matrix = json!(vec![vec![10; 8]; 8]);
        json!({"type": "sensor_data", "device_id": "ESP32_LL_01", "sample_id": "S-1",
               "timestamp": timestamp, "fusion": {"final_score": 0.8},
               "vl53l8ch": {"distance_matrix": matrix, "reflectance_matrix": matrix,
                            "amplitude_matrix": matrix, "ambient_matrix": matrix,
                            "status_matrix": matrix}})
        .to_string()
        .into_bytes()
    }

    fn outcome_of(date_fin: &str, timestamp: Option<&str>) -> Vec<u8> {
        let mut outcome = json!({"code_lot": "LL1", "gaveur_id": 1, "site": "LL",
            "nb_canards_mis_en_gavage": 10, "nb_canards_accroches": 9, "date_fin": date_fin});
        if let Some(timestamp) = timestamp {
            outcome["timestamp"] = json!(timestamp);
        }
        outcome.to_string().into_bytes()
    }

    /// The verdict on `payload` received at [`received`]: `None` when accepted.
    fn verdict(v: &Validator, target: Target, payload: &[u8]) -> Option<RejectReason> {
        let route = Route::to(target);
        match v.validate(&route, payload, received()) {
            Ok(_) => None,
            Err(rejection) => {
                assert_eq!(rejection.reason.stage().as_str(), "validate");
                Some(rejection.reason)
            }
        }
    }

    #[test]
    fn meals_dated_in_the_future_or_before_2000_are_refused() {
        let v = Validator::default();
        let meal = |timestamp: &str| verdict(&v, Target::Gavage, &meal_at(timestamp));
        let future = Some(RejectReason::TimestampInFuture);
        let too_old = Some(RejectReason::TimestampOutOfRange);
        assert_eq!(meal("9999-01-01T00:00:00Z"), future);
        assert_eq!(meal("0001-01-01T00:00:00Z"), too_old);
        assert_eq!(meal("0000-01-01T00:00:00Z"), too_old);
        assert_eq!(meal("1999-12-31T23:59:59Z"), too_old);
        assert_eq!(meal("1970-01-01T01:00:00"), too_old);
        assert_eq!(meal("2000-01-01T00:00:00Z"), None);
        // Any age in the past is accepted: a replay of 2023.
        assert_eq!(meal("2023-03-14T07:00:00"), None);
        // Clocks drift by a few minutes, not more.
        assert_eq!(meal("2026-01-20T12:04:00Z"), None);
        assert_eq!(meal("2026-01-20T12:05:00Z"), None);
        assert_eq!(meal("2026-01-20T12:06:00Z"), future);
        // Site time: 13:04 in Paris is 12:04 UTC.
        assert_eq!(meal("2026-01-20T13:04:00"), None);
        assert_eq!(meal("2026-01-20T13:06:00"), future);
    }

    #[test]
    fn the_allowed_skew_is_configurable() {
        let v = Validator {
            max_future_skew: chrono::Duration::hours(1),
            ..Validator::default()
        };
        assert_eq!(
            verdict(&v, Target::Gavage, &meal_at("2026-01-20T12:06:00Z")),
            None
        );
        assert_eq!(
            verdict(&v, Target::Gavage, &meal_at("2026-01-20T13:01:00Z")),
            Some(RejectReason::TimestampInFuture)
        );
        let unbounded = Validator {
            max_future_skew: chrono::Duration::MAX,
            ..Validator::default()
        };
        assert_eq!(
            verdict(&unbounded, Target::Gavage, &meal_at("9999-01-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn the_receipt_time_is_now_not_the_clock() {
        // Long past by the clock, but after its receipt: refused, on every replay.
        let rejection = Validator::default()
            .validate(
                &Route::to(Target::Gavage),
                &meal_at("2026-01-20T12:10:00Z"),
                received(),
            )
            .err()
            .expect("refused");
        assert_eq!(rejection.reason, RejectReason::TimestampInFuture);
        assert_eq!(
            rejection.message,
            "timestamp 2026-01-20T12:10:00Z is more than 300 s after the record was received \
             (2026-01-20T12:00:00Z); check the producer's clock"
        );
    }

    #[test]
    fn sqal_samples_are_bounded_too() {
        let v = Validator::default();
        let sample = |timestamp: &str| verdict(&v, Target::Sqal, &sqal_at(timestamp));
        assert_eq!(sample("2026-01-20T11:59:00Z"), None);
        assert_eq!(sample("2023-06-01T10:00:00Z"), None);
        assert_eq!(
            sample("9999-01-01T00:00:00Z"),
            Some(RejectReason::TimestampInFuture)
        );
        assert_eq!(
            sample("1999-12-31T23:59:59Z"),
            Some(RejectReason::TimestampOutOfRange)
        );
    }

    #[test]
    fn an_outcome_is_judged_by_its_date_fin_and_its_own_timestamp() {
        let v = Validator::default();
        let outcome = |date_fin: &str, timestamp: Option<&str>| {
            verdict(&v, Target::LotOutcome, &outcome_of(date_fin, timestamp))
        };
        let future = Some(RejectReason::TimestampInFuture);
        // Delivered today: its derived event time (the end of the day) is hours ahead, and
        // that is right.
        assert_eq!(outcome("2026-01-20", None), None);
        assert_eq!(outcome("2023-02-11", None), None);
        assert_eq!(outcome("2026-01-21", None), future);
        assert_eq!(outcome("9999-01-01", None), future);
        assert_eq!(
            outcome("1999-12-31", None),
            Some(RejectReason::TimestampOutOfRange)
        );
        assert_eq!(outcome("2026-01-20", Some("2026-01-20T12:01:00Z")), None);
        assert_eq!(outcome("2026-01-20", Some("2026-01-20T18:00:00Z")), future);
        assert_eq!(
            outcome("2026-01-20", Some("1970-01-01T00:00:00Z")),
            Some(RejectReason::TimestampOutOfRange)
        );
    }

    #[test]
    fn heartbeats_are_never_refused() {
        let v = Validator::default();
        let route = Route {
            target: Target::DeviceStatus,
            site: Some("LL".into()),
            gaveur_id: None,
            device_id: Some("ESP32_LL_01".into()),
        };
        for payload in [
            &b"garbage"[..],
            b"{}",
            br#"{"type":"heartbeat","uptime":5}"#,
        ] {
            match v.validate(&route, payload, chrono::Utc::now()) {
                Ok(Validated::DeviceStatus(s)) => assert_eq!(s.device_id, "ESP32_LL_01"),
                _ => panic!("heartbeat refused"),
            }
        }
    }
}
