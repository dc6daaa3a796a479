//! The deployment files parse and agree with what the pipeline expects of them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use gaveurs_operators::auth::dev::{DEMO_USERS, REALM};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn names(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_keycloak_realm_defines_the_roles_clients_mappers_and_demo_users() {
    let text = std::fs::read_to_string(deploy("keycloak/gaveurs-production-realm.json")).unwrap();
    let realm: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(realm["realm"], REALM);

    let roles = names(&realm["roles"]["realm"]);
    for role in [
        "admin",
        "superviseur",
        "gaveur",
        "technicien_sqal",
        "consommateur",
    ] {
        assert!(roles.contains(role), "realm role {role} missing");
    }
    assert!(names(&realm["roles"]["client"]["sensors"]).contains("gateway"));
    assert!(names(&realm["roles"]["client"]["euralis-frontend"]).contains("export_reports"));

    let clients = realm["clients"].as_array().unwrap();
    let client = |id: &str| {
        clients
            .iter()
            .find(|c| c["clientId"] == id)
            .unwrap_or_else(|| panic!("client {id} missing"))
    };
    assert_eq!(client("backend-api")["publicClient"], false);
    for public in ["euralis-frontend", "gaveurs-frontend", "sqal-frontend"] {
        assert_eq!(client(public)["publicClient"], true, "{public}");
    }
    assert_eq!(client("sensors")["serviceAccountsEnabled"], true);
    for id in [
        "euralis-frontend",
        "gaveurs-frontend",
        "sqal-frontend",
        "sensors",
    ] {
        let claims: BTreeSet<&str> = client(id)["protocolMappers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["config"]["claim.name"].as_str())
            .collect();
        for claim in ["gaveur_id", "site_id", "organization"] {
            assert!(claims.contains(claim), "{id} does not map {claim}");
        }
        let audiences: Vec<&str> = client(id)["protocolMappers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["config"]["included.client.audience"].as_str())
            .collect();
        assert_eq!(
            audiences,
            ["backend-api"],
            "{id}: tokens must be for backend-api"
        );
    }

    // Every dev-mode demo user exists in the realm with the same roles and attributes, so a
    // token from Keycloak grants what the same user's dev token grants.
    let users = realm["users"].as_array().unwrap();
    for demo in DEMO_USERS {
        let user = users
            .iter()
            .find(|u| u["username"] == demo.username)
            .unwrap_or_else(|| panic!("demo user {} missing from the realm", demo.username));
        if !demo.email.ends_with("@sensors") {
            assert_eq!(user["email"], demo.email);
        }
        let realm_roles: Vec<&str> = user["realmRoles"]
            .as_array()
            .map(|r| r.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(realm_roles, demo.realm_roles, "{}", demo.username);
        for (client, role) in demo.client_roles {
            let granted = user["clientRoles"][client].as_array().unwrap();
            assert!(
                granted.iter().any(|r| r == role),
                "{}: {client}/{role}",
                demo.username
            );
        }
        let attribute = |name: &str| user["attributes"][name][0].as_str().map(str::to_string);
        assert_eq!(
            attribute("gaveur_id"),
            demo.gaveur_id.map(|id| id.to_string()),
            "{}",
            demo.username
        );
        assert_eq!(
            attribute("site_id").as_deref(),
            demo.site_id,
            "{}",
            demo.username
        );
    }
}
