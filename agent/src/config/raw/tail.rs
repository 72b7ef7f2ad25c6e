//! Validation of tail sources.

use super::*;

/// The keys only tail sources have.
pub(super) fn tail_keys(s: &RawSource) -> [(&'static str, Option<Range<usize>>); 10] {
    [
        ("paths", s.paths.as_ref().map(|v| v.span())),
        ("format", s.format.as_ref().map(|v| v.span())),
        ("table_field", s.table_field.as_ref().map(|v| v.span())),
        ("op_field", s.op_field.as_ref().map(|v| v.span())),
        ("op_map", s.op_map.as_ref().map(|v| v.span())),
        ("start_at", s.start_at.as_ref().map(|v| v.span())),
        (
            "max_record_bytes",
            s.max_record_bytes.as_ref().map(|v| v.span()),
        ),
        ("csv", s.csv.as_ref().map(|v| v.span())),
        ("max_tables", s.max_tables.as_ref().map(|v| v.span())),
        ("close_idle", s.close_idle.as_ref().map(|v| v.span())),
    ]
}
pub(super) fn tail_source(
    cx: &Ctx,
    s: RawSource,
    name: String,
) -> Result<SourceConfig, ConfigError> {
    let trigger_keys = [
        ("odbc", s.odbc.as_ref().map(|v| v.span())),
        ("postgres", s.postgres.as_ref().map(|v| v.span())),
        ("tables", s.tables.as_ref().map(|v| v.span())),
        ("capture", s.capture.as_ref().map(|v| v.span())),
        ("dialect", s.dialect.as_ref().map(|v| v.span())),
        ("snapshot", s.snapshot.as_ref().map(|v| v.span())),
        ("schema_check", s.schema_check.as_ref().map(|v| v.span())),
    ];
    for (key, span) in trigger_keys {
        if let Some(span) = span {
            return Err(cx.err(
                span,
                format!("source `{name}`: `{key}` is not a key of tail sources"),
            ));
        }
    }
    if s.interval.is_some() {
        return Err(cx.err(
            s.name.span(),
            format!("source `{name}`: `interval` is not a key of tail sources"),
        ));
    }
    refuse(cx, &name, "tail", &poll_keys(&s))?;

    let paths = match s.paths {
        None => {
            return Err(cx.err(
                s.name.span(),
                format!("source `{name}`: a tail source needs `paths`"),
            ))
        }
        Some(p) if p.get_ref().is_empty() => {
            return Err(cx.err(p.span(), format!("source `{name}`: `paths` is empty")))
        }
        Some(p) => {
            for pat in p.get_ref() {
                if let Err(e) = glob::Pattern::new(pat) {
                    return Err(cx.err(
                        p.span(),
                        format!("source `{name}`: `{pat}` is not a valid glob: {e}"),
                    ));
                }
                if !pat.starts_with('/') {
                    return Err(cx.err(
                        p.span(),
                        format!("source `{name}`: `{pat}` must be an absolute path"),
                    ));
                }
            }
            p.into_inner()
        }
    };
    let csv = s.csv.map(|c| (c.span(), c.into_inner()));
    let format = match s.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
        None | Some(("jsonl", _)) => Format::Jsonl,
        Some(("lines", _)) => Format::Lines,
        Some(("csv", _)) => {
            let mut o = CsvOptions::default();
            if let Some((_, c)) = &csv {
                if let Some(d) = &c.delimiter {
                    o.delimiter = single_byte(cx, d, "csv.delimiter")?;
                }
                if let Some(q) = &c.quote {
                    o.quote = single_byte(cx, q, "csv.quote")?;
                }
                o.header = c.header.unwrap_or(true);
            }
            Format::Csv(o)
        }
        Some(("fixed", span)) => {
            return Err(cx.err(
                span,
                format!("source `{name}`: format = \"fixed\" is not supported yet by this build"),
            ))
        }
        Some((other, span)) => {
            return Err(cx.err(
                span,
                format!("source `{name}`: unknown format `{other}` (jsonl, csv or lines)"),
            ))
        }
    };
    if let (Some((span, _)), false) = (&csv, matches!(format, Format::Csv(_))) {
        return Err(cx.err(
            span.clone(),
            format!("source `{name}`: `csv` options need format = \"csv\""),
        ));
    }
    let table = match (s.table, s.table_field) {
        (Some(t), None) if valid_name(t.get_ref()) => TableFrom::Fixed(t.into_inner()),
        (Some(t), None) => {
            return Err(cx.err(
                t.span(),
                format!("source `{name}`: table must be 1-64 letters, digits, `_` or `-`"),
            ))
        }
        (None, Some(f)) => TableFrom::Field(f.into_inner()),
        (Some(_), Some(f)) => {
            return Err(cx.err(
                f.span(),
                format!("source `{name}`: give `table` or `table_field`, not both"),
            ))
        }
        (None, None) => {
            return Err(cx.err(
                s.name.span(),
                format!("source `{name}`: a tail source needs `table` or `table_field`"),
            ))
        }
    };
    let mut op_map = HashMap::new();
    if let Some(m) = &s.op_map {
        for (from, to) in m.get_ref() {
            let op = Op::from_code(to).ok_or_else(|| {
                cx.err(m.span(), format!("source `{name}`: op_map `{from}` = `{to}`: an op is \"c\", \"u\", \"d\" or \"r\""))
            })?;
            op_map.insert(from.clone(), op);
        }
        if s.op_field.is_none() {
            return Err(cx.err(
                m.span(),
                format!("source `{name}`: `op_map` needs `op_field`"),
            ));
        }
    }
    let start_at = match s.start_at {
        None => StartAt::Beginning,
        Some(v) => match v.get_ref().as_str() {
            "beginning" => StartAt::Beginning,
            "end" => StartAt::End,
            other => {
                return Err(cx.err(
                    v.span(),
                    format!("source `{name}`: start_at `{other}`: use \"beginning\" or \"end\""),
                ))
            }
        },
    };
    let max_record_bytes = match s.max_record_bytes {
        None => DEFAULT_MAX_RECORD_BYTES,
        Some(m) if m.get_ref().0 < 64 || m.get_ref().0 > (1 << 30) => {
            return Err(cx.err(
                m.span(),
                format!("source `{name}`: max_record_bytes must be between 64B and 1GiB"),
            ))
        }
        Some(m) => m.get_ref().0 as usize,
    };
    let max_tables = match s.max_tables {
        None => DEFAULT_MAX_TABLES,
        Some(m) if *m.get_ref() < 1 || *m.get_ref() > 1_000_000 => {
            return Err(cx.err(
                m.span(),
                format!("source `{name}`: max_tables must be between 1 and 1000000"),
            ))
        }
        Some(m) => *m.get_ref() as usize,
    };
    let close_idle = match s.close_idle {
        None => Duration::from_secs(300),
        Some(d) if d.get_ref().0 >= Duration::from_secs(1) => d.into_inner().0,
        Some(d) => {
            return Err(cx.err(
                d.span(),
                format!("source `{name}`: `close_idle` must be at least 1s"),
            ))
        }
    };
    Ok(SourceConfig {
        name,
        map: Mapping::default(),
        debounce: None,
        kind: SourceKind::Tail(TailConfig {
            paths,
            format,
            table,
            key: s.key.map(|k| k.into_inner()).unwrap_or_default(),
            op_field: s.op_field.map(|f| f.into_inner()),
            op_map,
            start_at,
            max_record_bytes,
            stat_interval: s.stat_interval.map_or(Duration::from_secs(1), |d| d.0),
            rotate_wait: s.rotate_wait.map_or(Duration::from_secs(10), |d| d.0),
            close_idle,
            max_tables,
        }),
    })
}
