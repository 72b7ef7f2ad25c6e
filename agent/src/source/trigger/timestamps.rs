//! Date-times as the databases write them in JSON, made one text per instant.
//!
//! A key must have one text, or a consumer that keeps the last event per key keeps two
//! rows, and the drain's byte-exact match of a current row to its captured key misses.
//! PostgreSQL writes a `timestamptz` in the session's time zone (`…T10:00:00+05:30` from
//! a writer in Kolkata, `…T23:30:00-05:00` for the agent in New York): every value with
//! an offset is written in UTC, `+00:00`, which is what a UTC session writes already.
//! MariaDB separates date and time with a space: written with a `T`.

use crate::calendar::{civil_from_days, days_from_civil};

/// `t` as ISO-8601 with a `T`, an offset turned to `+00:00`; unchanged when it is not a
/// date-time lockstep can read exactly (`infinity`, years past 9999, BC dates).
pub fn iso(t: &str) -> String {
    let t = t.trim();
    match to_utc(t) {
        Some(utc) => utc,
        None if t.len() > 10 && t.as_bytes()[10] == b' ' => t.replacen(' ', "T", 1),
        None => t.to_owned(),
    }
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.f…]±HH[:MM[:SS]]` in UTC; `None` without an offset or when
/// it is not of that form.
fn to_utc(t: &str) -> Option<String> {
    let b = t.as_bytes();
    if b.len() < 20 || !matches!(b[10], b'T' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if &t[4..5] != "-" || &t[7..8] != "-" || &t[13..14] != ":" || &t[16..17] != ":" {
        return None;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    let frac = &t[19..i];
    let off = &t[i..];
    let sign = match off.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let parts: Vec<&str> = off[1..].split(':').collect();
    if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let mut off_s = 0;
    for (p, unit) in parts.iter().zip([3600, 60, 1]) {
        if !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        off_s += p.parse::<i64>().ok()? * unit;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 24 || mi > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - sign * off_s;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, mo, d) = civil_from_days(days);
    if !(1..=9999).contains(&y) {
        return None;
    }
    Some(format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}{frac}+00:00",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    ))
}

#[cfg(test)]
mod tests {
    use super::iso;

    #[test]
    fn offsets_become_utc_and_nothing_else_changes() {
        assert_eq!(
            iso("2026-03-08T02:00:07.259777+05:30"),
            "2026-03-07T20:30:07.259777+00:00"
        );
        assert_eq!(
            iso("2026-03-07T15:30:07.5-05:00"),
            "2026-03-07T20:30:07.5+00:00"
        );
        assert_eq!(
            iso("2026-03-07T20:30:07+00:00"),
            "2026-03-07T20:30:07+00:00"
        );
        assert_eq!(iso("2026-03-07T20:30:07+00"), "2026-03-07T20:30:07+00:00");
        // Across a year and a leap day; an offset with seconds (local mean time).
        assert_eq!(
            iso("2027-01-01T03:00:00+05:30"),
            "2026-12-31T21:30:00+00:00"
        );
        assert_eq!(
            iso("2028-02-29T23:00:00-02:00"),
            "2028-03-01T01:00:00+00:00"
        );
        assert_eq!(
            iso("1900-01-01T00:00:00+00:53:28"),
            "1899-12-31T23:06:32+00:00"
        );
        // No offset: the date and time separated by a T, nothing more.
        assert_eq!(
            iso("2026-03-08 02:00:07.259777"),
            "2026-03-08T02:00:07.259777"
        );
        assert_eq!(iso("2026-03-08T02:00:07"), "2026-03-08T02:00:07");
        assert_eq!(iso("2026-03-08"), "2026-03-08");
        // What cannot be read exactly is left as it is.
        assert_eq!(iso("infinity"), "infinity");
        assert_eq!(
            iso("0044-03-15T12:00:00+00:00 BC"),
            "0044-03-15T12:00:00+00:00 BC"
        );
        assert_eq!(
            iso("12026-03-08T02:00:07+00:00"),
            "12026-03-08T02:00:07+00:00"
        );
        assert_eq!(
            iso("9999-12-31T23:00:00-05:00"),
            "9999-12-31T23:00:00-05:00"
        );
    }
}
