//! Event-time parsing. Farm gateways send local wall-clock time without an offset; SQAL
//! stations send UTC with `Z`. Both end up as UTC instants.

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The time zone of a site when the configuration does not say otherwise.
pub const DEFAULT_SITE_TZ: Tz = chrono_tz::Europe::Paris;

const NAIVE_FORMATS: [&str; 4] = [
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
];

/// Parses an ISO-8601 timestamp. With an offset (`Z`, `+02:00`) it is taken as written;
/// without one it is wall-clock time in `local`. A wall-clock time that occurs twice (the
/// autumn change) resolves to the earlier instant; one that does not exist (the spring gap)
/// to the instant an hour later, which is what a clock that was not yet moved meant.
pub fn parse_timestamp(text: &str, local: Tz) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
        return Ok(instant.with_timezone(&Utc));
    }
    let naive = NAIVE_FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .ok_or_else(|| format!("must be an ISO-8601 timestamp (got {text:?})"))?;
    Ok(local_to_utc(naive, local))
}

/// Parses a calendar date (`2026-01-20`) or a timestamp, for fields such as `date_fin`.
pub fn parse_date(text: &str) -> Result<NaiveDate, String> {
    let text = text.trim();
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date);
    }
    parse_timestamp(text, DEFAULT_SITE_TZ)
        .map(|instant| instant.with_timezone(&DEFAULT_SITE_TZ).date_naive())
        .map_err(|_| format!("must be a date YYYY-MM-DD (got {text:?})"))
}

pub fn local_to_utc(naive: NaiveDateTime, local: Tz) -> DateTime<Utc> {
    match local.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(earlier, _) => earlier.with_timezone(&Utc),
        LocalResult::None => {
            let shifted = naive + chrono::Duration::hours(1);
            local
                .from_local_datetime(&shifted)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|| Utc.from_utc_datetime(&naive))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsetless_timestamps_are_paris_wall_clock() {
        let winter = parse_timestamp("2026-01-20T08:00:00", DEFAULT_SITE_TZ).unwrap();
        assert_eq!(winter.to_rfc3339(), "2026-01-20T07:00:00+00:00");
        let summer = parse_timestamp("2026-07-20 08:00:00", DEFAULT_SITE_TZ).unwrap();
        assert_eq!(summer.to_rfc3339(), "2026-07-20T06:00:00+00:00");
    }

    #[test]
    fn explicit_offsets_win() {
        let t = parse_timestamp("2026-01-20T08:00:00Z", DEFAULT_SITE_TZ).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-20T08:00:00+00:00");
    }

    #[test]
    fn dst_edges_resolve() {
        // 02:30 does not exist on 2026-03-29 in Paris; 02:30 happens twice on 2026-10-25.
        let gap = parse_timestamp("2026-03-29T02:30:00", DEFAULT_SITE_TZ).unwrap();
        assert_eq!(gap.to_rfc3339(), "2026-03-29T01:30:00+00:00");
        let twice = parse_timestamp("2026-10-25T02:30:00", DEFAULT_SITE_TZ).unwrap();
        assert_eq!(twice.to_rfc3339(), "2026-10-25T00:30:00+00:00");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse_timestamp("yesterday", DEFAULT_SITE_TZ).is_err());
        assert_eq!(parse_date("2026-02-01").unwrap().to_string(), "2026-02-01");
    }
}

/// The wall-clock time zone of each site, for timestamps sent without an offset.
#[derive(Debug, Clone)]
pub struct SiteTimeZones {
    default: Tz,
    overrides: Vec<(String, Tz)>,
}

impl Default for SiteTimeZones {
    fn default() -> Self {
        Self {
            default: DEFAULT_SITE_TZ,
            overrides: Vec::new(),
        }
    }
}

impl SiteTimeZones {
    pub fn new(default: Tz, overrides: Vec<(String, Tz)>) -> Self {
        Self { default, overrides }
    }

    pub fn for_site(&self, site: &str) -> Tz {
        self.overrides
            .iter()
            .find(|(name, _)| name == site)
            .map(|(_, tz)| *tz)
            .unwrap_or(self.default)
    }
}
