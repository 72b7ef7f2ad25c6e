//! Typed values and records (ordered field lists).

use serde::{Deserialize, Serialize};

/// One typed value of a row or record.
///
/// Values keep their type on the wire (SPEC §4): integers stay integers, decimals keep
/// every digit, timestamps are ISO-8601 text, binary is base64.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// An exact decimal number as its text (`-123.4500`, `18446744073709551616`).
    /// Encoded as a JSON number when an f64 holds it exactly, else as a JSON string.
    Decimal(String),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    /// An ISO-8601 timestamp, `2024-11-21T16:00:00Z` or `2024-11-21T16:00:00.123456`.
    Timestamp(String),
    /// A nested JSON document (object or array), kept as its text and sent verbatim.
    Json(String),
}

/// The fields of one row or record, in source order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    fields: Vec<(String, Value)>,
}

impl Record {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Self {
            fields: Vec::with_capacity(n),
        }
    }

    /// Appends a field. A later field with the same name replaces the earlier one's value.
    pub fn push(&mut self, name: impl Into<String>, value: Value) {
        let name = name.into();
        if let Some(slot) = self.fields.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else {
            self.fields.push((name, value));
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The value of a field, to change in place (the field `get` returns).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        self.fields
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Removes a field and returns its value.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let i = self.fields.iter().position(|(n, _)| n == name)?;
        Some(self.fields.remove(i).1)
    }

    /// The fields, in order, by value.
    pub fn into_fields(self) -> impl Iterator<Item = (String, Value)> {
        self.fields.into_iter()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

impl FromIterator<(String, Value)> for Record {
    fn from_iter<T: IntoIterator<Item = (String, Value)>>(iter: T) -> Self {
        let mut r = Record::new();
        for (n, v) in iter {
            r.push(n, v);
        }
        r
    }
}

impl Value {
    /// The value as text, for building subjects and keys from a field.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) | Value::Decimal(s) | Value::Timestamp(s) => Some(s),
            _ => None,
        }
    }
}
