//! The deployment files parse and agree with what the pipeline expects of them. (They cannot
//! be started here: no container runtime in CI.)

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

fn yaml_documents(path: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(deploy(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            let mut value =
                serde_yaml::Value::deserialize(document).unwrap_or_else(|e| panic!("{path}: {e}"));
            value.apply_merge().unwrap();
            value
        })
        .collect()
}

fn cluster_config() -> gaveurs_pipeline::config::Config {
    gaveurs_pipeline::config::Config::load(Some(&deploy("gaveurs.cluster.toml")))
        .expect("deploy/gaveurs.cluster.toml is a valid configuration")
}

#[test]
fn the_replicas_configuration_reads_kafka_and_keycloak_from_a_shared_volume() {
    let config = cluster_config();
    let kafka = config.kafka.expect("[kafka] is set");
    assert_eq!(kafka.brokers, "kafka:9092");
    assert_eq!(
        config.auth.mode,
        gaveurs_pipeline::config::AuthMode::Keycloak
    );
    assert_eq!(config.storage.data_dir, PathBuf::from("/data"));
}

#[test]
fn the_compose_file_runs_two_replicas_beside_kafka_mosquitto_and_keycloak() {
    let compose = yaml_documents("compose.yaml").remove(0);
    let services = compose["services"].as_mapping().unwrap();
    let service = |name: &str| &compose["services"][name];
    let roles = service("kafka")["environment"]["KAFKA_PROCESS_ROLES"]
        .as_str()
        .unwrap();
    assert!(roles.contains("controller"), "Kafka runs in KRaft mode");
    assert!(services.contains_key("mosquitto"));
    let realm_mount = service("keycloak")["volumes"][0].as_str().unwrap();
    let realm_file = realm_mount.split(':').next().unwrap();
    assert!(deploy(realm_file).exists(), "{realm_file} exists");
    assert!(
        service("keycloak")["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|a| a == "--import-realm")
    );

    let replicas: Vec<&serde_yaml::Value> = services
        .iter()
        .filter(|(name, _)| name.as_str().unwrap().starts_with("gaveurs-"))
        .map(|(_, s)| s)
        .collect();
    assert_eq!(replicas.len(), 2);
    let mut ids = BTreeSet::new();
    for replica in &replicas {
        ids.insert(
            replica["environment"]["GAVEURS_INSTANCE__ID"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        let volumes: Vec<&str> = replica["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(volumes.contains(&"gaveurs-data:/data"), "{volumes:?}");
        let config_mount = volumes
            .iter()
            .find(|v| v.ends_with(":/etc/gaveurs/gaveurs.toml:ro"))
            .unwrap();
        assert_eq!(
            deploy(config_mount.split(':').next().unwrap()),
            deploy("./gaveurs.cluster.toml")
        );
    }
    assert_eq!(ids.len(), 2, "each replica has its own instance id");
    assert!(
        compose["volumes"]
            .as_mapping()
            .unwrap()
            .contains_key("gaveurs-data")
    );
}

#[test]
fn the_kubernetes_manifests_run_replicas_with_stable_ids_on_one_shared_volume_and_the_same_config()
{
    let mut documents = yaml_documents("kubernetes/statefulset.yaml");
    documents.extend(yaml_documents("kubernetes/volume.yaml"));
    documents.extend(yaml_documents("kubernetes/configmap.yaml"));
    let kind = |k: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    // A StatefulSet: a replica comes back under the same name, so with the same instance
    // id it finds its own durable log and state (a Deployment would give it a new name).
    let set = kind("StatefulSet");
    assert!(set["spec"]["replicas"].as_u64().unwrap() >= 2);
    let headless = documents
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == set["spec"]["serviceName"])
        .expect("the StatefulSet's headless service");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let pod = &set["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["env"][0]["name"], "GAVEURS_INSTANCE__ID",
        "the instance id comes from the environment"
    );
    assert_eq!(
        container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
        "the pod name (stable in a StatefulSet) is the instance id"
    );
    // Room for the pipeline's bounded state (≤ 256 MB measured) and one analyst query's
    // memory pool ([query] memory_limit_mb = 256).
    assert_eq!(container["resources"]["limits"]["memory"], "768Mi");
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        "/health/ready"
    );
    let claim = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .unwrap();
    let volume = kind("PersistentVolumeClaim");
    assert_eq!(volume["metadata"]["name"], claim);
    assert_eq!(volume["spec"]["accessModes"][0], "ReadWriteMany");
    let config_map = kind("ConfigMap");
    assert_eq!(
        config_map["data"]["gaveurs.toml"].as_str().unwrap(),
        std::fs::read_to_string(deploy("gaveurs.cluster.toml")).unwrap(),
        "the ConfigMap carries deploy/gaveurs.cluster.toml"
    );
    let service = documents
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "gaveurs")
        .unwrap();
    assert!(service["spec"]["ports"].as_sequence().unwrap().len() >= 2);
}
