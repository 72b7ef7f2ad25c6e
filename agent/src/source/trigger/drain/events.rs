//! `capture = "rows"`: one event per capture row, with the images its trigger recorded;
//! the event positions, and the parsing of the JSON images into typed records.

use lockstep_formats::json::parse_object;
use lockstep_formats::{Op, Record, Value};

use super::{ChangeRow, Drain, TableDef};
use crate::source::trigger::timestamps;

impl Drain {
    /// `capture = "rows"`: one event per row, with the images the trigger recorded.
    pub(super) fn row_event(&mut self, r: &ChangeRow) {
        if r.origin.is_some() {
            self.to_delete.push(r.id());
            return;
        }
        let mut built = self.build_row(r);
        // The columns are copied out only when they are not the known ones (each row's
        // image is looked at).
        let shape = built.as_ref().ok().and_then(|(t, _, _, before, after)| {
            let image = after.as_ref().or(before.as_ref())?;
            let out = &self.tables[*t];
            if out.knows(|| image.iter().map(|(c, _)| c), image.len()) {
                return None;
            }
            Some((
                *t,
                image.iter().map(|(c, _)| c.to_owned()).collect::<Vec<_>>(),
            ))
        });
        if let Some((t, columns)) = shape {
            if self.table_changed(t, &columns) {
                built = self.build_row(r);
            }
        }
        match built {
            Ok((t, op, key, before, after)) => {
                let position = self.position(r.seq, r.changed_ms);
                self.push(
                    t,
                    op,
                    key,
                    before,
                    after,
                    position,
                    r.changed_ms,
                    vec![r.id()],
                )
            }
            Err(reason) => self.set_aside(r, &reason),
        }
    }

    /// The table, op, key and images of a capture row (`capture = "rows"`).
    #[allow(clippy::type_complexity)]
    fn build_row(
        &self,
        r: &ChangeRow,
    ) -> Result<(usize, Op, Record, Option<Record>, Option<Record>), String> {
        let t = self.table_index(&r.table)?;
        let op = row_op(&r.op)?;
        let def = &self.tables[t].def;
        let key = parse_image(def, "pk", &r.pk)?;
        let image = |name: &str, v: &Option<String>| -> Result<Option<Record>, String> {
            v.as_deref().map(|j| parse_image(def, name, j)).transpose()
        };
        let before = image("before", &r.before)?;
        let after = image("after", &r.after)?;
        Ok((t, op, key, before, after))
    }

    pub(super) fn table_index(&self, table: &str) -> Result<usize, String> {
        self.by_name.get(table).copied().ok_or_else(|| {
            format!("table `{table}` is not one of this source's tables (`tables` in the config)")
        })
    }

    /// The position of the change event whose (last) capture row is `seq`, written at
    /// `changed_ms`: `pg16390.12131@1764412345678`.
    ///
    /// `seq` alone does not name a change for good: it starts again at 1 when the
    /// capture table is made anew or its sequence is reset (`TRUNCATE … RESTART
    /// IDENTITY`, an `AUTO_INCREMENT` a server restart recomputed from an empty table, a
    /// database rebuilt from scratch), and the capture table's identity (`epoch`) does
    /// not always change with it (SQLite has none). A change sent then would get the id
    /// of an older one still in the stream's duplicate window, and JetStream would drop
    /// it as a repeat. The time the capture row was written is stored in the row, so a
    /// row read again gets the same id, and a new row with a reused `seq` another one.
    pub(super) fn position(&mut self, seq: i64, changed_ms: Option<i64>) -> String {
        // Without `format!`: once per event.
        let mut p = String::with_capacity(self.epoch.len() + 42);
        p.push_str(&self.epoch);
        p.push('.');
        push_int(&mut p, seq);
        match changed_ms {
            Some(ms) => {
                p.push('@');
                push_int(&mut p, ms);
            }
            None if !self.no_time_logged => {
                self.no_time_logged = true;
                tracing::warn!(
                    source = &*self.name,
                    "source {}: capture row seq {seq} has no time the drain can read (changed_at \
                     is NULL, not a date-time, or the dialect gives none): its message id is \
                     `{p}`, without `@<ms>`, and so are those of other such rows (logged once). \
                     If the capture table's seq starts again under the same identity while the \
                     stream remembers an old change of the same seq, the new change is dropped \
                     as a repeat, and an ack of the old row can delete the new one \
                     (docs/operations.md: \"The capture table was emptied or made anew\")",
                    self.name
                );
            }
            None => {}
        }
        p
    }
}

pub(super) fn row_op(op: &str) -> Result<Op, String> {
    match op {
        "c" => Ok(Op::Create),
        "u" => Ok(Op::Update),
        "d" => Ok(Op::Delete),
        other => Err(format!("op `{other}` is not c, u or d")),
    }
}

/// Parses a JSON image of a row of `def`, giving binary and date-time columns their types.
pub(crate) fn parse_image(def: &TableDef, what: &str, json: &str) -> Result<Record, String> {
    let r =
        parse_object(json.as_bytes()).map_err(|e| format!("{what} is not a JSON object: {e}"))?;
    type_image(def, what, r)
}

/// Gives the binary and date-time columns of `def` in `r` their types.
pub(super) fn type_image(def: &TableDef, what: &str, mut r: Record) -> Result<Record, String> {
    for col in &def.binary {
        if let Some(Value::Text(t)) = r.get(col) {
            let hex = t.strip_prefix("\\x").unwrap_or(t);
            let bytes = decode_hex(hex)
                .ok_or_else(|| format!("{what}: binary column `{col}` is not hex text"))?;
            r.push(col.clone(), Value::Bytes(bytes));
        }
    }
    for col in &def.timestamps {
        // In place: once per date-time column of every image.
        if let Some(v) = r.get_mut(col) {
            if let Value::Text(t) = v {
                *v = Value::Timestamp(timestamps::iso_owned(std::mem::take(t)));
            }
        }
    }
    Ok(r)
}

/// Appends `n` in decimal, as `{n}` writes it.
pub(super) fn push_int(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
