//! The ledger's signing keys: one file per key, `<key id>.key`, holding the 32-byte secret in
//! hex, readable by its owner only (mode 0600). Keys live beside the ledger, never in it: the
//! chain carries public keys only (its genesis and rotation entries).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::TryRngCore;

use super::entry::LedgerKey;

pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    pub fn new(dir: impl Into<PathBuf>) -> KeyStore {
        KeyStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new key from the operating system's randomness, written before it is returned.
    pub fn create(&self) -> anyhow::Result<LedgerKey> {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut secret)
            .context("the operating system gave no randomness for a ledger key")?;
        let key = LedgerKey::from_secret(secret);
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating the ledger keys folder {}", self.dir.display()))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        let path = self.path(&key.id);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating the ledger key {}", path.display()))?;
        writeln!(file, "{}", hex::encode(secret))?;
        file.sync_all()?;
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(key)
    }

    /// The key `id`, from this store.
    pub fn load(&self, id: &str) -> anyhow::Result<LedgerKey> {
        let key = read_key_file(&self.path(id))?;
        anyhow::ensure!(
            key.id == id,
            "{} holds key {}, not {id}",
            self.path(id).display(),
            key.id
        );
        Ok(key)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }
}

/// Reads a key file (hex secret); refuses one that others may read.
pub fn read_key_file(path: &Path) -> anyhow::Result<LedgerKey> {
    let meta = fs::metadata(path)
        .with_context(|| format!("the ledger key {} cannot be read", path.display()))?;
    anyhow::ensure!(
        meta.permissions().mode() & 0o077 == 0,
        "the ledger key {} may be read by others (mode {:o}); `chmod 600` it",
        path.display(),
        meta.permissions().mode() & 0o777
    );
    let text = fs::read_to_string(path)?;
    let secret: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{} is not a ledger key (64 hex digits)", path.display()))?;
    Ok(LedgerKey::from_secret(secret))
}
