//! The validation operator: turns an input's bytes into a typed record, or into the
//! [`Rejection`] that becomes its dead-letter row.

use gaveurs_schemas::dead_letter::{RejectReason, Rejection};
use gaveurs_schemas::records::{DeviceStatus, GavageMeal, LotOutcome, Record, SqalSample};
use gaveurs_schemas::route::{Route, Target};
use gaveurs_schemas::time::SiteTimeZones;
use gaveurs_schemas::validation::DecodeError;

/// Largest record accepted by default (SPEC §9).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

pub enum Validated {
    Record(Record),
    DeviceStatus(DeviceStatus),
}

#[derive(Debug, Clone)]
pub struct Validator {
    pub max_record_bytes: usize,
    pub zones: SiteTimeZones,
}

impl Default for Validator {
    fn default() -> Self {
        Self {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            zones: SiteTimeZones::default(),
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
        Ok(Validated::Record(record))
    }
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
