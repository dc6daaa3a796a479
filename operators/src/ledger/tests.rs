use std::fs;
use std::path::Path;

use serde_json::json;

use super::chain::{ChainWriter, Opened, segments};
use super::entry::{Entry, EntryKind, Event};
use super::keys::KeyStore;
use super::verify::verify_chain;

fn event(i: usize) -> Event {
    Event {
        time: format!("2026-01-20T10:{:02}:00.000Z", i % 60),
        kind: EntryKind::LotStarted,
        code_lot: Some(format!("LL{i:07}")),
        device_id: None,
        payload: json!({"site": "LL", "jour": 1, "dose": 212.5}),
    }
}

/// A chain of a genesis and `n` lot events, in `root/ledger/local`.
fn chain_of(root: &Path, n: usize) -> KeyStore {
    let keys = KeyStore::new(root.join("keys"));
    let (mut writer, opened) = ChainWriter::open(&root.join("ledger"), "local", &keys).unwrap();
    assert!(matches!(opened, Opened::Genesis(_)));
    writer.append((0..n).map(event).collect()).unwrap();
    keys
}

fn chain_file(root: &Path) -> std::path::PathBuf {
    segments(&root.join("ledger/local")).unwrap().remove(0)
}

fn verify(root: &Path) -> Result<super::verify::ChainReport, super::verify::Break> {
    verify_chain("local", &root.join("ledger/local"), |_| {})
}

#[test]
fn a_chain_verifies_and_continues_after_a_restart_without_a_second_genesis() {
    let root = tempfile::tempdir().unwrap();
    let keys = chain_of(root.path(), 10);
    let report = verify(root.path()).unwrap();
    assert_eq!(report.entries, 11);
    assert_eq!(report.keys.len(), 1);
    let (mut writer, opened) =
        ChainWriter::open(&root.path().join("ledger"), "local", &keys).unwrap();
    assert_eq!(
        opened,
        Opened::Continued {
            head_seq: 11,
            cut_bytes: 0
        }
    );
    assert_eq!(writer.head(), report.head_hash);
    let more = writer.append(vec![event(11)]).unwrap();
    assert_eq!(more[0].seq, 12);
    drop(writer);
    let report = verify(root.path()).unwrap();
    assert_eq!(report.entries, 12);
    let geneses = fs::read_to_string(chain_file(root.path()))
        .unwrap()
        .matches("\"type\":\"genesis\"")
        .count();
    assert_eq!(geneses, 1);
}

#[test]
fn one_flipped_byte_anywhere_in_an_entry_names_that_entry() {
    let root = tempfile::tempdir().unwrap();
    chain_of(root.path(), 6);
    let path = chain_file(root.path());
    let original = fs::read(&path).unwrap();
    let lines: Vec<&[u8]> = original.split_inclusive(|b| *b == b'\n').collect();
    // Entry 4 is line 4: flip one byte inside each of its fields in turn.
    let target = lines[3];
    let start: usize = lines[..3].iter().map(|l| l.len()).sum();
    for field in [
        "\"payload\":{\"dose\":2",
        "\"prev\":\"",
        "\"hash\":\"",
        "\"sig\":\"",
        "\"time\":\"2026-01-20T10:0",
        "\"code_lot\":\"LL",
    ] {
        let at = target
            .windows(field.len())
            .position(|w| w == field.as_bytes())
            .unwrap_or_else(|| panic!("{field} in {}", String::from_utf8_lossy(target)))
            + field.len();
        let mut tampered = original.clone();
        tampered[start + at] = if tampered[start + at] == b'1' {
            b'2'
        } else {
            b'1'
        };
        fs::write(&path, &tampered).unwrap();
        let broken = verify(root.path()).unwrap_err();
        assert_eq!((broken.seq, broken.line), (4, 4), "{field}: {broken}");
    }
    fs::write(&path, &original).unwrap();
    assert!(verify(root.path()).is_ok());
}

#[test]
fn an_entry_removed_from_the_middle_is_named_as_the_break() {
    let root = tempfile::tempdir().unwrap();
    chain_of(root.path(), 6);
    let path = chain_file(root.path());
    let text = fs::read_to_string(&path).unwrap();
    let kept: String = text
        .split_inclusive('\n')
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, l)| l)
        .collect();
    fs::write(&path, kept).unwrap();
    let broken = verify(root.path()).unwrap_err();
    assert_eq!(broken.seq, 4);
    assert!(
        broken.what.contains("entries 4 to 4 are missing"),
        "{broken}"
    );
}

#[test]
fn a_half_written_last_line_is_not_part_of_the_chain_and_is_cut_on_reopening() {
    let root = tempfile::tempdir().unwrap();
    let keys = chain_of(root.path(), 3);
    let path = chain_file(root.path());
    let mut bytes = fs::read(&path).unwrap();
    let torn = b"{\"chain\":\"local\",\"seq\":5,\"ti";
    bytes.extend_from_slice(torn);
    fs::write(&path, &bytes).unwrap();
    let report = verify(root.path()).unwrap();
    assert_eq!(report.entries, 4);
    assert!(report.torn_tail.is_some());
    let (mut writer, opened) =
        ChainWriter::open(&root.path().join("ledger"), "local", &keys).unwrap();
    assert_eq!(
        opened,
        Opened::Continued {
            head_seq: 4,
            cut_bytes: torn.len() as u64
        }
    );
    writer.append(vec![event(9)]).unwrap();
    drop(writer);
    let report = verify(root.path()).unwrap();
    assert_eq!((report.entries, report.torn_tail), (5, None));
}

#[test]
fn a_rotation_is_signed_by_the_old_key_and_later_entries_by_the_new_one() {
    let root = tempfile::tempdir().unwrap();
    let keys = chain_of(root.path(), 2);
    let ledger = root.path().join("ledger");
    let (mut writer, _) = ChainWriter::open(&ledger, "local", &keys).unwrap();
    let old = writer.key_id().to_string();
    let rotation = writer
        .rotate(&keys, "2026-02-01T00:00:00.000Z".into())
        .unwrap();
    assert_eq!(rotation.key, old);
    let new = writer.key_id().to_string();
    assert_ne!(new, old);
    drop(writer);
    // A restart signs with the new key.
    let (mut writer, _) = ChainWriter::open(&ledger, "local", &keys).unwrap();
    assert_eq!(writer.key_id(), new);
    let after = writer.append(vec![event(5)]).unwrap();
    assert_eq!(after[0].key, new);
    drop(writer);
    let report = verify(root.path()).unwrap();
    assert_eq!(report.keys.len(), 2);
    assert_eq!(report.keys[0].retired_at, Some(rotation.seq));
    // An entry signed by the retired key after the rotation does not verify.
    let forged = Entry::seal(
        "local",
        6,
        &report.head_hash,
        event(6),
        &keys.load(&old).unwrap(),
    );
    let path = chain_file(root.path());
    let mut text = fs::read(&path).unwrap();
    text.extend_from_slice(&forged.line());
    text.push(b'\n');
    fs::write(&path, text).unwrap();
    let broken = verify(root.path()).unwrap_err();
    assert_eq!(broken.seq, 6);
    assert!(broken.what.contains(&new), "{broken}");
}

#[test]
fn the_canonical_bytes_do_not_depend_on_how_the_payload_was_built() {
    let keys = tempfile::tempdir().unwrap();
    let key = KeyStore::new(keys.path()).create().unwrap();
    let mut a = event(1);
    a.payload = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2.5], "x": "é\n"}}"#).unwrap();
    let mut b = event(1);
    b.payload = serde_json::from_str(r#"{"a": {"x": "é\n", "y": [1, 2.5]}, "b": 1}"#).unwrap();
    let a = Entry::seal("local", 2, "00", a, &key);
    let b = Entry::seal("local", 2, "00", b, &key);
    assert_eq!(a.canonical_bytes(), b.canonical_bytes());
    assert_eq!(
        String::from_utf8(a.canonical_bytes()).unwrap(),
        format!(
            r#"{{"chain":"local","code_lot":"LL0000001","device_id":null,"key":"{}","payload":{{"a":{{"x":"é\n","y":[1,2.5]}},"b":1}},"prev":"00","seq":2,"time":"2026-01-20T10:01:00.000Z","type":"lot_started"}}"#,
            key.id
        )
    );
    // A line read back is the same entry.
    let read: Entry = serde_json::from_slice(&a.line()).unwrap();
    assert_eq!(read, a);
    assert!(read.hash_matches());
}

#[test]
fn a_key_file_others_may_read_is_refused_and_a_second_writer_is_turned_away() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let keys = chain_of(root.path(), 1);
    let (writer, _) = ChainWriter::open(&root.path().join("ledger"), "local", &keys).unwrap();
    let second = ChainWriter::open(&root.path().join("ledger"), "local", &keys)
        .err()
        .unwrap();
    assert!(second.to_string().contains("another process"), "{second}");
    let id = writer.key_id().to_string();
    drop(writer);
    let key_path = keys.dir().join(format!("{id}.key"));
    assert_eq!(
        fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).unwrap();
    let refused = ChainWriter::open(&root.path().join("ledger"), "local", &keys)
        .err()
        .unwrap();
    assert!(format!("{refused:#}").contains("chmod 600"), "{refused:#}");
}

#[test]
fn a_lots_certificate_checks_offline_and_one_changed_byte_is_found_and_named() {
    use super::certificate::{check, export};
    let root = tempfile::tempdir().unwrap();
    let keys = chain_of(root.path(), 4);
    let ledger = root.path().join("ledger");
    let (mut writer, _) = ChainWriter::open(&ledger, "local", &keys).unwrap();
    writer
        .rotate(&keys, "2026-02-01T00:00:00.000Z".into())
        .unwrap();
    let mut later = event(2);
    later.kind = EntryKind::DayClosed;
    later.payload = json!({"jour": 1, "repas": 2});
    writer.append(vec![later, event(7)]).unwrap();
    drop(writer);
    // Lot LL0000002: entry 4 (signed by the first key) and entry 7 (by the second).
    let certificate = export(&ledger, "LL0000002").unwrap();
    let seqs: Vec<u64> = certificate.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [4, 7]);
    assert_eq!((certificate.keys.len(), certificate.head.seq), (2, 8));
    assert!(
        certificate
            .url
            .starts_with("gaveurs-ledger:local/LL0000002?head=8-")
    );
    let bytes = certificate.to_bytes();
    let checked = check(&bytes).unwrap();
    assert_eq!((checked.entries, checked.head_seq), (2, 8));

    let text = String::from_utf8(bytes.clone()).unwrap();
    let changed = |from: &str, to: &str| -> String {
        assert!(text.contains(from), "{from} in {text}");
        check(text.replacen(from, to, 1).as_bytes()).unwrap_err()
    };
    // A payload inside the lot's second entry.
    let why = changed("\"repas\":2", "\"repas\":3");
    assert!(
        why.contains("entry 7 (day_closed)") && why.contains("hash"),
        "{why}"
    );
    // The second key's public key.
    let public = certificate.keys[1].payload["public_key"].as_str().unwrap();
    let flipped = format!(
        "{}{}",
        if public.starts_with('0') { "1" } else { "0" },
        &public[1..]
    );
    let why = changed(public, &flipped);
    assert!(why.contains("entry 6 (key_rotated)"), "{why}");
    // The head's signature.
    let sig = &certificate.head.sig;
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    let why = changed(sig, &flipped);
    assert!(
        why.contains("entry 8") && why.contains("signature"),
        "{why}"
    );
    // The short form, and the layout.
    let why = changed("&n=2", "&n=3");
    assert!(why.contains("url"), "{why}");
    let why = check(format!("{} ", text.trim_end()).as_bytes()).unwrap_err();
    assert!(why.contains("canonical"), "{why}");
    // A lot the chain never saw.
    assert!(export(&ledger, "LL9999999").is_err());
}
