//! Keycloak access-token claims → [`Principal`].

use std::collections::BTreeMap;

use gaveurs_schemas::Principal;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub(super) struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub aud: Option<Value>,
    #[serde(default)]
    pub azp: Option<String>,
    #[serde(default)]
    pub exp: Option<f64>,
    #[serde(default)]
    pub nbf: Option<f64>,
    #[serde(default)]
    pub iat: Option<f64>,
    #[serde(default)]
    pub realm_access: Option<RoleList>,
    #[serde(default)]
    pub resource_access: Option<BTreeMap<String, RoleList>>,
    #[serde(default)]
    pub gaveur_id: Option<Value>,
    #[serde(default)]
    pub site_id: Option<Value>,
    #[serde(default)]
    pub organization: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RoleList {
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Claims {
    /// `aud` as a list (a string or an array of strings).
    pub(super) fn audiences(&self) -> Vec<&str> {
        match &self.aud {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    pub(super) fn principal(self) -> Result<Principal, String> {
        let gaveur_id = match &self.gaveur_id {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                integer_attribute(value)
                    .ok_or_else(|| format!("gaveur_id {value} is not an integer"))?,
            ),
        };
        Ok(Principal {
            sub: self.sub.unwrap_or_default(),
            username: self.preferred_username,
            roles: self.realm_access.unwrap_or_default().roles,
            client_roles: self
                .resource_access
                .unwrap_or_default()
                .into_iter()
                .map(|(client, list)| (client, list.roles))
                .collect(),
            gaveur_id,
            site_id: self.site_id.as_ref().and_then(text_attribute),
            organization: self.organization.as_ref().and_then(text_attribute),
        })
    }
}

/// Keycloak attribute mappers emit an attribute as a number, a string, or a one-element
/// array of strings, depending on the mapper's settings.
fn integer_attribute(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Array(items) if items.len() == 1 => integer_attribute(&items[0]),
        _ => None,
    }
}

fn text_attribute(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) if items.len() == 1 => text_attribute(&items[0]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn principal(claims: Value) -> Result<Principal, String> {
        serde_json::from_value::<Claims>(claims)
            .unwrap()
            .principal()
    }

    #[test]
    fn gaveur_id_comes_in_three_shapes() {
        for shape in [json!(1), json!("1"), json!(["1"])] {
            let p = principal(json!({"sub": "u", "gaveur_id": shape})).unwrap();
            assert_eq!(p.gaveur_id, Some(1));
        }
        assert!(principal(json!({"sub": "u", "gaveur_id": ["1", "2"]})).is_err());
        assert!(principal(json!({"sub": "u", "gaveur_id": "one"})).is_err());
    }

    #[test]
    fn roles_sites_and_clients() {
        let p = principal(json!({
            "sub": "u", "preferred_username": "gw-ll",
            "realm_access": {"roles": ["offline_access"]},
            "resource_access": {"sensors": {"roles": ["gateway"]}, "account": {"roles": ["view-profile"]}},
            "site_id": ["LL"], "organization": "euralis"
        }))
        .unwrap();
        assert!(p.has_client_role("sensors", "gateway"));
        assert!(!p.has_role("gateway"));
        assert_eq!(p.site_id.as_deref(), Some("LL"));
        assert_eq!(p.organization.as_deref(), Some("euralis"));
        assert_eq!(p.display_name(), "gw-ll");
    }
}
