//! JSON: the wire encoding of change events, and a parser for JSON-object records.
//!
//! Both are written by hand rather than through `serde_json::Value` for two reasons:
//! numbers must keep every digit they arrived with (a decimal column or a 20-digit
//! identifier must not pass through an f64), and the hot path must not allocate per
//! field. The encoder appends to a caller's buffer that is reused for every event.

use std::io::Write as _;

use base64::Engine as _;
use thiserror::Error;

use crate::event::ChangeEvent;
use crate::value::{Record, Value};

/// Appends the wire JSON of `ev` to `out` (SPEC §4, Debezium-compatible envelope).
pub fn encode_event(ev: &ChangeEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(ev.op.code().as_bytes());
    out.extend_from_slice(b"\",\"key\":");
    encode_opt_record(ev.key.as_ref(), out);
    out.extend_from_slice(b",\"before\":");
    encode_opt_record(ev.before.as_ref(), out);
    out.extend_from_slice(b",\"after\":");
    encode_opt_record(ev.after.as_ref(), out);
    let s = &ev.source;
    out.extend_from_slice(b",\"source\":{\"agent\":");
    encode_str(&s.agent, out);
    out.extend_from_slice(b",\"name\":");
    encode_str(&s.name, out);
    out.extend_from_slice(b",\"kind\":");
    encode_str(&s.kind, out);
    out.extend_from_slice(b",\"table\":");
    encode_str(&s.table, out);
    out.extend_from_slice(b",\"position\":");
    encode_str(&s.position, out);
    out.extend_from_slice(b",\"ts_ms\":");
    write_int(s.ts_ms, out);
    out.extend_from_slice(if s.snapshot {
        b",\"snapshot\":true}"
    } else {
        b",\"snapshot\":false}"
    });
    out.extend_from_slice(b",\"ts_ms\":");
    write_int(ev.ts_ms, out);
    out.push(b'}');
}

fn encode_opt_record(r: Option<&Record>, out: &mut Vec<u8>) {
    match r {
        None => out.extend_from_slice(b"null"),
        Some(r) => encode_record(r, out),
    }
}

/// Appends a record as a JSON object, fields in order.
pub fn encode_record(r: &Record, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (name, value)) in r.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode_str(name, out);
        out.push(b':');
        encode_value(value, out);
    }
    out.push(b'}');
}

/// Appends one value in its wire form.
pub fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(i) => write_int(*i, out),
        Value::Decimal(d) => {
            if decimal_fits_f64(d) {
                out.extend_from_slice(d.as_bytes());
            } else {
                encode_str(d, out);
            }
        }
        Value::Float(f) => {
            if f.is_finite() {
                // Display for f64 is the shortest text that reads back to the same f64.
                let _ = write!(out, "{f}");
                if f.fract() == 0.0 && f.abs() < 1e16 {
                    out.extend_from_slice(b".0");
                }
            } else if f.is_nan() {
                out.extend_from_slice(b"\"NaN\"");
            } else if *f > 0.0 {
                out.extend_from_slice(b"\"Infinity\"");
            } else {
                out.extend_from_slice(b"\"-Infinity\"");
            }
        }
        Value::Text(s) | Value::Timestamp(s) => encode_str(s, out),
        Value::Bytes(b) => {
            out.push(b'"');
            let start = out.len();
            let n = base64::encoded_len(b.len(), true).unwrap_or(0);
            out.resize(start + n, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(b, &mut out[start..])
                .unwrap_or(0);
            out.truncate(start + written);
            out.push(b'"');
        }
        Value::Json(raw) => out.extend_from_slice(raw.as_bytes()),
    }
}

fn write_int(i: i64, out: &mut Vec<u8>) {
    let _ = write!(out, "{i}");
}

/// Whether a decimal's text can be sent as a JSON number without losing a digit: true
/// when it is a plain JSON number and an f64 holds exactly the value it writes.
pub fn decimal_fits_f64(d: &str) -> bool {
    if !is_json_number(d.as_bytes()) || d.contains(['e', 'E']) {
        return false;
    }
    let Ok(f) = d.parse::<f64>() else {
        return false;
    };
    if !f.is_finite() {
        return false;
    }
    normalize_decimal(d) == normalize_decimal(&format!("{f}"))
}

/// Strips a sign of zero, leading integer zeros and trailing fraction zeros.
fn normalize_decimal(d: &str) -> String {
    let (neg, digits) = match d.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, d),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let mut s = String::with_capacity(d.len());
    if int.is_empty() && frac.is_empty() {
        return "0".into();
    }
    if neg {
        s.push('-');
    }
    s.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        s.push('.');
        s.push_str(frac);
    }
    s
}

/// Appends a JSON string literal.
pub fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                let _ = write!(out, "\\u{b:04x}");
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn is_json_number(b: &[u8]) -> bool {
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let s = i;
        while matches!(b.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let s = i;
        while matches!(b.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == b.len()
}

/// Why a JSON record could not be read; `at` is the byte offset inside the record.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{what} at byte {at} of the record")]
pub struct JsonError {
    pub at: usize,
    pub what: &'static str,
}

fn err<T>(at: usize, what: &'static str) -> Result<T, JsonError> {
    Err(JsonError { at, what })
}

/// Deepest nesting accepted inside a record; deeper input is refused, not recursed into.
const MAX_DEPTH: usize = 128;

/// Parses one JSON object into a record.
///
/// Top-level fields become typed values: strings are text, integers that fit an i64 are
/// integers, other numbers without an exponent are exact decimals, numbers with an
/// exponent are floats, and nested objects and arrays are kept as their JSON text.
pub fn parse_object(input: &[u8]) -> Result<Record, JsonError> {
    let text = match std::str::from_utf8(input) {
        Ok(t) => t,
        Err(e) => return err(e.valid_up_to(), "invalid UTF-8"),
    };
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        i: 0,
    };
    p.ws();
    if p.peek() != Some(b'{') {
        return err(p.i, "expected a JSON object");
    }
    p.i += 1;
    let mut rec = Record::with_capacity(8);
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            if p.peek() != Some(b'"') {
                return err(p.i, "expected a field name");
            }
            let name = p.string()?;
            p.ws();
            if p.peek() != Some(b':') {
                return err(p.i, "expected ':'");
            }
            p.i += 1;
            p.ws();
            let value = p.value()?;
            rec.push(name, value);
            p.ws();
            match p.peek() {
                Some(b',') => p.i += 1,
                Some(b'}') => {
                    p.i += 1;
                    break;
                }
                _ => return err(p.i, "expected ',' or '}'"),
            }
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return err(p.i, "unexpected text after the object");
    }
    Ok(rec)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Result<Value, JsonError> {
        match self.peek() {
            Some(b'"') => Ok(Value::Text(self.string()?)),
            Some(b'{' | b'[') => {
                let start = self.i;
                self.skip_nested(0)?;
                Ok(Value::Json(self.text[start..self.i].to_owned()))
            }
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => err(self.i, "expected a value"),
            None => err(self.i, "unexpected end of record"),
        }
    }

    fn literal(&mut self, word: &'static str, v: Value) -> Result<Value, JsonError> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            err(self.i, "expected a value")
        }
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.i;
        let mut frac = false;
        let mut exp = false;
        while let Some(b) = self.peek() {
            match b {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' => frac = true,
                b'e' | b'E' => exp = true,
                _ => break,
            }
            self.i += 1;
        }
        let t = &self.text[start..self.i];
        if !is_json_number(t.as_bytes()) {
            return err(start, "malformed number");
        }
        if exp {
            return match t.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Value::Float(f)),
                _ => Ok(Value::Decimal(t.to_owned())),
            };
        }
        if !frac {
            if let Ok(i) = t.parse::<i64>() {
                return Ok(Value::Int(i));
            }
        }
        Ok(Value::Decimal(t.to_owned()))
    }

    /// Skips a nested object or array, checking that it is well-formed JSON.
    fn skip_nested(&mut self, depth: usize) -> Result<(), JsonError> {
        if depth >= MAX_DEPTH {
            return err(self.i, "nested too deeply");
        }
        let close = if self.peek() == Some(b'{') {
            b'}'
        } else {
            b']'
        };
        self.i += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if close == b'}' {
                if self.peek() != Some(b'"') {
                    return err(self.i, "expected a field name");
                }
                self.skip_string()?;
                self.ws();
                if self.peek() != Some(b':') {
                    return err(self.i, "expected ':'");
                }
                self.i += 1;
                self.ws();
            }
            match self.peek() {
                Some(b'{' | b'[') => self.skip_nested(depth + 1)?,
                Some(b'"') => self.skip_string()?,
                _ => {
                    self.value()?;
                }
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b) if b == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return err(self.i, "expected ',' or a closing bracket"),
            }
        }
    }

    fn skip_string(&mut self) -> Result<(), JsonError> {
        self.string().map(drop)
    }

    /// Reads a string literal (the cursor is on its opening quote).
    fn string(&mut self) -> Result<String, JsonError> {
        let open = self.i;
        self.i += 1;
        let start = self.i;
        // Fast path: no escapes.
        while let Some(b) = self.peek() {
            match b {
                b'"' => {
                    let s = self.text[start..self.i].to_owned();
                    self.i += 1;
                    return Ok(s);
                }
                b'\\' => break,
                0..=0x1f => return err(self.i, "control character in string"),
                _ => self.i += 1,
            }
        }
        let mut out = String::from(&self.text[start..self.i]);
        loop {
            match self.peek() {
                None => return err(open, "unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    let at = self.i;
                    self.i += 1;
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if !self.s[self.i + 1..].starts_with(b"\\u") {
                                    return err(at, "unpaired surrogate");
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return err(at, "unpaired surrogate");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            match char::from_u32(cp) {
                                Some(c) => c,
                                None => return err(at, "unpaired surrogate"),
                            }
                        }
                        _ => return err(at, "bad escape in string"),
                    };
                    out.push(c);
                    self.i += 1;
                }
                Some(0..=0x1f) => return err(self.i, "control character in string"),
                Some(_) => {
                    let run = self.i;
                    while !matches!(self.peek(), None | Some(b'"' | b'\\' | 0..=0x1f)) {
                        self.i += 1;
                    }
                    out.push_str(&self.text[run..self.i]);
                }
            }
        }
    }

    /// Reads the 4 hex digits after `\u`; leaves the cursor on the last one.
    fn hex4(&mut self) -> Result<u32, JsonError> {
        let at = self.i;
        let digits = self.s.get(self.i + 1..self.i + 5).ok_or(JsonError {
            at,
            what: "bad \\u escape",
        })?;
        let mut v = 0u32;
        for &d in digits {
            let n = (d as char).to_digit(16).ok_or(JsonError {
                at,
                what: "bad \\u escape",
            })?;
            v = v * 16 + n;
        }
        self.i += 4;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_fit_or_not() {
        assert!(decimal_fits_f64("0.1"));
        assert!(decimal_fits_f64("-123.4500"));
        assert!(decimal_fits_f64("9007199254740992"));
        // Exact in an f64, but its shortest f64 text loses digits: sent as a string.
        assert!(!decimal_fits_f64("18446744073709551616"));
        assert!(!decimal_fits_f64("12345678901234567890.123"));
        assert!(!decimal_fits_f64("9007199254740993"));
        assert!(!decimal_fits_f64("1e5"));
        assert!(!decimal_fits_f64("abc"));
    }

    #[test]
    fn parses_typed_fields() {
        let r = parse_object(
            br#"{"a":1,"b":-2.50,"c":"x\"y\u00e9\ud83d\ude00","d":null,"e":true,"f":[1,{"g":2}],"h":1.5e3,"i":123456789012345678901234}"#,
        )
        .unwrap();
        assert_eq!(r.get("a"), Some(&Value::Int(1)));
        assert_eq!(r.get("b"), Some(&Value::Decimal("-2.50".into())));
        assert_eq!(r.get("c"), Some(&Value::Text("x\"yé😀".into())));
        assert_eq!(r.get("d"), Some(&Value::Null));
        assert_eq!(r.get("e"), Some(&Value::Bool(true)));
        assert_eq!(r.get("f"), Some(&Value::Json("[1,{\"g\":2}]".into())));
        assert_eq!(r.get("h"), Some(&Value::Float(1500.0)));
        assert_eq!(
            r.get("i"),
            Some(&Value::Decimal("123456789012345678901234".into()))
        );
    }

    #[test]
    fn reports_where_it_failed() {
        assert_eq!(parse_object(b"[1]").unwrap_err().at, 0);
        assert_eq!(parse_object(br#"{"a":1,}"#).unwrap_err().at, 7);
        assert_eq!(parse_object(br#"{"a":tru}"#).unwrap_err().at, 5);
        assert_eq!(parse_object(br#"{"a":1} x"#).unwrap_err().at, 8);
        assert_eq!(
            parse_object(b"{\"a\":\"\xff\"}").unwrap_err().what,
            "invalid UTF-8"
        );
        assert_eq!(
            parse_object(br#"{"a":01}"#).unwrap_err().what,
            "malformed number"
        );
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            parse_object(deep.as_bytes()).unwrap_err().what,
            "nested too deeply"
        );
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = Vec::new();
        encode_str("a\"b\\c\n\u{1}é", &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#""a\"b\\c\n\u0001é""#);
    }
}
