//! The permission matrix of SPEC §6, as one function.
//!
//! | resource | action | allowed |
//! |---|---|---|
//! | any | any | admin |
//! | gavage_data | read | gaveur (own `gaveur_id` only), superviseur |
//! | gavage_data | write | gaveur (own `gaveur_id` only); client role `gateway` of `sensors` (any gaveur of its `site_id`) |
//! | gavage_data | replay | client role `gateway` of `sensors` (its `site_id`) |
//! | analytics | read | superviseur |
//! | analytics | export | client role `export_reports` of `euralis-frontend` |
//! | sqal_data | read | technicien_sqal, superviseur |
//! | sqal_data | write | technicien_sqal; client role `gateway` of `sensors` (devices of its `site_id`) |
//! | sqal_data | replay | client role `gateway` of `sensors` (its `site_id`) |
//! | multi_site | read, write | superviseur |
//!
//! Everything else is denied.

use gaveurs_schemas::Principal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    GavageData,
    Analytics,
    SqalData,
    MultiSite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
    Export,
    /// Writing a record flagged `backfill` (a replay of the past: it never sends an SMS).
    Replay,
}

/// Whose data an action touches: the gaveur and the site, when they matter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub gaveur_id: Option<i64>,
    pub site: Option<&'a str>,
}

pub fn allowed(principal: &Principal, resource: Resource, action: Action, scope: Scope) -> bool {
    if principal.has_role("admin") {
        return true;
    }
    let own_gaveur = || {
        principal.has_role("gaveur")
            && principal.gaveur_id.is_some()
            && principal.gaveur_id == scope.gaveur_id
    };
    let gateway_of_site = || {
        principal.has_client_role("sensors", "gateway")
            && principal.site_id.is_some()
            && principal.site_id.as_deref() == scope.site
    };
    let superviseur = principal.has_role("superviseur");
    match (resource, action) {
        (Resource::GavageData, Action::Read) => superviseur || own_gaveur(),
        (Resource::GavageData, Action::Write) => own_gaveur() || gateway_of_site(),
        (Resource::Analytics, Action::Read) => superviseur,
        (Resource::Analytics, Action::Export) => {
            principal.has_client_role("euralis-frontend", "export_reports")
        }
        (Resource::SqalData, Action::Read) => superviseur || principal.has_role("technicien_sqal"),
        (Resource::SqalData, Action::Write) => {
            principal.has_role("technicien_sqal") || gateway_of_site()
        }
        (Resource::GavageData | Resource::SqalData, Action::Replay) => gateway_of_site(),
        (Resource::MultiSite, Action::Read | Action::Write) => superviseur,
        _ => false,
    }
}

/// The scope a principal's own claims name: its gaveur and site.
pub fn own_scope(principal: &Principal) -> Scope<'_> {
    Scope {
        gaveur_id: principal.gaveur_id,
        site: principal.site_id.as_deref(),
    }
}

/// Whether `principal` may do `action` on `resource` for someone at all: in its own scope,
/// which is wide enough for every role that may do it anywhere. For endpoints that serve
/// many scopes; each item is checked again for its own.
pub fn allowed_somewhere(principal: &Principal, resource: Resource, action: Action) -> bool {
    allowed(principal, resource, action, own_scope(principal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realm(role: &str) -> Principal {
        Principal {
            sub: role.into(),
            roles: vec![role.into()],
            ..Principal::default()
        }
    }

    fn gaveur(id: i64) -> Principal {
        Principal {
            gaveur_id: Some(id),
            site_id: Some("LL".into()),
            ..realm("gaveur")
        }
    }

    fn client(client: &str, role: &str, site: Option<&str>) -> Principal {
        Principal {
            sub: format!("{client}-{role}"),
            client_roles: [(client.to_string(), vec![role.to_string()])].into(),
            site_id: site.map(str::to_string),
            ..Principal::default()
        }
    }

    /// Every principal × resource × action, against the SPEC table. `Y` allowed, `.` denied.
    /// Columns: read/write/export/replay of gavage, analytics, sqal and multi_site — each for
    /// a scope of gaveur 1 at site LL.
    #[test]
    fn the_matrix() {
        use Action::*;
        use Resource::*;
        let cells = [
            (GavageData, Read),
            (GavageData, Write),
            (GavageData, Export),
            (GavageData, Replay),
            (Analytics, Read),
            (Analytics, Write),
            (Analytics, Export),
            (Analytics, Replay),
            (SqalData, Read),
            (SqalData, Write),
            (SqalData, Export),
            (SqalData, Replay),
            (MultiSite, Read),
            (MultiSite, Write),
            (MultiSite, Export),
            (MultiSite, Replay),
        ];
        let table: Vec<(&str, Principal, &str)> = vec![
            ("admin", realm("admin"), "YYYY YYYY YYYY YYYY"),
            ("superviseur", realm("superviseur"), "Y... Y... Y... YY.."),
            ("own gaveur", gaveur(1), "YY.. .... .... ...."),
            ("other gaveur", gaveur(2), ".... .... .... ...."),
            (
                "gaveur role without id",
                realm("gaveur"),
                ".... .... .... ....",
            ),
            (
                "technicien_sqal",
                realm("technicien_sqal"),
                ".... .... YY.. ....",
            ),
            ("consommateur", realm("consommateur"), ".... .... .... ...."),
            (
                "gateway of LL",
                client("sensors", "gateway", Some("LL")),
                ".Y.Y .... .Y.Y ....",
            ),
            (
                "gateway of LS",
                client("sensors", "gateway", Some("LS")),
                ".... .... .... ....",
            ),
            (
                "gateway without site",
                client("sensors", "gateway", None),
                ".... .... .... ....",
            ),
            (
                "gateway role of another client",
                client("euralis-frontend", "gateway", Some("LL")),
                ".... .... .... ....",
            ),
            (
                "exporter",
                client("euralis-frontend", "export_reports", None),
                ".... ..Y. .... ....",
            ),
            (
                "export role of another client",
                client("sensors", "export_reports", None),
                ".... .... .... ....",
            ),
            ("no roles", Principal::default(), ".... .... .... ...."),
        ];
        let scope = Scope {
            gaveur_id: Some(1),
            site: Some("LL"),
        };
        for (name, principal, expected) in table {
            let expected: Vec<bool> = expected
                .chars()
                .filter(|c| *c != ' ')
                .map(|c| c == 'Y')
                .collect();
            for ((resource, action), want) in cells.iter().zip(expected) {
                assert_eq!(
                    allowed(&principal, *resource, *action, scope),
                    want,
                    "{name}: {resource:?} {action:?}"
                );
            }
        }
    }
}
