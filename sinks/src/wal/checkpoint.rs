//! The saved position of a derived consumer that keeps no state file of its own:
//! `<dir>/<cursor name>.json`, replaced atomically.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Lsn;
use crate::fsutil::{create_dir_durable, write_atomic};

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    lsn: Lsn,
}

pub struct CheckpointFile {
    path: PathBuf,
    saved: Lsn,
}

impl CheckpointFile {
    /// Reads `<dir>/<name>.json`; `None` when the consumer never saved one.
    pub fn load(dir: &Path, name: &str) -> io::Result<(CheckpointFile, Option<Lsn>)> {
        create_dir_durable(dir)?;
        let path = dir.join(format!("{name}.json"));
        let saved = match std::fs::read(&path) {
            Ok(bytes) => Some(
                serde_json::from_slice::<Saved>(&bytes)
                    .map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{} is unreadable: {e}", path.display()),
                        )
                    })?
                    .lsn,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok((
            CheckpointFile {
                path,
                saved: saved.unwrap_or(0),
            },
            saved,
        ))
    }

    /// Saves `lsn` if it is further than what is saved.
    pub fn save(&mut self, lsn: Lsn) -> io::Result<()> {
        if lsn <= self.saved {
            return Ok(());
        }
        let text = serde_json::to_vec(&Saved { lsn }).expect("a checkpoint serialises");
        write_atomic(&self.path, &text)?;
        self.saved = lsn;
        Ok(())
    }

    pub fn saved(&self) -> Lsn {
        self.saved
    }
}
