//! CSV files for `gaveurs replay`, gzip'd or plain (told apart by the gzip magic bytes).
//!
//! RFC 4180 as spreadsheets and pandas write it: comma-separated, a header row, fields in
//! double quotes when they hold a comma, a quote (doubled) or a line break, CRLF or LF line
//! ends, an optional UTF-8 byte-order mark — read by the `csv` crate. Columns are found by their
//! header name, never by position, so files whose columns are reordered or extended still read
//! the same.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use anyhow::Context;
use flate2::read::MultiGzDecoder;

/// A CSV file being read, row by row.
pub struct CsvReader {
    input: csv::Reader<NewlineCounting>,
    /// Where the line breaks the `csv` reader has read ahead are, for line numbers.
    newlines: Arc<Mutex<Newlines>>,
    path: PathBuf,
    columns: HashMap<String, usize>,
    width: usize,
    record: csv::ByteRecord,
}

/// The line breaks read so far: how many lie before `base`, and the offsets of those after.
/// (The `csv` crate's own record positions count a CRLF's LF and skipped blank lines with
/// the next record, so line numbers are counted here.)
#[derive(Default)]
struct Newlines {
    before_base: usize,
    base: u64,
    offsets: VecDeque<u64>,
}

impl Newlines {
    /// The line (1-based) on which a record ends whose terminator starts at byte `end`,
    /// forgetting the line breaks before it.
    fn line_ending_at(&mut self, end: u64) -> usize {
        while self.offsets.front().is_some_and(|&o| o < end) {
            self.offsets.pop_front();
            self.before_base += 1;
        }
        self.base = end;
        self.before_base + 1
    }
}

/// The input, noting the offset of every `\n` it hands to the `csv` reader.
struct NewlineCounting {
    input: Box<dyn Read>,
    read: u64,
    newlines: Arc<Mutex<Newlines>>,
}

impl Read for NewlineCounting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        let mut newlines = self.newlines.lock();
        for (i, _) in buf[..n].iter().enumerate().filter(|(_, b)| **b == b'\n') {
            newlines.offsets.push_back(self.read + i as u64);
        }
        self.read += n as u64;
        Ok(n)
    }
}

/// One data row; its `line` is where it starts in the file (the header is line 1).
#[derive(Debug)]
pub struct Row {
    pub line: usize,
    fields: Vec<String>,
}

impl Row {
    /// The field at a column index from [`CsvReader::column`].
    pub fn get(&self, column: usize) -> &str {
        self.fields.get(column).map(String::as_str).unwrap_or("")
    }
}

/// A row that is not a row of this file's shape; reading goes on after it.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub line: usize,
    pub reason: String,
}

impl CsvReader {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> anyhow::Result<CsvReader> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut raw = BufReader::new(file);
        let gzip = raw
            .fill_buf()
            .with_context(|| format!("cannot read {}", path.display()))?
            .starts_with(&[0x1f, 0x8b]);
        let input: Box<dyn Read> = if gzip {
            Box::new(BufReader::with_capacity(
                64 * 1024,
                MultiGzDecoder::new(raw),
            ))
        } else {
            Box::new(raw)
        };
        Self::from_reader(input, path)
    }

    fn from_reader(input: Box<dyn Read>, path: &Path) -> anyhow::Result<CsvReader> {
        let newlines = Arc::new(Mutex::new(Newlines::default()));
        let mut reader = CsvReader {
            // Rows of another width are reported one by one, so the reader must not refuse them.
            input: csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(NewlineCounting {
                    input,
                    read: 0,
                    newlines: newlines.clone(),
                }),
            newlines,
            path: path.to_path_buf(),
            columns: HashMap::new(),
            width: 0,
            record: csv::ByteRecord::new(),
        };
        let header = loop {
            match reader.record()? {
                None => anyhow::bail!("{} is empty: no header row", path.display()),
                Some((_, fields)) if fields.iter().all(|f| f.trim().is_empty()) => continue,
                Some((_, fields)) => break fields,
            }
        };
        for (i, name) in header.iter().enumerate() {
            let name = name.trim().trim_start_matches('\u{feff}').trim();
            // The first of two same-named columns wins.
            reader.columns.entry(name.to_string()).or_insert(i);
        }
        reader.width = header.len();
        Ok(reader)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The index of a column, if the header has it.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.get(name).copied()
    }

    /// The indices of columns the file must have, in the order asked; an error names every
    /// missing one.
    pub fn require<const N: usize>(&self, names: [&str; N]) -> anyhow::Result<[usize; N]> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| self.column(n).is_none())
            .collect();
        if !missing.is_empty() {
            let mut found: Vec<(&String, &usize)> = self.columns.iter().collect();
            found.sort_by_key(|(_, i)| **i);
            anyhow::bail!(
                "{} has no column {} (its header: {})",
                self.path.display(),
                missing.join(", "),
                found
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        Ok(names.map(|n| self.column(n).expect("checked above")))
    }

    /// The next data row: `Ok(None)` at the end, `Err` for a row of the wrong width (reading
    /// can go on); blank lines are skipped. I/O errors (a truncated gzip stream) end the
    /// file with an error.
    pub fn next_row(&mut self) -> anyhow::Result<Option<Result<Row, BadRow>>> {
        loop {
            let Some((line, fields)) = self.record()? else {
                return Ok(None);
            };
            if fields.len() == 1 && fields[0].trim().is_empty() {
                continue;
            }
            if fields.len() != self.width {
                return Ok(Some(Err(BadRow {
                    line,
                    reason: format!(
                        "{} fields where the header has {}",
                        fields.len(),
                        self.width
                    ),
                })));
            }
            return Ok(Some(Ok(Row { line, fields })));
        }
    }

    /// One record (a quoted field may span lines) and the line it starts on. Bytes that are
    /// not UTF-8 are replaced rather than refused: the field's own check will name the row.
    fn record(&mut self) -> anyhow::Result<Option<(usize, Vec<String>)>> {
        let more = self
            .input
            .read_byte_record(&mut self.record)
            .with_context(|| {
                format!(
                    "cannot read {} after line {}",
                    self.path.display(),
                    self.newlines.lock().before_base + 1
                )
            })?;
        if !more {
            return Ok(None);
        }
        // The reader stops just after the record's last byte (a terminator's first byte at
        // most): the record starts on that line less the line breaks inside its fields.
        let mut end = self.input.position().byte();
        let end_line = {
            let mut newlines = self.newlines.lock();
            if newlines.offsets.iter().any(|&o| o + 1 == end) {
                end -= 1;
            }
            newlines.line_ending_at(end)
        };
        let inside = self
            .record
            .iter()
            .flatten()
            .filter(|b| **b == b'\n')
            .count();
        let fields = self
            .record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        Ok(Some((end_line - inside, fields)))
    }
}

/// Reads every row of a file, for tests and small inputs.
#[cfg(test)]
fn rows_of(bytes: &[u8]) -> anyhow::Result<(CsvReader, Vec<Result<Row, BadRow>>)> {
    let input: Box<dyn Read> = Box::new(std::io::Cursor::new(bytes.to_vec()));
    let mut reader = CsvReader::from_reader(input, Path::new("test.csv"))?;
    let mut rows = Vec::new();
    while let Some(row) = reader.next_row()? {
        rows.push(row);
    }
    Ok((reader, rows))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn columns_are_found_by_name_and_quotes_are_honoured() {
        let (reader, rows) = rows_of(
            "\u{feff}b,a,c\r\n2,1,\"x, \"\"y\"\"\"\r\n\r\n5,4,\"two\nlines\"\n,,\n".as_bytes(),
        )
        .unwrap();
        let [a, b, c] = reader.require(["a", "b", "c"]).unwrap();
        let rows: Vec<Row> = rows.into_iter().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].get(a), rows[0].get(b), rows[0].get(c)),
            ("1", "2", "x, \"y\"")
        );
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[1].get(c), "two\nlines");
        assert_eq!(rows[1].line, 4);
        assert_eq!((rows[2].get(a), rows[2].line), ("", 6));
    }

    #[test]
    fn rows_of_the_wrong_width_are_reported_and_reading_goes_on() {
        let (_, rows) = rows_of(b"a,b\n1,2\n1,2,3\n4\n5,6").unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows[1].as_ref().unwrap_err(),
            &BadRow {
                line: 3,
                reason: "3 fields where the header has 2".into()
            }
        );
        assert!(rows[2].is_err());
        assert_eq!(rows[3].as_ref().unwrap().get(1), "6");
    }

    #[test]
    fn missing_columns_are_named() {
        let (reader, _) = rows_of(b"a,b\n").unwrap();
        let err = reader.require(["a", "x", "y"]).unwrap_err().to_string();
        assert!(err.contains("no column x, y"), "{err}");
        assert!(rows_of(b"").is_err());
    }

    #[test]
    fn gzip_and_plain_files_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let text = "code_lot,jour\nLL1,1\nLL1,2\n";
        let plain = dir.path().join("m.csv");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("m.csv.gz");
        let mut encoder =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap();
        assert!(std::fs::read(&gz).unwrap().starts_with(&[0x1f, 0x8b]));
        for path in [plain, gz] {
            let mut reader = CsvReader::open(&path).unwrap();
            let [jour] = reader.require(["jour"]).unwrap();
            let mut days = Vec::new();
            while let Some(row) = reader.next_row().unwrap() {
                days.push(row.unwrap().get(jour).to_string());
            }
            assert_eq!(days, ["1", "2"]);
        }
    }
}
