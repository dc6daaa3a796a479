//! The instance id: from `[instance] id`, or a random id created once and kept in the working
//! directory (never the host name alone: two containers on one host must differ).

use std::path::Path;

use anyhow::Context;

use crate::config::{Config, check_instance_id};

const ID_FILE: &str = ".gaveurs/instance-id";

pub fn resolve(config: &Config, working_dir: &Path) -> anyhow::Result<String> {
    if let Some(id) = &config.instance.id {
        return Ok(id.clone());
    }
    let path = working_dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_string();
            check_instance_id(&id).with_context(|| format!("in {}", path.display()))?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, format!("{id}\n"))
                .with_context(|| format!("cannot keep the instance id in {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = resolve(&Config::default(), dir.path()).unwrap();
        assert_eq!(first.len(), 12);
        assert_eq!(resolve(&Config::default(), dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(resolve(&Config::default(), other.path()).unwrap(), first);
    }
}
