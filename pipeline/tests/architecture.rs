//! ARCHITECTURE.md's table of crates says what each crate depends on; `cargo metadata` says
//! what it really depends on. They must agree, so the map a newcomer reads is the house.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Each workspace crate (without the `gaveurs-` prefix) and the workspace crates it depends
/// on for its library and binaries (dev-dependencies left out).
fn cargo_graph() -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let short = |name: &str| name.strip_prefix("gaveurs-").map(str::to_string);
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|package| {
            let name = short(package["name"].as_str()?)?;
            let depends = package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| short(d["name"].as_str()?))
                .collect();
            Some((name, depends))
        })
        .collect()
}

/// The "Who owns what" table: `| \`crate\` | owns | depends on |`, where the last column is
/// `—`, `all`, or a comma-separated list.
fn documented_graph() -> Graph {
    let text = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).unwrap();
    let table = text
        .split("| crate | owns | depends on |")
        .nth(1)
        .expect("ARCHITECTURE.md has the table of crates");
    let rows: Vec<(String, String)> = table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").collect();
            let name = cells[0].trim().trim_matches('`').to_string();
            (name, cells.last().unwrap().trim().to_string())
        })
        .collect();
    let names: BTreeSet<String> = rows.iter().map(|(n, _)| n.clone()).collect();
    rows.iter()
        .map(|(name, depends)| {
            let depends = match depends.as_str() {
                "—" => BTreeSet::new(),
                "all" => names.iter().filter(|n| *n != name).cloned().collect(),
                list => list.split(", ").map(str::to_string).collect(),
            };
            (name.clone(), depends)
        })
        .collect()
}

#[test]
fn the_crate_map_in_architecture_md_is_the_dependency_graph() {
    let documented = documented_graph();
    let real = cargo_graph();
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        real.keys().collect::<Vec<_>>(),
        "crates in ARCHITECTURE.md vs the workspace"
    );
    for (name, depends) in &real {
        assert_eq!(
            &documented[name], depends,
            "what `{name}` depends on: ARCHITECTURE.md (left) vs Cargo.toml (right)"
        );
    }
}
