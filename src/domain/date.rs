//! Calendar dates (UTC) for lifecycle and price facts: when an endpoint was
//! deprecated, when it is turned off, when a price was checked. Written
//! `YYYY-MM-DD` in configuration; sent as HTTP dates in `Sunset` and as
//! `@<unix seconds>` in `Deprecation`. The calendar is the `time` crate's;
//! HTTP dates are `httpdate`'s.

use std::time::{Duration, UNIX_EPOCH};

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

/// A day in the Gregorian calendar, UTC.
pub type Date = time::Date;

const ISO_DATE: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

/// `2026-07-17` (exactly that form), on or after 1970-01-01.
pub fn parse(text: &str) -> Option<Date> {
    let date = Date::parse(text.trim(), ISO_DATE).ok()?;
    (date.year() >= 1970).then_some(date)
}

/// Today, by the system clock.
pub fn today() -> Date {
    time::OffsetDateTime::now_utc().date()
}

/// Midnight UTC of `date`, in Unix seconds.
pub fn unix_seconds(date: Date) -> i64 {
    date.midnight().assume_utc().unix_timestamp()
}

/// An HTTP date (RFC 9110 IMF-fixdate) at midnight UTC:
/// `Fri, 17 Jul 2026 00:00:00 GMT`, as `Sunset` carries it.
pub fn http_date(date: Date) -> String {
    let secs = u64::try_from(unix_seconds(date)).unwrap_or(0);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_print_and_order() {
        let d = parse("2026-07-17").unwrap();
        assert_eq!(d.to_string(), "2026-07-17");
        assert!(parse("2026-06-24").unwrap() < d);
        assert!(parse("2027-01-01").unwrap() > d);
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
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert!(parse("2024-02-29").is_some());
    }

    #[test]
    fn unix_time_and_http_dates() {
        assert_eq!(unix_seconds(parse("1970-01-01").unwrap()), 0);
        // 2026-07-17T00:00:00Z, from `date -d 2026-07-17 +%s`.
        assert_eq!(unix_seconds(parse("2026-07-17").unwrap()), 1_784_246_400);
        assert_eq!(
            http_date(parse("2026-07-17").unwrap()),
            "Fri, 17 Jul 2026 00:00:00 GMT"
        );
        assert_eq!(
            http_date(parse("1970-01-01").unwrap()),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }
}
