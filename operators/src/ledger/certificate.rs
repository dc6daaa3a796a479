//! A lot's certificate: its entries with what an outsider needs to check them offline — the
//! chain's key entries (its genesis and rotations, each signed), the lot's entries and the
//! chain's head when it was exported, each with its hash and signature. Written in the
//! ledger's canonical encoding on one line, so any byte changed anywhere is seen: inside an
//! entry its hash or signature fails, outside them the document is no longer canonical or
//! no longer matches its entries.

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::entry::{Entry, EntryKind, write_canonical};
use super::verify::{Break, verify_chain};

/// What a certificate says it is.
pub const FORMAT: &str = "gaveurs-ledger-certificate/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub format: String,
    pub code_lot: String,
    pub chain: String,
    /// The chain's genesis and rotation entries, in order.
    pub keys: Vec<Entry>,
    /// The lot's entries, in order.
    pub entries: Vec<Entry>,
    /// The chain's last entry when the certificate was made.
    pub head: Entry,
    /// A short form for a QR code: the lot, the head and a digest of the entries' hashes.
    pub url: String,
}

impl Certificate {
    /// The certificate's bytes: canonical JSON and a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let value = serde_json::to_value(self).expect("a certificate always encodes");
        let mut out = Vec::new();
        write_canonical(&mut out, &value);
        out.push(b'\n');
        out
    }
}

/// The short form: `gaveurs-ledger:<chain>/<lot>?head=<seq>-<16 hex of its hash>&n=<entries>&d=<16
/// hex of the SHA-256 of the entries' hashes, in order>`.
fn short_url(chain: &str, code_lot: &str, entries: &[Entry], head: &Entry) -> String {
    let mut digest = Sha256::new();
    for entry in entries {
        digest.update(entry.hash.as_bytes());
    }
    format!(
        "gaveurs-ledger:{chain}/{code_lot}?head={}-{}&n={}&d={}",
        head.seq,
        &head.hash[..16.min(head.hash.len())],
        entries.len(),
        &hex::encode(digest.finalize())[..16]
    )
}

/// Why a lot has no certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("the chain does not verify, so it certifies nothing: {0}")]
    Broken(#[from] Break),
    #[error("lot {0} has no entry in the ledger")]
    UnknownLot(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Builds `code_lot`'s certificate from the chains under `ledger_dir`, verifying each chain
/// on the way (a certificate from a chain that does not verify would prove nothing).
pub fn export(ledger_dir: &Path, code_lot: &str) -> Result<Certificate, CertificateError> {
    for (name, dir) in super::chain::chains(ledger_dir)? {
        let mut keys = Vec::new();
        let mut entries = Vec::new();
        let mut head = None;
        verify_chain(&name, &dir, |entry| {
            if matches!(entry.kind, EntryKind::Genesis | EntryKind::KeyRotated) {
                keys.push(entry.clone());
            } else if entry.code_lot.as_deref() == Some(code_lot) {
                entries.push(entry.clone());
            }
            head = Some(entry.clone());
        })?;
        if let (false, Some(head)) = (entries.is_empty(), head) {
            let url = short_url(&name, code_lot, &entries, &head);
            return Ok(Certificate {
                format: FORMAT.to_string(),
                code_lot: code_lot.to_string(),
                chain: name,
                keys,
                entries,
                head,
                url,
            });
        }
    }
    Err(CertificateError::UnknownLot(code_lot.to_string()))
}

/// What a certificate that checks proves.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub code_lot: String,
    pub chain: String,
    pub entries: usize,
    pub head_seq: u64,
    pub keys: Vec<String>,
}

/// Checks a certificate's bytes offline; the error names what is wrong and where.
pub fn check(bytes: &[u8]) -> Result<Checked, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not a certificate: {e}"))?;
    let certificate: Certificate =
        serde_json::from_value(value.clone()).map_err(|e| format!("not a certificate: {e}"))?;
    if certificate.format != FORMAT {
        return Err(format!("format {:?}, not {FORMAT}", certificate.format));
    }
    if certificate.to_bytes() != bytes {
        return Err("the document is not in its canonical form: it was altered outside its entries (or reformatted)".into());
    }
    // The keys: the genesis signs itself, each rotation is signed by the key before it.
    let mut keys: Vec<(u64, String, VerifyingKey)> = Vec::new();
    for (i, entry) in certificate.keys.iter().enumerate() {
        let name = describe(entry);
        let expected = if i == 0 {
            EntryKind::Genesis
        } else {
            EntryKind::KeyRotated
        };
        if entry.kind != expected || entry.chain != certificate.chain {
            return Err(format!(
                "{name}: not the chain's {} entry",
                expected.as_str()
            ));
        }
        if !entry.hash_matches() {
            return Err(format!("{name}: its hash does not match its contents"));
        }
        let (id, public) = entry
            .introduced_key()
            .expect("a key entry introduces a key")
            .map_err(|e| format!("{name}: {e}"))?;
        let signer = if i == 0 { public } else { keys[i - 1].2 };
        if !entry.signed_by(&signer) {
            return Err(format!("{name}: its signature does not verify"));
        }
        keys.push((entry.seq, id, public));
    }
    if keys.is_empty() {
        return Err("no genesis entry: the keys cannot be known".into());
    }
    let mut previous_seq = 0;
    for entry in certificate
        .entries
        .iter()
        .chain(std::iter::once(&certificate.head))
    {
        let name = describe(entry);
        let is_head = std::ptr::eq(entry, &certificate.head);
        if entry.chain != certificate.chain {
            return Err(format!("{name}: belongs to chain {}", entry.chain));
        }
        if !is_head && entry.code_lot.as_deref() != Some(certificate.code_lot.as_str()) {
            return Err(format!(
                "{name}: not an entry of lot {}",
                certificate.code_lot
            ));
        }
        if entry.seq < previous_seq || (!is_head && entry.seq == previous_seq) {
            return Err(format!("{name}: out of order"));
        }
        previous_seq = entry.seq;
        if !entry.hash_matches() {
            return Err(format!("{name}: its hash does not match its contents"));
        }
        // The key in effect: the last one introduced before it (a rotation's own entry is
        // signed by the key it retires).
        let (_, id, public) = keys
            .iter()
            .rev()
            .find(|(introduced, _, _)| *introduced < entry.seq)
            .ok_or_else(|| format!("{name}: before the chain's genesis"))?;
        if entry.key != *id || !entry.signed_by(public) {
            return Err(format!(
                "{name}: its signature does not verify with key {id}, the chain's key at that point"
            ));
        }
    }
    if certificate.entries.is_empty() {
        return Err(format!("no entry of lot {}", certificate.code_lot));
    }
    let url = short_url(
        &certificate.chain,
        &certificate.code_lot,
        &certificate.entries,
        &certificate.head,
    );
    if url != certificate.url {
        return Err(format!("its url is not the one its entries give ({url})"));
    }
    Ok(Checked {
        code_lot: certificate.code_lot,
        chain: certificate.chain,
        entries: certificate.entries.len(),
        head_seq: certificate.head.seq,
        keys: keys.into_iter().map(|(_, id, _)| id).collect(),
    })
}

fn describe(entry: &Entry) -> String {
    format!("entry {} ({})", entry.seq, entry.kind.as_str())
}
