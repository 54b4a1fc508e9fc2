//! Money as the gateway counts it: whole micro-dollars (10^-6 USD) in an
//! integer. Prices, reservations and spend add up exactly; no floating point
//! is involved after a price is read from configuration.

use std::fmt;

/// An amount in micro-dollars: `MicroUsd(20_000)` is $0.02.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MicroUsd(pub u64);

/// Micro-dollars in one dollar.
const PER_USD: u64 = 1_000_000;

impl MicroUsd {
    pub const ZERO: MicroUsd = MicroUsd(0);

    /// A dollar amount written as a decimal (`"0.08"`, `"1"`, `"0.0035"`),
    /// exactly: at most six decimals, no sign, no exponent.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() && frac.is_empty()
            || frac.len() > 6
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || whole.len() > 12
        {
            return None;
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut micros = 0u64;
        for (i, b) in frac.bytes().enumerate() {
            micros += u64::from(b - b'0') * 10u64.pow(5 - i as u32);
        }
        whole
            .checked_mul(PER_USD)?
            .checked_add(micros)
            .map(MicroUsd)
    }

    /// A dollar amount from a configuration number, rounded to the nearest
    /// micro-dollar (`0.08` is exactly 80 000 after rounding). `None` for
    /// negative, non-finite or absurd (over a million dollars) values.
    pub fn from_usd(usd: f64) -> Option<Self> {
        (usd.is_finite() && (0.0..=1e6).contains(&usd))
            .then(|| MicroUsd((usd * PER_USD as f64).round() as u64))
    }

    pub fn saturating_add(self, other: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_add(other.0))
    }

    pub fn saturating_mul(self, times: u64) -> MicroUsd {
        MicroUsd(self.0.saturating_mul(times))
    }

    /// `self * num / den`, rounded up: a price scaled by a factor is never
    /// underestimated by a fraction of a micro-dollar.
    pub fn scale_ceil(self, num: u64, den: u64) -> MicroUsd {
        if den == 0 {
            return self;
        }
        let product = u128::from(self.0) * u128::from(num);
        let scaled = product.div_ceil(u128::from(den));
        MicroUsd(u64::try_from(scaled).unwrap_or(u64::MAX))
    }

    /// Decimal dollars without trailing zeros: `0.02`, `0.000003`, `1.5`, `0`.
    pub fn usd_string(self) -> String {
        let (whole, frac) = (self.0 / PER_USD, self.0 % PER_USD);
        if frac == 0 {
            return whole.to_string();
        }
        let frac = format!("{frac:06}");
        format!("{whole}.{}", frac.trim_end_matches('0'))
    }
}

impl fmt::Display for MicroUsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.usd_string())
    }
}

impl std::iter::Sum for MicroUsd {
    fn sum<I: Iterator<Item = MicroUsd>>(iter: I) -> Self {
        iter.fold(MicroUsd::ZERO, MicroUsd::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_dollars_parse_exactly() {
        for (text, micros) in [
            ("0.02", 20_000),
            ("0.08", 80_000),
            (".5", 500_000),
            ("1", 1_000_000),
            ("0.003", 3_000),
            ("0.000001", 1),
            ("12.345678", 12_345_678),
        ] {
            assert_eq!(MicroUsd::parse(text), Some(MicroUsd(micros)), "{text}");
            assert_eq!(
                MicroUsd::parse(&MicroUsd(micros).usd_string()),
                Some(MicroUsd(micros))
            );
        }
        for bad in [
            "",
            ".",
            "-1",
            "1e3",
            "0.0000001",
            "1,5",
            "$1",
            "abc",
            "1.2.3",
        ] {
            assert_eq!(MicroUsd::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn floats_round_to_the_nearest_micro_dollar() {
        assert_eq!(MicroUsd::from_usd(0.08), Some(MicroUsd(80_000)));
        assert_eq!(MicroUsd::from_usd(0.1 + 0.2), Some(MicroUsd(300_000)));
        assert_eq!(MicroUsd::from_usd(-0.01), None);
        assert_eq!(MicroUsd::from_usd(f64::NAN), None);
    }

    #[test]
    fn amounts_print_as_plain_decimals() {
        assert_eq!(MicroUsd(20_000).usd_string(), "0.02");
        assert_eq!(MicroUsd(0).usd_string(), "0");
        assert_eq!(MicroUsd(1_500_000).usd_string(), "1.5");
        assert_eq!(MicroUsd(3).usd_string(), "0.000003");
        assert_eq!(MicroUsd(60_000).to_string(), "$0.06");
    }

    #[test]
    fn scaling_rounds_up() {
        assert_eq!(MicroUsd(80_000).scale_ceil(3, 4), MicroUsd(60_000));
        assert_eq!(MicroUsd(10).scale_ceil(1, 3), MicroUsd(4));
        assert_eq!(MicroUsd(u64::MAX).scale_ceil(2, 1), MicroUsd(u64::MAX));
        assert_eq!(
            [MicroUsd(1), MicroUsd(2)].into_iter().sum::<MicroUsd>(),
            MicroUsd(3)
        );
    }
}
