//! `capture = "keys"`: the rows of one read grouped by changed key, each key looked up
//! by the columns its capture rows carry, one event per key with the row as it is now.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use lockstep_formats::json::{encode_record, encode_value, parse_object};
use lockstep_formats::{Op, Record, Value};
use xxhash_rust::xxh3::xxh3_64;

use super::events::{parse_image, row_op, type_image};
use super::{not_connected, ChangeRow, DbError, Drain, RowId, TableDef};
use crate::source::trigger::ddl;

/// A changed key of one read (`capture = "keys"`).
struct Group {
    table: usize,
    /// The key as the JSON object it is looked up by.
    pk: String,
    /// The columns it is looked up by (see [`lookup_key`]).
    lookup: Vec<String>,
    key: Record,
    canon: String,
    first_op: String,
    last_seq: i64,
    /// When the last capture row was written (ms), where the database says.
    last_ms: Option<i64>,
    changed_ms: Option<i64>,
    rows: Vec<RowId>,
}

impl Drain {
    /// `capture = "keys"`: one event per changed key, with the row as it is now.
    ///
    /// Each key is looked up by the columns its capture rows carry ([`lookup_key`]):
    /// after the table's primary key changed, the installed triggers still record the
    /// old one. A row is only ever matched to its key with the definition the key was
    /// grouped with: when the definition changed meanwhile, or the key cannot be looked
    /// up, the read fails and its rows are kept and read again — never sent as deletes.
    pub(super) fn key_events(&mut self, rows: &[ChangeRow]) -> Result<(), DbError> {
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(usize, Vec<String>, String), usize> = HashMap::new();
        // Whether the tables were compared with their triggers during this read.
        let mut refreshed = false;
        let aside = 'group: loop {
            groups.clear();
            index.clear();
            let mut aside: Vec<(&ChangeRow, String)> = Vec::new();
            for r in rows {
                if r.origin.is_some() {
                    continue;
                }
                let found = self.table_index(&r.table).and_then(|t| {
                    row_op(&r.op)?;
                    let pk = parse_image(&self.tables[t].def, "pk", &r.pk)?;
                    Ok((t, pk))
                });
                let (t, pk) = match found {
                    Ok(v) => v,
                    Err(reason) => {
                        aside.push((r, reason));
                        continue;
                    }
                };
                let def = &self.tables[t].def;
                let keyed = lookup_key(def, &r.pk, pk).and_then(|(by, key, json)| {
                    let canon = key_text(&by, &key)?;
                    Ok((by.key, key, canon, json))
                });
                let (lookup, key, canon, json) = match keyed {
                    Ok(v) => v,
                    Err(reason) if self.drift.contains_key(&def.name) => {
                        // The triggers record another key than the table has: not the
                        // row's fault. Kept (not quarantined, not deleted) until it can
                        // be read.
                        return Err(DbError::query(format!(
                            "source {}: capture row seq {} of `{}`: {reason}; the table's key \
                             differs from what its capture triggers record (see its drift): \
                             its rows are kept in the capture table and read again",
                            self.name, r.seq, def.name
                        )));
                    }
                    Err(_) if !refreshed => {
                        // Maybe a drift not yet seen: compared first, then grouped again.
                        refreshed = true;
                        self.check_schema()?;
                        continue 'group;
                    }
                    Err(reason) => {
                        aside.push((r, reason));
                        continue;
                    }
                };
                match index.get(&(t, lookup.clone(), canon.clone())) {
                    Some(&g) => {
                        let g = &mut groups[g];
                        g.last_seq = r.seq;
                        g.last_ms = r.changed_ms;
                        g.changed_ms = r.changed_ms.or(g.changed_ms);
                        g.rows.push(r.id());
                    }
                    None => {
                        index.insert((t, lookup.clone(), canon.clone()), groups.len());
                        groups.push(Group {
                            table: t,
                            pk: json.unwrap_or_else(|| r.pk.clone()),
                            lookup,
                            key,
                            canon,
                            first_op: r.op.clone(),
                            last_seq: r.seq,
                            last_ms: r.changed_ms,
                            changed_ms: r.changed_ms,
                            rows: vec![r.id()],
                        });
                    }
                }
            }
            break aside;
        };
        // The definitions the keys were grouped with (a check during the look-ups
        // below may take newer ones).
        let grouped_defs: Vec<TableDef> = self.tables.iter().map(|o| o.def.clone()).collect();
        for r in rows.iter().filter(|r| r.origin.is_some()) {
            self.to_delete.push(r.id());
        }
        for (r, reason) in aside {
            self.set_aside(r, &reason);
        }
        // One read of each table (per key it is looked up by) for the keys of this batch.
        let mut lookups: Vec<(usize, Vec<String>)> = Vec::new();
        for g in &groups {
            if !lookups.iter().any(|(t, l)| *t == g.table && *l == g.lookup) {
                lookups.push((g.table, g.lookup.clone()));
            }
        }
        type Found = Result<Record, (String, String)>;
        let mut current: HashMap<(usize, Vec<String>, String), Found> = HashMap::new();
        for (t, lookup) in lookups {
            let pks: Vec<&str> = groups
                .iter()
                .filter(|g| g.table == t && g.lookup == lookup)
                .map(|g| g.pk.as_str())
                .collect();
            let Some(db) = self.db.as_mut() else {
                return Err(not_connected(&self.name));
            };
            let grouped = TableDef {
                key: lookup.clone(),
                ..grouped_defs[t].clone()
            };
            let found = db.current(&grouped, &pks)?;
            // The connection found the table changed and read it with its new columns.
            let def = &self.tables[t].def;
            if let Some(now) = db.tables().iter().find(|d| d.name == def.name && *d != def) {
                self.tables[t].def = now.clone();
                self.tables[t].checked_columns.clear();
            }
            // PostgreSQL's `row_to_json` follows the table by itself.
            let columns = found
                .first()
                .and_then(|j| parse_object(j.as_bytes()).ok())
                .map(|r| r.iter().map(|(c, _)| c.to_owned()).collect::<Vec<_>>());
            if let Some(columns) = columns {
                self.table_changed(t, &columns);
            }
            // Matched with the definition the keys were grouped with: another type of a
            // key column would give the same key another text, and every row of the
            // batch would look gone.
            let now = &self.tables[t].def;
            if key_shape(&grouped, &lookup) != key_shape(now, &lookup) {
                return Err(DbError::query(format!(
                    "source {}: the key columns of `{}` changed while its changes were read; \
                     they are read again",
                    self.name, now.name
                )));
            }
            let def = TableDef {
                key: lookup.clone(),
                ..now.clone()
            };
            let now_key = now.key.clone();
            for json in found {
                let (k, row) = match parse_image(&def, "row", &json).and_then(|row| {
                    let k = key_text(&def, &row)?;
                    Ok((k, row))
                }) {
                    Ok((k, row)) => (k, Ok(row)),
                    Err(reason) => {
                        // A row that cannot become an event: found by its key as the
                        // database gave it, and set aside with its capture rows.
                        let raw = parse_object(json.as_bytes()).ok();
                        let Some(k) = raw.and_then(|r| key_text(&def, &r).ok()) else {
                            return Err(DbError::query(format!(
                                "reading the current rows of `{}`: {reason}",
                                def.name
                            )));
                        };
                        (k, Err((reason, json.clone())))
                    }
                };
                let mut taken = match current.entry((t, lookup.clone(), k)) {
                    Entry::Vacant(v) => {
                        v.insert(row);
                        continue;
                    }
                    Entry::Occupied(o) => o,
                };
                // Looked up by a key that is no longer the table's: several rows have
                // it, and which one changed is not known.
                let why = format!(
                    "several rows of `{}` have the key ({}) its capture rows carry, which \
                     is not its primary key ({}): which one changed is not known",
                    def.name,
                    lookup.join(", "),
                    now_key.join(", ")
                );
                if !refreshed && !self.drift.contains_key(&def.name) {
                    // Maybe a drift not yet seen.
                    refreshed = true;
                    self.check_schema()?;
                }
                if self.drift.contains_key(&def.name) {
                    // Kept until the triggers are installed again.
                    return Err(DbError::query(format!(
                        "source {}: {why}; its rows are kept in the capture table: run \
                         `lockstep triggers install --source {}`",
                        self.name, self.name
                    )));
                }
                // The triggers match the table again: these rows were written before,
                // and can only be set aside (quarantined, never a delete).
                *taken.get_mut() = Err((why, json));
            }
        }
        // Every row found was looked up by the key of one of these groups. One that
        // matches none (a key column's type changed, so the same key reads as another
        // text) would leave its group looking gone: never a delete on that ground. The
        // rows are read again, and grouped then with the definition now known.
        let looked_up: HashSet<(usize, &[String], &str)> = groups
            .iter()
            .map(|g| (g.table, g.lookup.as_slice(), g.canon.as_str()))
            .collect();
        if let Some((t, _, k)) = current
            .keys()
            .find(|(t, l, k)| !looked_up.contains(&(*t, l.as_slice(), k.as_str())))
        {
            let e = DbError::query(format!(
                "source {}: a row of `{}` found by key ({k}) matches none of the keys looked \
                 up (did a key column change its type?); its changes are read again",
                self.name, self.tables[*t].def.name
            ));
            // The definitions read again, so that the next read groups by the new types.
            self.check_schema()?;
            return Err(e);
        }
        groups.sort_by_key(|g| g.last_seq);
        for g in groups {
            let (op, after) = match current.remove(&(g.table, g.lookup, g.canon)) {
                Some(Err((reason, json))) => {
                    let seqs: Vec<i64> = g.rows.iter().map(|r| r.seq).collect();
                    let reason = format!(
                        "capture rows seq {seqs:?} of `{}`, key {}: the current row: {reason}",
                        self.tables[g.table].def.name, g.pk
                    );
                    let file = Path::new(ddl::CAPTURE_TABLE);
                    if self.set_aside_row(file, g.last_seq.max(0) as u64, &reason, &json) {
                        self.to_delete.extend(g.rows);
                    }
                    continue;
                }
                Some(Ok(row)) if g.first_op == "c" => (Op::Create, Some(row)),
                Some(Ok(row)) => (Op::Update, Some(row)),
                None => (Op::Delete, None),
            };
            let position = self.key_position(g.last_seq, g.last_ms, op, after.as_ref());
            self.push(
                g.table,
                op,
                g.key,
                None,
                after,
                position,
                g.changed_ms,
                g.rows,
            );
        }
        Ok(())
    }

    /// The position of a changed key's event (`capture = "keys"`): its last capture
    /// row's (see [`Drain::position`]), and a digest of what it carries
    /// (`pg16390.12131@1764412345678~5be0c1a2d3e4f607`).
    ///
    /// The row is read when the event is made, so the same capture rows read again
    /// (after a crash or a stop before their delete) can carry a newer row than the
    /// event already stored. With the bare `seq` its id would be the same and JetStream
    /// would drop it as a repeat: the stream would keep the older row. With the digest
    /// only a true repeat (the same op and row) has the same id.
    fn key_position(
        &mut self,
        seq: i64,
        changed_ms: Option<i64>,
        op: Op,
        after: Option<&Record>,
    ) -> String {
        let buf = &mut self.digest_buf;
        buf.clear();
        buf.extend_from_slice(op.code().as_bytes());
        if let Some(row) = after {
            encode_record(row, buf);
        }
        let digest = xxh3_64(buf);
        let mut p = self.position(seq, changed_ms);
        let _ = write!(p, "~{digest:016x}");
        p
    }
}

/// The key columns of `row` as one comparable text.
///
/// A number, a decimal, a text and a timestamp are taken by their text, whatever their
/// JSON type: one key column has one type, but when its type changes (`int` to `text`)
/// the capture rows written before carry `1` and the row found has `"1"`, which must
/// be the same key (else its change would look like a delete).
pub(super) fn key_text(def: &TableDef, row: &Record) -> Result<String, String> {
    let mut buf = Vec::with_capacity(32);
    for k in &def.key {
        let v = row
            .get(k)
            .ok_or_else(|| format!("key column `{k}` is missing"))?;
        let start = buf.len();
        match v {
            Value::Int(i) => buf.extend_from_slice(i.to_string().as_bytes()),
            Value::Decimal(t) | Value::Text(t) | Value::Timestamp(t) => {
                buf.extend_from_slice(t.as_bytes())
            }
            other => encode_value(other, &mut buf),
        }
        // The length after each value: no two keys of several columns run together.
        let len = buf.len() - start;
        buf.push(0);
        buf.extend_from_slice(len.to_string().as_bytes());
        buf.push(0);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The columns a capture row's key `pk` is looked up by in table `def`, and the key:
///
/// - the table's primary key, when `pk` has its columns;
/// - else the columns `pk` has, when the table has them all (its primary key changed
///   and the installed triggers still record the old one);
/// - else, when `pk` has as many columns as the primary key and each one it has not
///   is no longer a column of the table, the primary key, taken in order (a key column
///   renamed: SQLite's triggers then record its value under the old name).
///
/// A key without a value (PostgreSQL's trigger records a renamed key column as null)
/// cannot be looked up: an error, never a lookup of NULL (which finds nothing).
///
/// Returns the columns (as `def` keyed by them), the key, and, when the columns were
/// renamed, the key as JSON under the new names (the values as the trigger wrote them).
#[allow(clippy::type_complexity)]
pub(super) fn lookup_key(
    def: &TableDef,
    json: &str,
    pk: Record,
) -> Result<(TableDef, Record, Option<String>), String> {
    let cols: Vec<String> = pk.iter().map(|(c, _)| c.to_owned()).collect();
    let lookup = if def.key.iter().all(|k| cols.contains(k)) {
        def.key.clone()
    } else if !cols.is_empty() && cols.iter().all(|c| def.columns.contains(c)) {
        cols.clone()
    } else if cols.len() == def.key.len()
        && cols
            .iter()
            .zip(&def.key)
            .all(|(c, k)| c == k || !def.columns.contains(c))
    {
        // The values as written (not typed under the old names), under the new names.
        let raw =
            parse_object(json.as_bytes()).map_err(|e| format!("pk is not a JSON object: {e}"))?;
        let mut renamed = Record::with_capacity(cols.len());
        for ((_, v), k) in raw.into_fields().zip(&def.key) {
            renamed.push(k.clone(), v);
        }
        let json = encode_key(&renamed);
        let typed = type_image(def, "pk", renamed)?;
        let (by, key) = with_values(def, def.key.clone(), typed)?;
        return Ok((by, key, Some(json)));
    } else {
        return Err(format!(
            "the key ({}) names no key the table has (its primary key is ({}))",
            cols.join(", "),
            def.key.join(", ")
        ));
    };
    let (by, key) = with_values(def, lookup, pk)?;
    Ok((by, key, None))
}

fn with_values(
    def: &TableDef,
    lookup: Vec<String>,
    key: Record,
) -> Result<(TableDef, Record), String> {
    if let Some(k) = lookup
        .iter()
        .find(|k| key.get(k).is_none_or(|v| *v == Value::Null))
    {
        return Err(format!("the key has no value for `{k}`"));
    }
    let mut only = Record::with_capacity(lookup.len());
    for k in &lookup {
        if let Some(v) = key.get(k) {
            only.push(k.clone(), v.clone());
        }
    }
    Ok((
        TableDef {
            key: lookup,
            ..def.clone()
        },
        only,
    ))
}

/// What decides the text of a key's values in `def`: whether each column of `key` is
/// binary, a date-time, in UTC.
fn key_shape(def: &TableDef, key: &[String]) -> Vec<(bool, bool, bool)> {
    key.iter()
        .map(|k| {
            (
                def.binary.contains(k),
                def.timestamps.contains(k),
                def.utc.contains(k),
            )
        })
        .collect()
}

/// A key as the JSON object the connection looks it up by.
fn encode_key(key: &Record) -> String {
    let mut buf = Vec::with_capacity(32);
    encode_record(key, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The key columns of `row`, and their values as text for a position (`445`,
/// `"R1",7`).
pub(super) fn key_of(def: &TableDef, row: &Record) -> Result<(Record, String), String> {
    let mut key = Record::with_capacity(def.key.len());
    let mut text = Vec::with_capacity(16);
    for (i, k) in def.key.iter().enumerate() {
        let v = row
            .get(k)
            .ok_or_else(|| format!("key column `{k}` is missing"))?;
        if i > 0 {
            text.push(b',');
        }
        encode_value(v, &mut text);
        key.push(k.clone(), v.clone());
    }
    Ok((key, String::from_utf8_lossy(&text).into_owned()))
}
