//! Calendar dates (UTC) for lifecycle and price facts: when an endpoint was
//! deprecated, when it is turned off, when a price was checked. Written
//! `YYYY-MM-DD` in configuration; sent as HTTP dates in `Sunset` and as
//! `@<unix seconds>` in `Deprecation`.

use std::fmt;

/// A day in the proleptic Gregorian calendar, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    year: i32,
    month: u8,
    day: u8,
}

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

impl Date {
    pub fn new(year: i32, month: u8, day: u8) -> Option<Self> {
        ((1970..=9999).contains(&year)
            && (1..=12).contains(&month)
            && (1..=days_in_month(year, month)).contains(&day))
        .then_some(Self { year, month, day })
    }

    /// `2026-07-17`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().splitn(3, '-');
        let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return None;
        }
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !digits(y) || !digits(m) || !digits(d) {
            return None;
        }
        Self::new(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
    }

    /// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
    pub fn days_since_epoch(self) -> i64 {
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The day holding `secs` seconds after the Unix epoch.
    pub fn from_unix_seconds(secs: u64) -> Self {
        let z = (secs / 86_400) as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Self { year, month, day }
    }

    /// Today, by the system clock.
    pub fn today() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::from_unix_seconds(secs)
    }

    /// Midnight UTC of this day, in Unix seconds.
    pub fn unix_seconds(self) -> i64 {
        self.days_since_epoch() * 86_400
    }

    /// An HTTP date (RFC 9110 IMF-fixdate) at midnight UTC:
    /// `Fri, 17 Jul 2026 00:00:00 GMT`, as `Sunset` carries it.
    pub fn http_date(self) -> String {
        let weekday = WEEKDAYS[self.days_since_epoch().rem_euclid(7) as usize];
        format!(
            "{weekday}, {:02} {} {} 00:00:00 GMT",
            self.day,
            MONTHS[usize::from(self.month - 1)],
            self.year
        )
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_print_and_order() {
        let d = Date::parse("2026-07-17").unwrap();
        assert_eq!(d.to_string(), "2026-07-17");
        assert!(Date::parse("2026-06-24").unwrap() < d);
        assert!(Date::parse("2027-01-01").unwrap() > d);
        for bad in [
            "",
            "2026-7-17",
            "2026-13-01",
            "2026-02-30",
            "2025-02-29",
            "17-07-2026",
            "2026/07/17",
            "1969-12-31",
        ] {
            assert_eq!(Date::parse(bad), None, "{bad}");
        }
        assert!(Date::parse("2024-02-29").is_some());
    }

    #[test]
    fn unix_time_round_trips() {
        assert_eq!(Date::parse("1970-01-01").unwrap().unix_seconds(), 0);
        // 2026-07-17T00:00:00Z, from `date -d 2026-07-17 +%s`.
        let d = Date::parse("2026-07-17").unwrap();
        assert_eq!(d.unix_seconds(), 1_784_246_400);
        assert_eq!(Date::from_unix_seconds(1_784_246_400 + 86_399), d);
        for days in [0u64, 59, 365, 10_956, 20_000, 40_000] {
            let date = Date::from_unix_seconds(days * 86_400);
            assert_eq!(date.days_since_epoch(), days as i64, "{date}");
        }
    }

    #[test]
    fn http_dates_name_the_weekday() {
        assert_eq!(
            Date::parse("2026-07-17").unwrap().http_date(),
            "Fri, 17 Jul 2026 00:00:00 GMT"
        );
        assert_eq!(
            Date::parse("1970-01-01").unwrap().http_date(),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }
}
