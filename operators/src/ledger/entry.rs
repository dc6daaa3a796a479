//! One ledger entry, its canonical bytes, its hash and its signature.
//!
//! **Canonical encoding.** An entry's canonical bytes are the JSON object of its fields
//! `chain`, `code_lot`, `device_id`, `key`, `payload`, `prev`, `seq`, `time`, `type` (every
//! field but `hash` and `sig`), written with object keys in byte order at every depth, no
//! whitespace, strings escaped as `serde_json` escapes them (`"`, `\`, control characters;
//! everything else as UTF-8), integers in decimal and other numbers in their shortest
//! round-trip form, an absent key as `null`. The same event therefore always gives the same
//! bytes, whichever program built the JSON. An entry's `hash` is the SHA-256 of those bytes,
//! in lowercase hex, and `sig` the Ed25519 signature of the 32 hash bytes by the key `key`,
//! in lowercase hex. On disk an entry is one line: the same encoding with `hash` and `sig`
//! added.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev` of a chain's first entry.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A chain's first entry: it introduces the signing key (`payload.public_key`).
    Genesis,
    /// A new signing key (`payload.public_key`), signed by the key it replaces.
    KeyRotated,
    /// A lot's first meal.
    LotStarted,
    /// A lot's feeding day once its next day began or the lot finished: the day's KPIs.
    DayClosed,
    /// A lot's outcome at slaughter (ITM, losses, liver weight).
    LotFinished,
    /// A lot's quality control by SQAL: grade counts and compliance so far.
    SqalControl,
    /// A critical alert opened.
    AlertOpened,
    /// A critical alert cleared.
    AlertCleared,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Genesis => "genesis",
            EntryKind::KeyRotated => "key_rotated",
            EntryKind::LotStarted => "lot_started",
            EntryKind::DayClosed => "day_closed",
            EntryKind::LotFinished => "lot_finished",
            EntryKind::SqalControl => "sqal_control",
            EntryKind::AlertOpened => "alert_opened",
            EntryKind::AlertCleared => "alert_cleared",
        }
    }
}

/// An event before it is chained: what the ledger desk derives from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event time, RFC 3339 in UTC with milliseconds.
    pub time: String,
    pub kind: EntryKind,
    pub code_lot: Option<String>,
    pub device_id: Option<String>,
    pub payload: Value,
}

/// One entry as it is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The chain it belongs to: `local` without Kafka, else `p<partition>`.
    pub chain: String,
    pub seq: u64,
    pub time: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub code_lot: Option<String>,
    pub device_id: Option<String>,
    pub payload: Value,
    pub prev: String,
    /// Id of the key that signed it.
    pub key: String,
    pub hash: String,
    pub sig: String,
}

impl Entry {
    /// Chains `event` after `prev` (the previous entry's hash) and signs it.
    pub fn seal(chain: &str, seq: u64, prev: &str, event: Event, key: &LedgerKey) -> Entry {
        let mut entry = Entry {
            chain: chain.to_string(),
            seq,
            time: event.time,
            kind: event.kind,
            code_lot: event.code_lot,
            device_id: event.device_id,
            payload: event.payload,
            prev: prev.to_string(),
            key: key.id.clone(),
            hash: String::new(),
            sig: String::new(),
        };
        let digest = entry.digest();
        entry.hash = hex::encode(digest);
        entry.sig = hex::encode(key.signing.sign(&digest).to_bytes());
        entry
    }

    /// The canonical bytes the hash covers.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let fields: [(&str, Value); 9] = [
            ("chain", Value::from(self.chain.as_str())),
            (
                "code_lot",
                self.code_lot.as_deref().map_or(Value::Null, Value::from),
            ),
            (
                "device_id",
                self.device_id.as_deref().map_or(Value::Null, Value::from),
            ),
            ("key", Value::from(self.key.as_str())),
            ("payload", self.payload.clone()),
            ("prev", Value::from(self.prev.as_str())),
            ("seq", Value::from(self.seq)),
            ("time", Value::from(self.time.as_str())),
            ("type", Value::from(self.kind.as_str())),
        ];
        out.push(b'{');
        for (i, (name, value)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_canonical(&mut out, &Value::from(*name));
            out.push(b':');
            write_canonical(&mut out, value);
        }
        out.push(b'}');
        out
    }

    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.canonical_bytes()).into()
    }

    /// The line stored on disk, without its newline.
    pub fn line(&self) -> Vec<u8> {
        let mut line = self.canonical_bytes();
        line.pop();
        line.extend_from_slice(b",\"hash\":");
        write_canonical(&mut line, &Value::from(self.hash.as_str()));
        line.extend_from_slice(b",\"sig\":");
        write_canonical(&mut line, &Value::from(self.sig.as_str()));
        line.push(b'}');
        line
    }

    /// Whether `hash` is the hash of the entry's contents.
    pub fn hash_matches(&self) -> bool {
        hex::encode(self.digest()) == self.hash
    }

    /// Whether `sig` is `public`'s signature of the entry's hash.
    pub fn signed_by(&self, public: &VerifyingKey) -> bool {
        let Ok(hash) = hex::decode(&self.hash) else {
            return false;
        };
        let Ok(sig) = hex::decode(&self.sig) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&sig) else {
            return false;
        };
        public.verify(&hash, &sig).is_ok()
    }

    /// The key a genesis or rotation entry introduces.
    pub fn introduced_key(&self) -> Option<Result<(String, VerifyingKey), String>> {
        if !matches!(self.kind, EntryKind::Genesis | EntryKind::KeyRotated) {
            return None;
        }
        Some(
            self.payload
                .get("public_key")
                .and_then(Value::as_str)
                .ok_or_else(|| "it introduces no public_key".to_string())
                .and_then(|text| public_key_from_hex(text).map_err(|e| e.to_string()))
                .map(|public| (key_id(&public), public)),
        )
    }
}

/// Writes `value` in the canonical encoding.
pub fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("a string always encodes");
                out.push(b':');
                write_canonical(out, &map[key]);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("a scalar always encodes"),
    }
}

/// A signing key and its id.
pub struct LedgerKey {
    pub id: String,
    pub signing: SigningKey,
}

impl LedgerKey {
    pub fn from_secret(secret: [u8; 32]) -> LedgerKey {
        let signing = SigningKey::from_bytes(&secret);
        LedgerKey {
            id: key_id(&signing.verifying_key()),
            signing,
        }
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().to_bytes())
    }
}

/// A key's id: the first 16 hex digits of the SHA-256 of its public key.
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.to_bytes())[..8])
}

pub fn public_key_from_hex(text: &str) -> anyhow::Result<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(text)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("a public key is 32 bytes"))?;
    Ok(VerifyingKey::from_bytes(&bytes)?)
}
