//! MQTT topic conventions (SPEC §2):
//! `gaveurs/{site}/{gaveur_id}/gavage`, `gaveurs/{site}/{gaveur_id}/outcome`,
//! `sqal/{site}/{device_id}/measurements`, `sqal/{site}/{device_id}/status`.

use crate::intake::{Route, Target};

/// The topic filters an external-broker subscription uses.
pub const SUBSCRIPTIONS: [&str; 4] = [
    "gaveurs/+/+/gavage",
    "gaveurs/+/+/outcome",
    "sqal/+/+/measurements",
    "sqal/+/+/status",
];

pub fn route(topic: &str) -> Route {
    let parts: Vec<&str> = topic.split('/').collect();
    match parts.as_slice() {
        ["gaveurs", site, gaveur, kind @ ("gavage" | "outcome")] if !site.is_empty() => {
            let Ok(gaveur_id) = gaveur.parse::<i64>() else {
                return Route::to(Target::Unknown);
            };
            Route {
                target: if *kind == "gavage" {
                    Target::Gavage
                } else {
                    Target::LotOutcome
                },
                site: Some(site.to_string()),
                gaveur_id: Some(gaveur_id),
                device_id: None,
            }
        }
        ["sqal", site, device, kind @ ("measurements" | "status")]
            if !site.is_empty() && !device.is_empty() =>
        {
            Route {
                target: if *kind == "measurements" {
                    Target::Sqal
                } else {
                    Target::DeviceStatus
                },
                site: Some(site.to_string()),
                gaveur_id: None,
                device_id: Some(device.to_string()),
            }
        }
        _ => Route::to(Target::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_to_streams_and_facts() {
        let r = route("gaveurs/LL/12/gavage");
        assert_eq!(r.target, Target::Gavage);
        assert_eq!(r.site.as_deref(), Some("LL"));
        assert_eq!(r.gaveur_id, Some(12));
        assert_eq!(route("gaveurs/LS/3/outcome").target, Target::LotOutcome);
        let r = route("sqal/MT/ESP32_MT_01/measurements");
        assert_eq!(r.target, Target::Sqal);
        assert_eq!(r.device_id.as_deref(), Some("ESP32_MT_01"));
        assert_eq!(
            route("sqal/MT/ESP32_MT_01/status").target,
            Target::DeviceStatus
        );
    }

    #[test]
    fn anything_else_is_unknown() {
        for topic in [
            "gaveurs/LL/abc/gavage",
            "gaveurs/LL/1/other",
            "gaveurs//1/gavage",
            "sqal/LL/x/measurements/extra",
            "random",
            "",
        ] {
            assert_eq!(route(topic).target, Target::Unknown, "{topic}");
        }
    }
}
