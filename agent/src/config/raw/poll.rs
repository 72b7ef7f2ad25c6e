//! Validation of poll sources.

use super::*;

/// The keys only poll sources have.
pub(super) fn poll_keys(s: &RawSource) -> [(&'static str, Option<Range<usize>>); 7] {
    [
        ("query", s.query.as_ref().map(|v| v.span())),
        ("columns", s.columns.as_ref().map(|v| v.span())),
        ("cursor", s.cursor.as_ref().map(|v| v.span())),
        ("lookback", s.lookback.as_ref().map(|v| v.span())),
        (
            "full_scan_every",
            s.full_scan_every.as_ref().map(|v| v.span()),
        ),
        ("initial", s.initial.as_ref().map(|v| v.span())),
        (
            "max_value_bytes",
            s.max_value_bytes.as_ref().map(|v| v.span()),
        ),
    ]
}
pub(super) fn poll_source(
    cx: &Ctx,
    s: RawSource,
    name: String,
) -> Result<SourceConfig, ConfigError> {
    let foreign = [
        ("tables", s.tables.as_ref().map(|v| v.span())),
        ("capture", s.capture.as_ref().map(|v| v.span())),
        ("snapshot", s.snapshot.as_ref().map(|v| v.span())),
        ("schema_check", s.schema_check.as_ref().map(|v| v.span())),
    ];
    refuse(cx, &name, "poll", &tail_keys(&s))?;
    refuse(cx, &name, "poll", &foreign)?;
    let secret = |v: &Spanned<RawSecret>| cx.secret(v);
    let odbc = match (&s.odbc, &s.postgres) {
        (Some(o), _) => secret(o)?,
        (None, Some(p)) => {
            return Err(cx.err(
                p.span(),
                format!("source `{name}`: poll sources read through ODBC: give `odbc = \"Driver=PostgreSQL Unicode;Server=…;Database=…\"` instead of `postgres`"),
            ))
        }
        (None, None) => {
            return Err(cx.err(
                s.name.span(),
                format!("source `{name}`: a poll source needs `odbc = \"DSN=…\"`"),
            ))
        }
    };
    let table = match s.table {
        Some(t) if !t.get_ref().trim().is_empty() => t.into_inner(),
        Some(t) => return Err(cx.err(t.span(), format!("source `{name}`: `table` is empty"))),
        None => {
            return Err(cx.err(
                s.name.span(),
                format!("source `{name}`: a poll source needs `table` (with `query`, the name its events carry)"),
            ))
        }
    };
    let names = |v: Option<Spanned<Vec<String>>>, what: &str| -> Result<Vec<String>, ConfigError> {
        match v {
            Some(l) if l.get_ref().is_empty() => {
                Err(cx.err(l.span(), format!("source `{name}`: `{what}` is empty")))
            }
            Some(l) => Ok(l.into_inner()),
            None => Ok(Vec::new()),
        }
    };
    let query = match s.query {
        Some(q)
            if !q
                .get_ref()
                .trim()
                .to_ascii_lowercase()
                .starts_with("select") =>
        {
            return Err(cx.err(
                q.span(),
                format!("source `{name}`: `query` must be a SELECT"),
            ))
        }
        Some(q) => Some(q.into_inner()),
        None => None,
    };
    let key_span = s.name.span();
    let key = names(s.key, "key")?;
    if query.is_some() && key.is_empty() {
        return Err(cx.err(
            key_span,
            format!("source `{name}`: a poll source with `query` needs `key`: the columns of the query that identify a row"),
        ));
    }
    let columns = names(s.columns, "columns")?;
    let dialect = dialect_of(cx, &name, &s.dialect)?;
    let lookback = match &s.lookback {
        None => Lookback::Time(Duration::from_secs(60)),
        Some(l) => match l.get_ref() {
            toml::Value::String(d) => {
                Lookback::Time(parse_duration(d).map_err(|e| cx.err(l.span(), e))?)
            }
            toml::Value::Integer(n) if *n >= 0 => Lookback::Count(*n as u64),
            _ => {
                return Err(cx.err(
                    l.span(),
                    format!("source `{name}`: `lookback` is a duration like \"1m\" (date-time cursors) or a whole number (numeric cursors)"),
                ))
            }
        },
    };
    if s.cursor.is_none() {
        let extra = [
            ("lookback", s.lookback.as_ref().map(|v| v.span())),
            (
                "full_scan_every",
                s.full_scan_every.as_ref().map(|v| v.span()),
            ),
        ];
        for (key, span) in extra {
            if let Some(span) = span {
                return Err(cx.err(
                    span,
                    format!("source `{name}`: `{key}` needs `cursor` (incremental scans)"),
                ));
            }
        }
    }
    let initial_skip = match s.initial.as_ref().map(|c| (c.get_ref().as_str(), c.span())) {
        None | Some(("snapshot", _)) => false,
        Some(("skip", _)) => true,
        Some((other, span)) => {
            return Err(cx.err(
                span,
                format!("source `{name}`: initial `{other}`: use \"snapshot\" or \"skip\""),
            ))
        }
    };
    let max_value_bytes = match s.max_value_bytes {
        Some(m) if !(1..=(64 << 20)).contains(&m.get_ref().0) => {
            return Err(cx.err(
                m.span(),
                format!("source `{name}`: `max_value_bytes` must be between 1 byte and 64MiB"),
            ))
        }
        Some(m) => m.get_ref().0 as usize,
        None => 64 << 10,
    };
    Ok(SourceConfig {
        name,
        map: Mapping::default(),
        debounce: None,
        kind: SourceKind::Poll(PollConfig {
            odbc,
            table,
            query,
            key,
            columns,
            interval: s.interval.map_or(Duration::from_secs(30), |d| d.0),
            cursor: s.cursor.map(Spanned::into_inner),
            lookback,
            full_scan_every: s
                .full_scan_every
                .map_or(Duration::from_secs(3600), |d| d.get_ref().0),
            initial_skip,
            dialect,
            max_value_bytes,
        }),
    })
}
