//! Validation of trigger sources.

use super::*;

pub(super) fn trigger_source(
    cx: &Ctx,
    s: RawSource,
    name: String,
) -> Result<SourceConfig, ConfigError> {
    let foreign = [
        ("table", s.table.as_ref().map(|v| v.span())),
        ("key", s.key.as_ref().map(|v| v.span())),
    ];
    refuse(cx, &name, "trigger", &foreign)?;
    refuse(cx, &name, "trigger", &tail_keys(&s))?;
    refuse(cx, &name, "trigger", &poll_keys(&s))?;
    let secret = |v: &Spanned<RawSecret>| cx.secret(v);
    // A PostgreSQL string is parsed once the rest is known good (below).
    enum Db {
        Postgres(Secret, Range<usize>),
        Odbc(Secret),
    }
    let db = match (&s.postgres, &s.odbc) {
        (Some(p), None) => Db::Postgres(secret(p)?, p.span()),
        (None, Some(o)) => Db::Odbc(secret(o)?),
        (Some(p), Some(_)) => {
            return Err(cx.err(
                p.span(),
                format!("source `{name}`: give either `postgres` or `odbc`, not both"),
            ))
        }
        (None, None) => {
            return Err(cx.err(
                s.name.span(),
                format!("source `{name}`: a trigger source needs `postgres = \"host=… dbname=…\"` or `odbc = \"DSN=…\"`"),
            ))
        }
    };
    let tables = match s.tables {
        Some(t) if !t.get_ref().is_empty() => t.into_inner(),
        Some(t) => return Err(cx.err(t.span(), format!("source `{name}`: `tables` is empty"))),
        None => {
            return Err(cx.err(
                s.name.span(),
                format!("source `{name}`: a trigger source needs `tables = [...]`"),
            ))
        }
    };
    let capture = match s.capture.as_ref().map(|c| (c.get_ref().as_str(), c.span())) {
        None | Some(("keys", _)) => Capture::Keys,
        Some(("rows", _)) => Capture::Rows,
        Some((other, span)) => {
            return Err(cx.err(
                span,
                format!("source `{name}`: capture `{other}`: use \"keys\" or \"rows\""),
            ))
        }
    };
    let dialect = dialect_of(cx, &name, &s.dialect)?;
    let snapshot_initial = match s
        .snapshot
        .as_ref()
        .map(|c| (c.get_ref().as_str(), c.span()))
    {
        None | Some(("never", _)) => false,
        Some(("initial", _)) => true,
        Some((other, span)) => {
            return Err(cx.err(
                span,
                format!("source `{name}`: snapshot `{other}`: use \"initial\" or \"never\""),
            ))
        }
    };
    let schema_check = match s.schema_check {
        None => Duration::from_secs(60),
        Some(d) if d.get_ref().0 >= Duration::from_secs(1) => d.into_inner().0,
        Some(d) => {
            return Err(cx.err(
                d.span(),
                format!("source `{name}`: `schema_check` must be at least 1s"),
            ))
        }
    };
    if matches!(db, Db::Postgres(..)) && dialect.is_some_and(|d| d != Dialect::Postgres) {
        let d = s.dialect.as_ref().expect("checked");
        return Err(cx.err(
            d.span(),
            format!("source `{name}`: a `postgres` source speaks the postgres dialect"),
        ));
    }
    let db = match db {
        Db::Odbc(conn) => TriggerDb::Odbc(conn),
        Db::Postgres(conn, span) => TriggerDb::Postgres(Box::new(
            crate::db::postgres::PgConn::parse(conn.expose())
                .map_err(|e| cx.err(span, format!("source `{name}`: postgres: {e}")))?,
        )),
    };
    Ok(SourceConfig {
        name,
        map: Mapping::default(),
        debounce: None,
        kind: SourceKind::Trigger(TriggerConfig {
            db,
            tables,
            capture,
            interval: s.interval.map_or(Duration::from_millis(500), |d| d.0),
            dialect,
            snapshot_initial,
            schema_check,
        }),
    })
}
