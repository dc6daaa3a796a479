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

/// Serialises an instant exactly as chrono's `Serialize` does (RFC 3339, `Z`, the fraction
/// in 0, 3, 6 or 9 digits), without going through `fmt`: every logged record carries two or
/// three instants, and chrono's formatter was a tenth of the log encoding's time (perf).
/// Years outside 0–9999 and leap seconds are left to chrono.
pub fn serialize_utc<S: serde::Serializer>(
    instant: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut text = [0u8; 30];
    match write_rfc3339(instant, &mut text) {
        Some(len) => serializer
            .serialize_str(std::str::from_utf8(&text[..len]).expect("digits and ASCII marks")),
        None => serde::Serialize::serialize(instant, serializer),
    }
}

fn write_rfc3339(instant: &DateTime<Utc>, out: &mut [u8; 30]) -> Option<usize> {
    use chrono::{Datelike, Timelike};
    let year = instant.year();
    let nanos = instant.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    fn digits(out: &mut [u8], value: u32) {
        let mut value = value;
        for slot in out.iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    digits(&mut out[0..4], year as u32);
    out[4] = b'-';
    digits(&mut out[5..7], instant.month());
    out[7] = b'-';
    digits(&mut out[8..10], instant.day());
    out[10] = b'T';
    digits(&mut out[11..13], instant.hour());
    out[13] = b':';
    digits(&mut out[14..16], instant.minute());
    out[16] = b':';
    digits(&mut out[17..19], instant.second());
    let mut len = 19;
    let fraction = if nanos == 0 {
        None
    } else if nanos.is_multiple_of(1_000_000) {
        Some((nanos / 1_000_000, 3))
    } else if nanos.is_multiple_of(1_000) {
        Some((nanos / 1_000, 6))
    } else {
        Some((nanos, 9))
    };
    if let Some((value, width)) = fraction {
        out[len] = b'.';
        digits(&mut out[len + 1..len + 1 + width], value);
        len += 1 + width;
    }
    out[len] = b'Z';
    Some(len + 1)
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

    #[test]
    fn instants_serialise_as_chrono_does() {
        #[derive(serde::Serialize)]
        struct Fast(#[serde(serialize_with = "serialize_utc")] DateTime<Utc>);
        let mut nanos = 0u32;
        let mut seconds = -62_167_219_300i64; // just before year 0
        for step in 0..20_000i64 {
            // Whole seconds, milli-, micro- and nanosecond fractions, over every era chrono
            // formats (years 0 to 9999 and beyond).
            nanos = match step % 4 {
                0 => 0,
                1 => (nanos + 7_000_000) % 1_000_000_000,
                2 => (nanos + 3_000) % 1_000_000_000,
                _ => (nanos + 123_457) % 1_000_000_000,
            };
            seconds += 16_661_111 + step;
            let Some(instant) = DateTime::from_timestamp(seconds, nanos) else {
                continue;
            };
            assert_eq!(
                serde_json::to_string(&Fast(instant)).unwrap(),
                serde_json::to_string(&instant).unwrap()
            );
        }
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        assert_eq!(
            serde_json::to_string(&Fast(leap)).unwrap(),
            "\"2016-12-31T23:59:60.500Z\""
        );
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
