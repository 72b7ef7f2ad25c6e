//! Validation of what every source has: its kind, `map`, `debounce`, `dialect`, and the
//! refusal of keys that belong to another kind.

use super::*;

pub(super) fn source(cx: &Ctx, mut s: RawSource) -> Result<SourceConfig, ConfigError> {
    let name = s.name.get_ref().clone();
    let keys = s
        .key
        .as_ref()
        .map(|k| k.get_ref().clone())
        .unwrap_or_default();
    let map = match s.map.take() {
        Some(m) => mapping(cx, &name, m, &keys)?,
        None => Mapping::default(),
    };
    let debounce = match s.debounce.take() {
        Some(d) if s.kind.get_ref() == "poll" => {
            return Err(cx.err(
                d.span(),
                format!("source `{name}`: a poll source already sends one event per changed row per scan; to merge more changes into one, make `interval` longer instead of `debounce`"),
            ))
        }
        Some(d) => Some(debounce(cx, &name, d)?),
        None => None,
    };
    let kind = s.kind.get_ref().as_str();
    let mut sc = match kind {
        "tail" => tail_source(cx, s, name)?,
        "trigger" => trigger_source(cx, s, name)?,
        "poll" => poll_source(cx, s, name)?,
        other => {
            return Err(cx.err(
                s.kind.span(),
                format!("source `{name}`: unknown kind `{other}` (tail, trigger or poll)"),
            ))
        }
    };
    sc.map = map;
    sc.debounce = debounce;
    Ok(sc)
}
pub(super) fn debounce(
    cx: &Ctx,
    name: &str,
    d: Spanned<RawDebounce>,
) -> Result<DebounceConfig, ConfigError> {
    let d = d.into_inner();
    let window = d.window.get_ref().0;
    if window.is_zero() {
        return Err(cx.err(
            d.window.span(),
            format!("source `{name}`: debounce window must be longer than 0"),
        ));
    }
    let max_delay = match d.max_delay {
        Some(m) if m.get_ref().0 < window => {
            return Err(cx.err(
                m.span(),
                format!("source `{name}`: debounce max_delay must be at least the window"),
            ))
        }
        Some(m) => m.get_ref().0,
        None => window * 10,
    };
    let max_keys = match d.max_keys {
        Some(k) if !(1..=10_000_000).contains(k.get_ref()) => {
            return Err(cx.err(
                k.span(),
                format!("source `{name}`: debounce max_keys must be between 1 and 10000000"),
            ))
        }
        Some(k) => *k.get_ref() as usize,
        None => 100_000,
    };
    Ok(DebounceConfig {
        window,
        max_delay,
        max_keys,
    })
}
/// A constant of `values` or `add` as a value.
pub(super) fn constant(v: &toml::Value) -> Option<Value> {
    Some(match v {
        toml::Value::String(s) => Value::Text(s.clone()),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(f) => Value::Float(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::Timestamp(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => return None,
    })
}
/// `[source.map]`. `keys` are the source's configured key fields (tail, poll).
pub(super) fn mapping(
    cx: &Ctx,
    name: &str,
    m: Spanned<RawMap>,
    keys: &[String],
) -> Result<Mapping, ConfigError> {
    let m = m.into_inner();
    let mut out = Mapping::default();
    let err =
        |span: Range<usize>, what: String| cx.err(span, format!("source `{name}`: map: {what}"));
    if let Some(d) = &m.drop {
        for f in d.get_ref() {
            if f.is_empty() {
                return Err(err(d.span(), "`drop` lists an empty name".into()));
            }
            if keys.contains(f) {
                return Err(err(
                    d.span(),
                    format!(
                        "`{f}` is a key field: consumers could not tell the rows apart without it"
                    ),
                ));
            }
            out.drop.insert(f.clone());
        }
    }
    if let Some(t) = &m.tables {
        for (from, to) in t.get_ref() {
            if to.trim().is_empty() {
                return Err(err(
                    t.span(),
                    format!("`tables`: `{from}` is renamed to an empty name"),
                ));
            }
            out.tables.insert(from.clone(), to.clone());
        }
    }
    if let Some(r) = &m.rename {
        let mut targets = HashSet::new();
        for (from, to) in r.get_ref() {
            if to.is_empty() {
                return Err(err(
                    r.span(),
                    format!("`rename`: `{from}` is renamed to an empty name"),
                ));
            }
            if out.drop.contains(from) {
                return Err(err(
                    r.span(),
                    format!("`{from}` is both dropped and renamed"),
                ));
            }
            if !targets.insert(to.clone()) {
                return Err(err(
                    r.span(),
                    format!("`rename`: two fields are renamed to `{to}`"),
                ));
            }
            out.rename.insert(from.clone(), to.clone());
        }
    }
    if let Some(v) = &m.values {
        for (field, codes) in v.get_ref() {
            if out.drop.contains(field) {
                return Err(err(
                    v.span(),
                    format!("`{field}` is both dropped and translated"),
                ));
            }
            let mut table = HashMap::new();
            for (code, to) in codes {
                let to = constant(to).ok_or_else(|| {
                    err(v.span(), format!("`values.{field}.{code}` must be a string, number, boolean or date-time"))
                })?;
                table.insert(code.clone(), to);
            }
            out.values.insert(field.clone(), table);
        }
    }
    if let Some(u) = &m.unknown {
        let rule = |s: &str| {
            Unknown::from_name(s).ok_or_else(|| {
                err(
                    u.span(),
                    format!("`unknown` `{s}`: use \"keep\", \"null\" or \"quarantine\""),
                )
            })
        };
        match u.get_ref() {
            toml::Value::String(s) => {
                let r = rule(s)?;
                for f in out.values.keys() {
                    out.unknown.insert(f.clone(), r);
                }
            }
            toml::Value::Table(t) => {
                for (f, v) in t {
                    if !out.values.contains_key(f) {
                        return Err(err(
                            u.span(),
                            format!("`unknown.{f}`: `{f}` has no `values` table"),
                        ));
                    }
                    let s = v.as_str().ok_or_else(|| {
                        err(
                            u.span(),
                            format!("`unknown.{f}` must be \"keep\", \"null\" or \"quarantine\""),
                        )
                    })?;
                    out.unknown.insert(f.clone(), rule(s)?);
                }
            }
            _ => return Err(err(
                u.span(),
                "`unknown` is \"keep\", \"null\" or \"quarantine\", or a table of those by field"
                    .into(),
            )),
        }
    }
    if let Some(a) = &m.add {
        for (field, v) in a.get_ref() {
            let v = constant(v).ok_or_else(|| {
                err(
                    a.span(),
                    format!("`add.{field}` must be a string, number, boolean or date-time"),
                )
            })?;
            if out.drop.contains(field) || out.rename.values().any(|t| t == field) {
                return Err(err(
                    a.span(),
                    format!("`add.{field}`: `{field}` is also dropped or a renamed field"),
                ));
            }
            out.add.push((field.clone(), v));
        }
    }
    Ok(out)
}
/// The `dialect` of a database source, when given.
pub(super) fn dialect_of(
    cx: &Ctx,
    name: &str,
    d: &Option<Spanned<String>>,
) -> Result<Option<Dialect>, ConfigError> {
    let Some(d) = d else {
        return Ok(None);
    };
    Dialect::from_name(d.get_ref()).map(Some).ok_or_else(|| {
        cx.err(
            d.span(),
            format!(
                "source `{name}`: dialect `{}`: use postgres, mariadb, sqlite, sqlserver, oracle or db2",
                d.get_ref()
            ),
        )
    })
}
/// Refuses keys that belong to other kinds of source.
pub(super) fn refuse(
    cx: &Ctx,
    name: &str,
    kind: &str,
    keys: &[(&str, Option<Range<usize>>)],
) -> Result<(), ConfigError> {
    for (key, span) in keys {
        if let Some(span) = span {
            return Err(cx.err(
                span.clone(),
                format!("source `{name}`: `{key}` is not a key of {kind} sources"),
            ));
        }
    }
    Ok(())
}
pub(super) fn single_byte(cx: &Ctx, v: &Spanned<String>, what: &str) -> Result<u8, ConfigError> {
    match v.get_ref().as_bytes() {
        [b] if b.is_ascii() && *b != b'\n' => Ok(*b),
        _ => Err(cx.err(v.span(), format!("{what} must be one ASCII character"))),
    }
}
