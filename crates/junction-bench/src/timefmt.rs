//! UTC timestamps as RFC 3339 strings, without a date library.
//!
//! Contract: [`Rfc3339Millis`] displays Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`
//! (proleptic Gregorian, years 1970..9999); [`parse_utc`] reads `YYYY-MM-DDTHH:MM:SS[.fff]Z`
//! or the word `now`.

use std::fmt;

/// Unix milliseconds displayed as RFC 3339 UTC with millisecond precision.
pub struct Rfc3339Millis(pub i64);

impl fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Current Unix time in milliseconds.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses `now` or `YYYY-MM-DDTHH:MM:SS[.fff]Z` into Unix milliseconds.
pub fn parse_utc(s: &str) -> Result<i64, String> {
    if s == "now" {
        return Ok(now_millis());
    }
    let err = || format!("expected `now` or YYYY-MM-DDTHH:MM:SS[.fff]Z, got {s:?}");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return Err(err());
    }
    if b[16] != b':' || *b.last().unwrap() != b'Z' {
        return Err(err());
    }
    let num =
        |r: std::ops::Range<usize>| s.get(r).and_then(|t| t.parse::<i64>().ok()).ok_or_else(err);
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = if b[19] == b'.' {
        let frac = &s[20..s.len() - 1];
        let mut digits: String = frac.chars().take(3).collect();
        while digits.len() < 3 {
            digits.push('0');
        }
        digits.parse::<i64>().map_err(|_| err())?
    } else if b.len() == 20 {
        0
    } else {
        return Err(err());
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(err());
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    Ok(((days * 86_400 + h * 3600 + mi * 60 + se) * 1000) + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Rfc3339Millis(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Rfc3339Millis(951_782_400_123).to_string(),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            Rfc3339Millis(1_798_761_599_999).to_string(),
            "2026-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn parse_roundtrips() {
        for ms in [0i64, 951_782_400_123, 1_798_761_599_999, 1_780_000_000_000] {
            assert_eq!(parse_utc(&Rfc3339Millis(ms).to_string()).unwrap(), ms);
        }
        assert_eq!(
            parse_utc("2026-01-01T00:00:00Z").unwrap(),
            1_767_225_600_000
        );
        assert!(parse_utc("2026-01-01").is_err());
    }
}
