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
/// date-time lockstep can read exactly (`infinity`, years past 9999, BC dates). Returns
/// `t` itself, not copied, when it is already so (a UTC session writes UTC already).
pub fn iso_owned(t: String) -> String {
    changed(&t).unwrap_or(t)
}

/// What [`iso_owned`] makes of `t`, or `None` when that is `t` itself.
fn changed(t: &str) -> Option<String> {
    let trimmed = t.trim();
    let same = trimmed.len() == t.len();
    match to_utc(trimmed) {
        Some(Utc::Same) if same => None,
        Some(Utc::Same) => Some(trimmed.to_owned()),
        Some(Utc::New(utc)) => Some(utc),
        None if trimmed.len() > 10 && trimmed.as_bytes()[10] == b' ' => {
            Some(trimmed.replacen(' ', "T", 1))
        }
        None if same => None,
        None => Some(trimmed.to_owned()),
    }
}

/// A date-time with an offset, in UTC.
#[derive(Debug, PartialEq, Eq)]
enum Utc {
    /// The text itself: already `…T…+00:00` in range.
    Same,
    New(String),
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.f…]±HH[:MM[:SS]]` in UTC; `None` without an offset or when
/// it is not of that form. Once per date-time column of every image the trigger drain
/// reads: written without `format!` and without allocating when the text is already
/// UTC (it took about a sixth of the drain's instructions with them).
fn to_utc(t: &str) -> Option<Utc> {
    let b = t.as_bytes();
    if b.len() < 20 || !matches!(b[10], b'T' | b' ') {
        return None;
    }
    // The decimal number of the ASCII digits `b[r]` (none of them may be another byte).
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b.get(r)?.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    // Both ends follow ASCII bytes: char boundaries.
    let frac = &t[19..i];
    let off = &b[i..];
    let sign = match off.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    // `HH`, `HH:MM` or `HH:MM:SS`.
    let parts = off.len() - 1;
    if !matches!(parts, 2 | 5 | 8) {
        return None;
    }
    let mut off_s = 0;
    for (k, unit) in [3600, 60, 1]
        .into_iter()
        .enumerate()
        .take(parts.div_ceil(3))
    {
        let at = 1 + 3 * k;
        if k > 0 && off[at - 1] != b':' {
            return None;
        }
        off_s += num(i + at..i + at + 2)? * unit;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 24 || mi > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - sign * off_s;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (uy, umo, ud) = civil_from_days(days);
    if !(1..=9999).contains(&uy) {
        return None;
    }
    let (uh, umi, us) = (rem / 3600, rem / 60 % 60, rem % 60);
    if b[10] == b'T' && off == b"+00:00" && (uy, umo, ud, uh, umi, us) == (y, mo, d, h, mi, s) {
        return Some(Utc::Same);
    }
    let mut out = String::with_capacity(25 + frac.len());
    push_digits(&mut out, uy, 4);
    out.push('-');
    push_digits(&mut out, umo, 2);
    out.push('-');
    push_digits(&mut out, ud, 2);
    out.push('T');
    push_digits(&mut out, uh, 2);
    out.push(':');
    push_digits(&mut out, umi, 2);
    out.push(':');
    push_digits(&mut out, us, 2);
    out.push_str(frac);
    out.push_str("+00:00");
    Some(Utc::New(out))
}

/// The last `width` decimal digits of `n` (0 ≤ `n`), zero-padded.
fn push_digits(out: &mut String, n: i64, width: u32) {
    for p in (0..width).rev() {
        out.push(char::from(b'0' + (n / 10i64.pow(p) % 10) as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::iso_owned;
    use crate::calendar::{civil_from_days, days_from_civil};

    fn iso(t: &str) -> String {
        iso_owned(t.to_owned())
    }

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

    /// The first version of [`iso_owned`] (with `format!`), kept as the reference: the faster
    /// one must write exactly the same text for every input.
    fn reference(t: &str) -> String {
        let t = t.trim();
        match reference_utc(t) {
            Some(utc) => utc,
            None if t.len() > 10 && t.as_bytes()[10] == b' ' => t.replacen(' ', "T", 1),
            None => t.to_owned(),
        }
    }

    fn reference_utc(t: &str) -> Option<String> {
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

    #[test]
    fn edges_write_what_the_reference_writes() {
        for t in [
            "2026-11-21T10:00:00+00:00",
            " 2026-11-21T10:00:00+00:00 ",
            "2026-11-21 10:00:00+00:00",
            "2026-11-21T10:00:00-00:00",
            "2026-11-21T10:00:00+00",
            "2026-11-21T10:00:00+00:00:00",
            "2026-11-21T24:00:00+00:00",
            "2026-12-31T23:59:60+00:00",
            "2026-02-30T10:00:00+00:00",
            "0000-01-01T10:00:00+00:00",
            "0001-01-01T00:30:00+01:00",
            "9999-12-31T23:30:00-01:00",
            "2026-11-21T10:00:00.+00:00",
            "2026-11-21T10:00:00.123456789+00:00",
            "2026-11-21T10:00:00+0530",
            "2026-11-21T10:00:00+05:3",
            "2026-11-21T10:00:00+05:30:",
            "2026-11-21T10:00:00+5:30",
            "2026-11-21T10:00:00Z",
            "2026-11-21T10:00:00+é:00",
            "2026-11-21T10:00:00+00:00 BC",
            "2026-11-21T10:00:00",
            "2026-11-21 10:00:00",
            "é026-11-21T10:00:00+00:00",
            "",
            "   ",
        ] {
            assert_eq!(iso(t), reference(t), "{t:?}");
        }
    }

    proptest::proptest! {
        /// Any text built of date-time pieces, well-formed or not, in range or not:
        /// the same text as the reference.
        #[test]
        fn any_text_is_written_as_the_reference_writes_it(
            pad in "[ \\t]{0,1}",
            date in "[0-9]{4}[-/][01][0-9]-[0-3][0-9]",
            sep in "[T t]",
            time in "[0-2][0-9]:[0-6][0-9][:.][0-6][0-9]",
            frac in "(\\.[0-9]{0,9})?",
            off in "(|Z|[+-][0-2][0-9]|[+-][0-2][0-9]:[0-6][0-9]|[+-][0-2][0-9]:[0-6][0-9]:[0-6][0-9]|[+-][0-9:é]{1,6})",
            tail in "(| BC|x)",
        ) {
            let t = format!("{pad}{date}{sep}{time}{frac}{off}{tail}{pad}");
            proptest::prop_assert_eq!(iso(&t), reference(&t), "{:?}", t);
        }

        /// Any text at all.
        #[test]
        fn any_characters_are_written_as_the_reference_writes_them(t in "\\PC{0,30}") {
            proptest::prop_assert_eq!(iso(&t), reference(&t), "{:?}", t);
        }
    }
}
