//! CSV (RFC 4180): a header row, `"` quoting with `""` escapes, newlines inside quotes.
//!
//! An empty unquoted field is NULL; an empty quoted field (`""`) is the empty string,
//! as in PostgreSQL's `COPY ... CSV`.

/// CSV reading options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvOptions {
    pub delimiter: u8,
    pub quote: u8,
    /// The first record of every file names the columns.
    pub header: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: b',',
            quote: b'"',
            header: true,
        }
    }
}

/// Length of the first record of `buf` (through its newline outside quotes), if complete.
///
/// A quote opens a quoted field only at the start of a field, as the splitter reads it,
/// so a stray quote inside an unquoted field cannot swallow the lines after it.
pub(super) fn frame(buf: &[u8], o: &CsvOptions) -> Option<usize> {
    let mut field_start = true;
    let mut quoted = false;
    let mut i = 0;
    while i < buf.len() {
        let b = buf[i];
        if quoted {
            if b == o.quote {
                if buf.get(i + 1) == Some(&o.quote) {
                    i += 1;
                } else {
                    quoted = false;
                }
            }
        } else if b == b'\n' {
            return Some(i + 1);
        } else if b == o.quote && field_start {
            quoted = true;
        }
        field_start = !quoted && b == o.delimiter;
        i += 1;
    }
    None
}

/// Splits one record (without its newline) into fields; `None` is an empty unquoted field.
pub(super) fn split(
    rec: &[u8],
    o: &CsvOptions,
) -> Result<Vec<Option<String>>, (usize, &'static str)> {
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        let start = i;
        let mut cell: Vec<u8>;
        let quoted = rec.get(i) == Some(&o.quote);
        if quoted {
            i += 1;
            cell = Vec::new();
            loop {
                match rec.get(i) {
                    None => return Err((start, "unterminated quoted field")),
                    Some(&b) if b == o.quote => {
                        if rec.get(i + 1) == Some(&o.quote) {
                            cell.push(o.quote);
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(&b) => {
                        cell.push(b);
                        i += 1;
                    }
                }
            }
            if rec.get(i).is_some_and(|&b| b != o.delimiter) {
                return Err((i, "text after a closing quote"));
            }
        } else {
            while let Some(&b) = rec.get(i) {
                if b == o.delimiter {
                    break;
                }
                if b == o.quote {
                    return Err((i, "quote inside an unquoted field"));
                }
                i += 1;
            }
            cell = rec[start..i].to_vec();
        }
        let text = String::from_utf8(cell).map_err(|_| (start, "invalid UTF-8"))?;
        fields.push(if text.is_empty() && !quoted {
            None
        } else {
            Some(text)
        });
        match rec.get(i) {
            None => return Ok(fields),
            Some(_) => i += 1, // the delimiter
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{read_all, Format};
    use super::*;
    use crate::value::Value;

    #[test]
    fn header_quotes_and_embedded_newlines() {
        let data =
            b"id,name,note\n1,\"Smith, J\",\"line one\nline two\"\n2,,\"\"\"quoted\"\"\"\n3,x";
        let out = read_all(&Format::Csv(CsvOptions::default()), data);
        assert_eq!(out.len(), 2, "header skipped, partial last record waits");
        let (off, r) = out[0].as_ref().unwrap();
        assert_eq!(*off, 13);
        assert_eq!(r.get("name"), Some(&Value::Text("Smith, J".into())));
        assert_eq!(
            r.get("note"),
            Some(&Value::Text("line one\nline two".into()))
        );
        let (_, r) = out[1].as_ref().unwrap();
        assert_eq!(r.get("name"), Some(&Value::Null));
        assert_eq!(r.get("note"), Some(&Value::Text("\"quoted\"".into())));
    }

    #[test]
    fn wrong_field_count_and_stray_quote_are_errors_with_offsets() {
        let data = b"a,b\n1,2,3\n1,x\"y\n5,6\n";
        let out = read_all(&Format::Csv(CsvOptions::default()), data);
        assert_eq!(out[0].as_ref().unwrap_err().offset, 4);
        assert!(out[0].as_ref().unwrap_err().reason.contains("3 fields"));
        assert_eq!(out[1].as_ref().unwrap_err().offset, 10);
        assert!(out[2].is_ok());
    }
}
