//! What a dashboard client sees: the filters it sets and the scope its token allows, judged
//! against each record's kind, site, device and grade.

use gaveurs_schemas::records::{Grade, Site};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RealtimeKind {
    Gavage,
    Sqal,
}

pub(super) struct RealtimeMeta {
    pub kind: RealtimeKind,
    pub site: Site,
    pub device_id: Option<String>,
    pub grade: Option<Grade>,
}

/// The V3 dashboard filters, set with `{"type":"subscribe","filters":{…}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RealtimeFilters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_code: Option<String>,
    /// Only SQAL samples of this grade or better (`A+`, `A`, `B`, `C`, `REJECT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_grade: Option<String>,
    /// `sqal_only` leaves out gavage messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<String>,
}

impl RealtimeFilters {
    pub(super) fn accepts(&self, meta: &RealtimeMeta) -> bool {
        if self.data_type.as_deref() == Some("sqal_only") && meta.kind != RealtimeKind::Sqal {
            return false;
        }
        if let Some(site) = &self.site_code
            && site != meta.site.as_str()
        {
            return false;
        }
        if let Some(device) = &self.device_id
            && meta.device_id.as_deref() != Some(device.as_str())
        {
            return false;
        }
        if let Some(min) = self.min_grade.as_deref().and_then(Grade::parse) {
            // Gavage messages carry no grade; a grade filter is about samples.
            if let Some(grade) = meta.grade
                && grade < min
            {
                return false;
            }
        }
        true
    }
}

/// What a dashboard client may see, from its token: which sites (all when `None`) and
/// whether gavage data at all (a technicien_sqal sees SQAL only).
#[derive(Debug, Clone, Default)]
pub struct RealtimeScope {
    pub site: Option<String>,
    pub sqal_only: bool,
}

impl RealtimeScope {
    /// Does this scope include everything `other` shows? A renewal token must cover the
    /// scope the socket was opened with, or the socket would outlive its access.
    pub fn covers(&self, other: &RealtimeScope) -> bool {
        (!self.sqal_only || other.sqal_only) && (self.site.is_none() || self.site == other.site)
    }

    pub(super) fn accepts(&self, meta: &RealtimeMeta) -> bool {
        !(self.sqal_only && meta.kind != RealtimeKind::Sqal)
            && self
                .site
                .as_deref()
                .is_none_or(|site| site == meta.site.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(site: Site, grade: Grade) -> RealtimeMeta {
        RealtimeMeta {
            kind: RealtimeKind::Sqal,
            site,
            device_id: Some(format!("ESP32_{site}_01")),
            grade: Some(grade),
        }
    }

    #[test]
    fn filters_combine() {
        let meal = RealtimeMeta {
            kind: RealtimeKind::Gavage,
            site: Site::LL,
            device_id: None,
            grade: None,
        };
        let all = RealtimeFilters::default();
        assert!(all.accepts(&meal) && all.accepts(&sample(Site::LS, Grade::C)));
        let sqal_ll_b = RealtimeFilters {
            site_code: Some("LL".into()),
            min_grade: Some("B".into()),
            data_type: Some("sqal_only".into()),
            ..Default::default()
        };
        assert!(!sqal_ll_b.accepts(&meal));
        assert!(sqal_ll_b.accepts(&sample(Site::LL, Grade::A)));
        assert!(sqal_ll_b.accepts(&sample(Site::LL, Grade::B)));
        assert!(!sqal_ll_b.accepts(&sample(Site::LL, Grade::C)));
        assert!(!sqal_ll_b.accepts(&sample(Site::LS, Grade::APlus)));
        let device = RealtimeFilters {
            device_id: Some("ESP32_MT_01".into()),
            ..Default::default()
        };
        assert!(device.accepts(&sample(Site::MT, Grade::C)));
        assert!(!device.accepts(&sample(Site::LL, Grade::C)));
    }

    #[test]
    fn a_scope_covers_only_what_it_can_see_itself() {
        let scope = |site: Option<&str>, sqal_only| RealtimeScope {
            site: site.map(str::to_string),
            sqal_only,
        };
        assert!(scope(None, false).covers(&scope(Some("LL"), true)));
        assert!(scope(Some("LL"), false).covers(&scope(Some("LL"), true)));
        assert!(!scope(Some("LS"), false).covers(&scope(Some("LL"), false)));
        assert!(!scope(Some("LL"), false).covers(&scope(None, false)));
        assert!(!scope(None, true).covers(&scope(None, false)));
    }
}
