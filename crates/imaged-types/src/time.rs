//! RFC 3339 times without a calendar crate: parsing for filters
//! (`created_at>=2024-01-01`) and formatting for output.
//!
//! Accepted: `YYYY-MM-DD` (midnight UTC) and
//! `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, with `T` or `t` or a space,
//! from 1970 on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch: the unit in which imaged stores and
/// compares times (0 before the epoch, saturating after 2262).
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time `nanos` nanoseconds after the Unix epoch (the epoch for a
/// negative count).
pub fn from_unix_nanos(nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn number(s: &str, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| range.contains(n))
}

/// Parses an RFC 3339 time or a bare date. The error says what was expected.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    let expected = || "expected an RFC 3339 time (2024-05-01T12:00:00Z) or a date (2024-05-01)".to_string();
    let (date, rest) = if s.len() > 10 { s.split_at(10) } else { (s, "") };
    let mut parts = date.splitn(3, '-');
    let (year, month, day) = match (parts.next(), parts.next(), parts.next()) {
        (Some(y), Some(m), Some(d)) if y.len() == 4 && m.len() == 2 && d.len() == 2 => (y, m, d),
        _ => return Err(expected()),
    };
    let year = number(year, 1970..=9999).ok_or_else(expected)?;
    let month = number(month, 1..=12).ok_or_else(expected)?;
    let day = number(day, 1..=days_in_month(year, month)).ok_or_else(expected)?;
    let mut seconds = days_from_civil(year, month, day) * 86_400;
    let mut nanos = 0u32;
    if !rest.is_empty() {
        let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(expected)?;
        if rest.len() < 8 || &rest[2..3] != ":" || &rest[5..6] != ":" {
            return Err(expected());
        }
        let hour = number(&rest[0..2], 0..=23).ok_or_else(expected)?;
        let minute = number(&rest[3..5], 0..=59).ok_or_else(expected)?;
        let second = number(&rest[6..8], 0..=60).ok_or_else(expected)?;
        seconds += hour * 3600 + minute * 60 + second;
        let mut zone = &rest[8..];
        if let Some(frac) = zone.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 9 {
                return Err(expected());
            }
            nanos = frac[..digits].parse::<u32>().map_err(|_| expected())? * 10u32.pow(9 - digits as u32);
            zone = &frac[digits..];
        }
        let offset = match zone {
            "Z" | "z" => 0,
            z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && &z[3..4] == ":" => {
                let h = number(&z[1..3], 0..=23).ok_or_else(expected)?;
                let m = number(&z[4..6], 0..=59).ok_or_else(expected)?;
                let sign = if z.starts_with('-') { -1 } else { 1 };
                sign * (h * 3600 + m * 60)
            }
            _ => return Err(expected()),
        };
        seconds -= offset;
    }
    let seconds = u64::try_from(seconds).map_err(|_| "times before 1970 are not supported".to_string())?;
    Ok(UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// Formats a time as RFC 3339 in UTC, with nanoseconds when there are any.
pub fn format_rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let base = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    match since.subsec_nanos() {
        0 => format!("{base}Z"),
        n => format!("{base}.{n:09}Z"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        parse_rfc3339(s).unwrap().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn parses_dates_and_times() {
        assert_eq!(secs("1970-01-01"), 0);
        assert_eq!(secs("2024-01-01"), 1_704_067_200);
        assert_eq!(secs("2024-02-29T12:30:15Z"), 1_709_209_815);
        assert_eq!(secs("2024-02-29T14:30:15+02:00"), 1_709_209_815);
        assert_eq!(secs("2024-02-29 12:30:15z"), 1_709_209_815);
        let t = parse_rfc3339("2024-02-29T12:30:15.5Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().subsec_nanos(), 500_000_000);
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "",
            "2024",
            "2024-13-01",
            "2023-02-29",
            "2024-01-01T25:00:00Z",
            "2024-01-01T12:00:00",
            "2024-01-01T12:00Z",
            "1969-12-31",
            "2024-01-01T12:00:00.Z",
            "+2024-01-01",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_and_round_trips() {
        for s in [
            "1970-01-01T00:00:00Z",
            "2024-02-29T12:30:15Z",
            "2099-12-31T23:59:59.000000001Z",
        ] {
            assert_eq!(format_rfc3339(parse_rfc3339(s).unwrap()), s);
        }
    }
}
