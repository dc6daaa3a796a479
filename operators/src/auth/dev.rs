//! Zero-setup mode: a local signing key in the data dir, its JWKS, and tokens for the demo
//! users, so the production verification path runs without Keycloak.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::json;

/// The file, in `data_dir/auth/`, that holds the dev signing key.
pub const KEY_FILE: &str = "dev-signing-key.pem";

/// The realm every dev token names, as Keycloak would.
pub const REALM: &str = "gaveurs-production";

/// The Keycloak-shaped path of the dev realm's JWKS, served by the pipeline in dev mode.
pub fn jwks_path() -> String {
    format!("/realms/{REALM}/protocol/openid-connect/certs")
}

pub struct DevKeys {
    encoding: EncodingKey,
    kid: String,
    jwks: String,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DevKeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} exists but is not a usable signing key ({why}); it is not regenerated \
         automatically, since every token signed with it would stop working — move it away \
         to start over"
    )]
    Unusable { path: PathBuf, why: String },
}

/// A demo user of dev mode (the same people the Keycloak realm export defines).
#[derive(Debug, Clone)]
pub struct DemoUser {
    pub email: &'static str,
    pub username: &'static str,
    pub realm_roles: &'static [&'static str],
    pub client_roles: &'static [(&'static str, &'static str)],
    pub gaveur_id: Option<i64>,
    pub site_id: Option<&'static str>,
    /// The client the user logs in with (`azp`).
    pub client: &'static str,
}

pub const DEMO_USERS: &[DemoUser] = &[
    DemoUser {
        email: "admin@euralis.fr",
        username: "admin",
        realm_roles: &["admin"],
        client_roles: &[],
        gaveur_id: None,
        site_id: None,
        client: "euralis-frontend",
    },
    DemoUser {
        email: "superviseur@euralis.fr",
        username: "superviseur",
        realm_roles: &["superviseur"],
        client_roles: &[("euralis-frontend", "export_reports")],
        gaveur_id: None,
        site_id: None,
        client: "euralis-frontend",
    },
    DemoUser {
        email: "jean.martin@gaveur.fr",
        username: "jean.martin",
        realm_roles: &["gaveur"],
        client_roles: &[],
        gaveur_id: Some(1),
        site_id: Some("LL"),
        client: "gaveurs-frontend",
    },
    DemoUser {
        email: "sophie.dubois@gaveur.fr",
        username: "sophie.dubois",
        realm_roles: &["gaveur"],
        client_roles: &[],
        gaveur_id: Some(2),
        site_id: Some("LS"),
        client: "gaveurs-frontend",
    },
    DemoUser {
        email: "tech@sqal.fr",
        username: "tech.sqal",
        realm_roles: &["technicien_sqal"],
        client_roles: &[],
        gaveur_id: None,
        site_id: None,
        client: "sqal-frontend",
    },
    DemoUser {
        email: "gateway-ll@sensors",
        username: "service-account-sensors",
        realm_roles: &[],
        client_roles: &[("sensors", "gateway")],
        gaveur_id: None,
        site_id: Some("LL"),
        client: "sensors",
    },
];

pub fn demo_user(email: &str) -> Option<&'static DemoUser> {
    DEMO_USERS
        .iter()
        .find(|u| u.email.eq_ignore_ascii_case(email))
}

impl DevKeys {
    /// Loads the key from `dir`, creating it (mode 0600) the first time.
    pub fn load_or_create(dir: &Path) -> Result<DevKeys, DevKeyError> {
        let path = dir.join(KEY_FILE);
        let io = |source| DevKeyError::Io {
            path: path.clone(),
            source,
        };
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io)?;
                let key =
                    rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|e| {
                        DevKeyError::Unusable {
                            path: path.clone(),
                            why: e.to_string(),
                        }
                    })?;
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .expect("a fresh key encodes")
                    .to_string();
                // create_new: two processes starting at once must not both write a key.
                match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                {
                    Ok(mut file) => {
                        file.write_all(pem.as_bytes()).map_err(io)?;
                        file.sync_all().map_err(io)?;
                        tracing::info!(target: "auth", key = %path.display(), "created the dev signing key");
                        pem
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        std::fs::read_to_string(&path).map_err(io)?
                    }
                    Err(e) => return Err(io(e)),
                }
            }
            Err(e) => return Err(io(e)),
        };
        let unusable = |why: String| DevKeyError::Unusable {
            path: path.clone(),
            why,
        };
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| unusable(e.to_string()))?;
        let encoding =
            EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| unusable(e.to_string()))?;
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let n = key.n().to_bytes_be();
        let kid = format!("dev-{:016x}", xxhash_rust::xxh3::xxh3_64(&n));
        let jwks = json!({"keys": [{
            "kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig",
            "n": b64(n), "e": b64(key.e().to_bytes_be()),
        }]})
        .to_string();
        Ok(DevKeys {
            encoding,
            kid,
            jwks,
            path,
        })
    }

    /// The JWKS document, as Keycloak serves it at `…/protocol/openid-connect/certs`.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// A Keycloak-shaped access token for a demo user.
    pub fn mint(
        &self,
        user: &DemoUser,
        issuer: &str,
        audience: &str,
        ttl: std::time::Duration,
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut resource_access = serde_json::Map::new();
        for (client, role) in user.client_roles {
            let entry = resource_access
                .entry(client.to_string())
                .or_insert_with(|| json!({"roles": []}));
            entry["roles"]
                .as_array_mut()
                .expect("array")
                .push(json!(role));
        }
        let mut claims = json!({
            "iss": issuer,
            "sub": format!("dev-{}", user.username),
            "aud": audience,
            "azp": user.client,
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs() as i64,
            "preferred_username": user.username,
            "email": user.email,
            "realm_access": {"roles": user.realm_roles},
            "resource_access": resource_access,
            "organization": "euralis",
        });
        if let Some(id) = user.gaveur_id {
            claims["gaveur_id"] = json!(id);
        }
        if let Some(site) = user.site_id {
            claims["site_id"] = json!(site);
        }
        self.sign(&claims)
    }

    /// Signs any claims with this key (RS256, with its `kid`).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("RS256 signing works")
    }

    /// The `kid` this key's tokens and JWKS entry carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_private_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let first = DevKeys::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(&first.path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let again = DevKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(first.jwks(), again.jwks());
        std::fs::write(&first.path, "garbage").unwrap();
        let err = DevKeys::load_or_create(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not regenerated"), "{err}");
        assert_eq!(std::fs::read_to_string(&first.path).unwrap(), "garbage");
    }
}
