//! The SMS directory: who receives a gaveur's alerts.
//!
//! A CSV file with a header row and one gaveur per line:
//!
//! ```text
//! gaveur_id,phone
//! 12,+33612345678
//! 27,+33698765432
//! ```
//!
//! Whitespace around values and blank lines are ignored. Every phone must be in E.164 form
//! (`+`, the country code, the number: 2 to 15 digits, no spaces), which is what Twilio
//! expects, so a typo is reported when the file is loaded rather than when an alert fires. A
//! gaveur appears at most once. Errors name the line and the offending value.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// gaveur_id → phone number (E.164), loaded from a CSV file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Directory {
    phones: HashMap<i64, String>,
}

/// Why a directory file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("cannot read the SMS directory {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "SMS directory {origin}: the first line must be the header `gaveur_id,phone`, found {found:?}"
    )]
    Header { origin: String, found: String },
    #[error("SMS directory {origin}, line {line}: expected `gaveur_id,phone`, found {found:?}")]
    Fields {
        origin: String,
        line: usize,
        found: String,
    },
    #[error("SMS directory {origin}, line {line}: gaveur_id {value:?} is not an integer")]
    GaveurId {
        origin: String,
        line: usize,
        value: String,
    },
    #[error(
        "SMS directory {origin}, line {line}: phone {value:?} is not in E.164 form \
         (+ then 2 to 15 digits, no spaces, e.g. +33612345678)"
    )]
    Phone {
        origin: String,
        line: usize,
        value: String,
    },
    #[error(
        "SMS directory {origin}, line {line}: gaveur_id {gaveur_id} already appears on line {first_line}"
    )]
    Duplicate {
        origin: String,
        line: usize,
        gaveur_id: i64,
        first_line: usize,
    },
}

impl Directory {
    /// A directory with nobody in it: no alert finds a recipient.
    pub fn empty() -> Directory {
        Directory::default()
    }

    /// Reads and checks the CSV file at `path` (see the module documentation).
    pub fn load(path: &Path) -> Result<Directory, DirectoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| DirectoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Directory::parse(&text, &path.display().to_string())
    }

    /// Parses the CSV `text`; `origin` (a file name) is only used in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Directory, DirectoryError> {
        let origin = origin.to_string();
        // Rows of another width are refused below, naming their line, so the reader takes them.
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let mut record = csv::StringRecord::new();
        let mut rows = std::iter::from_fn(|| {
            while reader.read_record(&mut record).ok()? {
                let fields: Vec<String> = record.iter().map(unquote).collect();
                if fields.iter().any(|f| !f.is_empty()) {
                    let end = reader.position().byte() as usize;
                    return Some((line_of_record(text, end, &record), fields));
                }
            }
            None
        });

        let header = rows.next().map(|(_, row)| row).unwrap_or_default();
        let header_fields: Vec<&str> = header
            .iter()
            .map(|f| f.trim_start_matches('\u{feff}'))
            .collect();
        if !matches!(header_fields.as_slice(), [id, phone]
            if id.eq_ignore_ascii_case("gaveur_id") && phone.eq_ignore_ascii_case("phone"))
        {
            return Err(DirectoryError::Header {
                origin,
                found: header_fields.join(","),
            });
        }

        let mut phones = HashMap::new();
        let mut first_lines = HashMap::new();
        for (line, row) in rows {
            let [id, phone] = &row[..] else {
                return Err(DirectoryError::Fields {
                    origin,
                    line,
                    found: row.join(","),
                });
            };
            let Ok(gaveur_id) = id.parse::<i64>() else {
                return Err(DirectoryError::GaveurId {
                    origin,
                    line,
                    value: id.to_string(),
                });
            };
            if !is_e164(phone) {
                return Err(DirectoryError::Phone {
                    origin,
                    line,
                    value: phone.to_string(),
                });
            }
            if let Some(&first_line) = first_lines.get(&gaveur_id) {
                return Err(DirectoryError::Duplicate {
                    origin,
                    line,
                    gaveur_id,
                    first_line,
                });
            }
            first_lines.insert(gaveur_id, line);
            phones.insert(gaveur_id, phone.to_string());
        }
        Ok(Directory { phones })
    }

    /// The phone number (E.164) of `gaveur_id`, if the directory has one.
    pub fn phone(&self, gaveur_id: i64) -> Option<&str> {
        self.phones.get(&gaveur_id).map(String::as_str)
    }

    /// How many gaveurs have a phone number.
    pub fn len(&self) -> usize {
        self.phones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.phones.is_empty()
    }
}

impl FromIterator<(i64, String)> for Directory {
    /// A directory built in code (tests, other sources); the numbers are not checked.
    fn from_iter<I: IntoIterator<Item = (i64, String)>>(entries: I) -> Directory {
        Directory {
            phones: entries.into_iter().collect(),
        }
    }
}

impl fmt::Debug for Directory {
    // Phone numbers are personal data: logs get the size, not the content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("gaveurs", &self.phones.len())
            .finish()
    }
}

/// A field without the quotes a spreadsheet may leave around it when spaces surround them
/// (the `csv` reader only unquotes a field that starts with its quote).
fn unquote(field: &str) -> String {
    field
        .strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .map_or(field, str::trim)
        .to_string()
}

/// The line (1-based) on which a record of `text` starts, from where the reader stopped after
/// it (at most one byte into its terminator); the `csv` crate's own positions count a CRLF's
/// LF and skipped blank lines with the next record.
fn line_of_record(text: &str, end: usize, record: &csv::StringRecord) -> usize {
    let before = &text.as_bytes()[..end];
    let before = before.strip_suffix(b"\n").unwrap_or(before);
    let breaks = before.iter().filter(|b| **b == b'\n').count();
    let inside: usize = record.iter().map(|f| f.matches('\n').count()).sum();
    breaks - inside + 1
}

/// `+`, then 2 to 15 digits, the first of which is not 0.
pub fn is_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.csv");
        std::fs::write(
            &path,
            "\u{feff}gaveur_id , phone\r\n12,+33612345678\r\n\n   \n 27 , \"+33698765432\" \r\n-3,+15551234567\n",
        )
        .unwrap();
        let directory = Directory::load(&path).unwrap();
        assert_eq!(directory.len(), 3);
        assert_eq!(directory.phone(12), Some("+33612345678"));
        assert_eq!(directory.phone(27), Some("+33698765432"));
        assert_eq!(directory.phone(-3), Some("+15551234567"));
        assert_eq!(directory.phone(1), None);
        assert_eq!(format!("{directory:?}"), "Directory { gaveurs: 3 }");

        let only_header = Directory::parse("gaveur_id,phone\n", "x").unwrap();
        assert!(only_header.is_empty());
        assert!(Directory::empty().is_empty());
    }

    #[test]
    fn a_bad_phone_names_its_line() {
        let text = "gaveur_id,phone\n12,+33612345678\n\n13,+33 6 12 34 56 78\n";
        let err = Directory::parse(text, "dir.csv").unwrap_err();
        assert!(
            matches!(&err, DirectoryError::Phone { line: 4, value, .. } if value == "+33 6 12 34 56 78"),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("dir.csv, line 4"), "{message}");
        assert!(message.contains("+33 6 12 34 56 78"), "{message}");

        for bad in [
            "0612345678",
            "+0612345678",
            "+3",
            "+1234567890123456",
            "+33-612",
            "+",
            "",
        ] {
            let text = format!("gaveur_id,phone\n1,{bad}\n");
            assert!(
                matches!(
                    Directory::parse(&text, "x"),
                    Err(DirectoryError::Phone { line: 2, .. })
                ),
                "{bad:?} accepted"
            );
        }
        for good in ["+33612345678", "+12", "+123456789012345"] {
            assert!(is_e164(good), "{good}");
        }
    }

    #[test]
    fn other_errors() {
        let err = Directory::parse("gaveur_id,phone\n12,+33612345678\n12,+33698765432\n", "x");
        assert!(
            matches!(
                err,
                Err(DirectoryError::Duplicate {
                    line: 3,
                    gaveur_id: 12,
                    first_line: 2,
                    ..
                })
            ),
            "{err:?}"
        );

        for missing in [
            "",
            "\n\n",
            "12,+33612345678\n",
            "id,phone\n1,+33612345678\n",
        ] {
            let err = Directory::parse(missing, "x");
            assert!(
                matches!(err, Err(DirectoryError::Header { .. })),
                "{missing:?}: {err:?}"
            );
        }

        let err = Directory::parse("gaveur_id,phone\nabc,+33612345678\n", "x");
        assert!(
            matches!(&err, Err(DirectoryError::GaveurId { line: 2, value, .. }) if value == "abc"),
            "{err:?}"
        );
        let err = Directory::parse("gaveur_id,phone\n1,+33612345678,x\n", "x");
        assert!(
            matches!(err, Err(DirectoryError::Fields { line: 2, .. })),
            "{err:?}"
        );
        let err = Directory::parse("gaveur_id,phone\n1\n", "x");
        assert!(
            matches!(err, Err(DirectoryError::Fields { line: 2, .. })),
            "{err:?}"
        );

        let err = Directory::load(Path::new("/nonexistent/directory.csv")).unwrap_err();
        assert!(matches!(err, DirectoryError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/directory.csv"));
    }
}
