//! ISO-8601 / RFC 3339 timestamps as milliseconds since the Unix epoch.
//!
//! Contract:
//! - [`parse`] accepts `YYYY-MM-DD`, optionally followed by `T` (or `t` or a space) and
//!   `HH:MM[:SS[.fraction]]`, optionally followed by `Z`/`z` or an offset `±HH`, `±HHMM`,
//!   `±HH:MM`. A date-time without an offset is UTC; a bare date is midnight UTC. Fractions
//!   finer than a millisecond are truncated. Anything else is `None`.
//! - [`format`] / [`write`] always produce `YYYY-MM-DDTHH:MM:SS.mmmZ` (24 bytes). Instants
//!   outside years 0000..=9999 are clamped to that range, so the output always re-parses.
//! - Pure arithmetic: no clock, no allocation in [`parse`] and [`write`].

/// `0000-01-01T00:00:00.000Z`.
pub const MIN_MS: i64 = -62_167_219_200_000;
/// `9999-12-31T23:59:59.999Z`.
pub const MAX_MS: i64 = 253_402_300_799_999;

const MS_PER_DAY: i64 = 86_400_000;

/// Parses an ISO-8601 date or date-time into milliseconds since the epoch.
pub fn parse(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Some(days * MS_PER_DAY);
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let rest = &b[11..];
    if rest.len() < 5 || rest[2] != b':' {
        return None;
    }
    let hour = digits(&rest[0..2])?;
    let minute = digits(&rest[3..5])?;
    let mut i = 5;
    let mut second = 0;
    let mut millis = 0;
    if rest.get(i) == Some(&b':') {
        second = digits(rest.get(i + 1..i + 3)?)?;
        i += 3;
        if matches!(rest.get(i), Some(b'.' | b',')) {
            i += 1;
            let start = i;
            while rest.get(i).is_some_and(u8::is_ascii_digit) {
                if i - start < 3 {
                    millis = millis * 10 + i64::from(rest[i] - b'0');
                }
                i += 1;
            }
            let n = i - start;
            if n == 0 {
                return None;
            }
            for _ in n..3 {
                millis *= 10;
            }
        }
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let offset_minutes = parse_offset(&rest[i..])?;
    let ms =
        days * MS_PER_DAY + ((hour * 60 + minute - offset_minutes) * 60 + second) * 1000 + millis;
    Some(ms)
}

/// `Z`, `z`, empty (UTC), `±HH`, `±HHMM` or `±HH:MM` → minutes east of UTC.
fn parse_offset(b: &[u8]) -> Option<i64> {
    let (sign, body) = match b {
        [] | [b'Z' | b'z'] => return Some(0),
        [b'+', body @ ..] => (1, body),
        [b'-', body @ ..] => (-1, body),
        _ => return None,
    };
    let (h, m) = match body {
        [h1, h2] => (digits(&[*h1, *h2])?, 0),
        [h1, h2, m1, m2] | [h1, h2, b':', m1, m2] => (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?),
        _ => return None,
    };
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h * 60 + m))
}

fn digits(b: &[u8]) -> Option<i64> {
    let mut n = 0i64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(c - b'0');
    }
    Some(n)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` (clamped to years 0000..=9999) to `out`.
pub fn write(ms: i64, out: &mut Vec<u8>) {
    let ms = ms.clamp(MIN_MS, MAX_MS);
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    put(&mut buf[0..4], year);
    put(&mut buf[5..7], month);
    put(&mut buf[8..10], day);
    put(&mut buf[11..13], in_day / 3_600_000);
    put(&mut buf[14..16], in_day / 60_000 % 60);
    put(&mut buf[17..19], in_day / 1000 % 60);
    put(&mut buf[20..23], in_day % 1000);
    out.extend_from_slice(&buf);
}

/// Writes `n` as zero-padded decimal filling `dst` exactly.
fn put(dst: &mut [u8], mut n: i64) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `ms` since the epoch (clamped to years 0000..=9999).
pub fn format(ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    write(ms, &mut out);
    String::from_utf8(out).expect("timestamp::write emits ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_shapes() {
        let base = 1_700_000_000_000; // 2023-11-14T22:13:20.000Z
        assert_eq!(parse("2023-11-14T22:13:20.000Z"), Some(base));
        assert_eq!(parse("2023-11-14T22:13:20Z"), Some(base));
        assert_eq!(parse("2023-11-14t22:13:20z"), Some(base));
        assert_eq!(parse("2023-11-14 22:13:20"), Some(base));
        assert_eq!(parse("2023-11-14T22:13:20"), Some(base));
        assert_eq!(parse("2023-11-14T22:13:20.5Z"), Some(base + 500));
        assert_eq!(parse("2023-11-14T22:13:20,25Z"), Some(base + 250));
        assert_eq!(parse("2023-11-14T22:13:20.123456789Z"), Some(base + 123));
        assert_eq!(parse("2023-11-15T00:13:20.000+02:00"), Some(base));
        assert_eq!(parse("2023-11-15T00:13:20+0200"), Some(base));
        assert_eq!(parse("2023-11-15T00:13:20+02"), Some(base));
        assert_eq!(parse("2023-11-14T17:13:20-05:00"), Some(base));
        assert_eq!(parse("2023-11-14T22:13Z"), Some(base - 20_000));
        assert_eq!(parse("2023-11-14"), Some(base - 80_000_000));
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(parse("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "yesterday",
            "1700000000",
            "2023-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:61:00Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+2",
            "2023-11-14T22:13:20+24:00",
            "2023-11-14T22:13:20Zjunk",
            "2023-11-14X22:13:20Z",
            "2023/11/14",
            "+2023-11-14",
            "2023-11-14T",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn formats_and_clamps() {
        assert_eq!(format(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format(i64::MIN), "0000-01-01T00:00:00.000Z");
        assert_eq!(format(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(parse(&format(MIN_MS)), Some(MIN_MS));
        assert_eq!(parse(&format(MAX_MS)), Some(MAX_MS));
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(ms in MIN_MS..=MAX_MS) {
            prop_assert_eq!(parse(&format(ms)), Some(ms));
        }

        #[test]
        fn format_agrees_with_time_crate(ms in MIN_MS..=MAX_MS) {
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap();
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second(),
                t.millisecond()
            );
            prop_assert_eq!(format(ms), expected);
        }
    }
}
