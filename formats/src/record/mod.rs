//! Record formats read from change files: `jsonl`, `csv` and `lines`.
//!
//! Reading a file is two steps. [`Format::frame`] finds where the first complete record
//! in a buffer ends (a newline, or for CSV a newline outside quotes), so a partial last
//! record waits for more bytes. [`Decoder::decode`] turns one framed record into a
//! [`Record`]. Errors carry the byte offset of the record in its file and the offset of
//! the problem inside it.

mod csv;

use thiserror::Error;

use crate::json;
use crate::value::{Record, Value};

pub use self::csv::CsvOptions;

/// How the bytes of a change file are split and read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row; quoted fields may hold newlines.
    Csv(CsvOptions),
    /// One line of text per record, as the field `line`.
    Lines,
}

/// A record that could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("bad record at byte offset {offset}: {reason}")]
pub struct RecordError {
    /// Byte offset of the record's first byte in its file.
    pub offset: u64,
    pub reason: String,
}

impl Format {
    /// Length of the first complete record in `buf`, terminator included, or `None` when
    /// `buf` holds only part of a record so far.
    pub fn frame(&self, buf: &[u8]) -> Option<usize> {
        match self {
            Format::Jsonl | Format::Lines => buf.iter().position(|&b| b == b'\n').map(|i| i + 1),
            Format::Csv(o) => csv::frame(buf, o),
        }
    }

    /// Whether the first record of a file is a header rather than data.
    pub fn has_header(&self) -> bool {
        matches!(self, Format::Csv(o) if o.header)
    }
}

/// Turns framed records of one file into [`Record`]s. Holds the CSV header once read.
#[derive(Debug)]
pub struct Decoder {
    format: Format,
    header: Option<Vec<String>>,
}

impl Decoder {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            header: None,
        }
    }

    pub fn format(&self) -> &Format {
        &self.format
    }

    /// Whether the decoder still needs the file's header record before it can decode data.
    pub fn needs_header(&self) -> bool {
        self.format.has_header() && self.header.is_none()
    }

    /// Reads a file's header record (for CSV with `header = true`).
    pub fn read_header(&mut self, record: &[u8], offset: u64) -> Result<(), RecordError> {
        let Format::Csv(o) = &self.format else {
            return Ok(());
        };
        let fields = csv::split(strip_newline(record), o).map_err(|(at, why)| RecordError {
            offset,
            reason: format!("header: {why} at byte {at} of the record"),
        })?;
        let mut names = Vec::with_capacity(fields.len());
        for (i, f) in fields.into_iter().enumerate() {
            match f {
                Some(n) if !n.is_empty() => names.push(n),
                _ => names.push(format!("column{}", i + 1)),
            }
        }
        self.header = Some(names);
        Ok(())
    }

    /// Decodes one framed record (its terminator may be included) found at `offset`.
    pub fn decode(&mut self, record: &[u8], offset: u64) -> Result<Record, RecordError> {
        let body = strip_newline(record);
        let bad = |reason: String| RecordError { offset, reason };
        match &self.format {
            Format::Jsonl => json::parse_object(body).map_err(|e| bad(e.to_string())),
            Format::Lines => match std::str::from_utf8(body) {
                Ok(s) => {
                    let mut r = Record::with_capacity(1);
                    r.push("line", Value::Text(s.to_owned()));
                    Ok(r)
                }
                Err(e) => Err(bad(format!(
                    "invalid UTF-8 at byte {} of the record",
                    e.valid_up_to()
                ))),
            },
            Format::Csv(o) => {
                let fields = csv::split(body, o)
                    .map_err(|(at, why)| bad(format!("{why} at byte {at} of the record")))?;
                let header = self.header.as_deref().unwrap_or(&[]);
                if o.header && fields.len() != header.len() {
                    return Err(bad(format!(
                        "{} fields where the header has {}",
                        fields.len(),
                        header.len()
                    )));
                }
                let mut r = Record::with_capacity(fields.len());
                for (i, f) in fields.into_iter().enumerate() {
                    let name = match header.get(i) {
                        Some(n) => n.clone(),
                        None => format!("column{}", i + 1),
                    };
                    r.push(name, f.map_or(Value::Null, Value::Text));
                }
                Ok(r)
            }
        }
    }
}

/// Removes one trailing `\n` and a `\r` before it.
fn strip_newline(r: &[u8]) -> &[u8] {
    let r = r.strip_suffix(b"\n").unwrap_or(r);
    r.strip_suffix(b"\r").unwrap_or(r)
}

/// Reads every complete record of `data` (a whole file's bytes from its start), skipping
/// a header. Returns the records with their offsets, and the errors, in file order.
pub fn read_all(format: &Format, data: &[u8]) -> Vec<Result<(u64, Record), RecordError>> {
    let mut dec = Decoder::new(format.clone());
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(n) = format.frame(&data[at..]) {
        let rec = &data[at..at + n];
        if dec.needs_header() {
            if let Err(e) = dec.read_header(rec, at as u64) {
                out.push(Err(e));
            }
        } else {
            out.push(dec.decode(rec, at as u64).map(|r| (at as u64, r)));
        }
        at += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_frames_and_reports_offsets() {
        let data = b"{\"id\":1}\n{\"id\":\n{\"id\":3}\r\n{\"id\":4}";
        let out = read_all(&Format::Jsonl, data);
        assert_eq!(out.len(), 3, "the unterminated last line waits");
        assert_eq!(out[0].as_ref().unwrap().0, 0);
        assert_eq!(out[1].as_ref().unwrap_err().offset, 9);
        let (off, rec) = out[2].as_ref().unwrap();
        assert_eq!(*off, 16);
        assert_eq!(rec.get("id"), Some(&Value::Int(3)));
    }

    #[test]
    fn lines_keep_text_and_refuse_bad_utf8() {
        let out = read_all(&Format::Lines, b"hello world\r\n\xff\xfe\nlast\n");
        assert_eq!(
            out[0].as_ref().unwrap().1.get("line"),
            Some(&Value::Text("hello world".into()))
        );
        assert_eq!(out[1].as_ref().unwrap_err().offset, 13);
        assert_eq!(out[2].as_ref().unwrap().0, 16);
    }
}
