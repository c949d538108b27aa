//! `FragmentNumber`: the server's KVS-style name for a stored fragment.

use std::fmt;
use std::str::FromStr;

/// Added to the counter so that every number prints as exactly 20 digits (1 followed by the
/// counter, or 2 for counters past 10^19), which sorts the same as text and as a number.
const DISPLAY_OFFSET: u128 = 10_000_000_000_000_000_000;
/// Digits in a displayed fragment number.
pub const FRAGMENT_NUMBER_DIGITS: usize = 20;

/// Per-stream counter that rises with ingest order. Displayed as a fixed-width decimal string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragmentNumber(pub u64);

impl fmt::Display for FragmentNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", DISPLAY_OFFSET + u128::from(self.0))
    }
}

/// Why a string is not a fragment number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a fragment number (expected {FRAGMENT_NUMBER_DIGITS} digits, as issued by this server)"
)]
pub struct FragmentNumberError {
    pub text: String,
}

impl FromStr for FragmentNumber {
    type Err = FragmentNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let refuse = || FragmentNumberError {
            text: s.chars().take(64).collect(),
        };
        if s.len() != FRAGMENT_NUMBER_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse());
        }
        let value: u128 = s.parse().map_err(|_| refuse())?;
        let counter = value.checked_sub(DISPLAY_OFFSET).ok_or_else(refuse)?;
        u64::try_from(counter)
            .map(FragmentNumber)
            .map_err(|_| refuse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_fixed_width_and_round_trip() {
        for n in [0, 1, 42, 999_999, 10_000_000_000_000_000_000, u64::MAX] {
            let text = FragmentNumber(n).to_string();
            assert_eq!(text.len(), FRAGMENT_NUMBER_DIGITS, "{text}");
            assert_eq!(text.parse::<FragmentNumber>(), Ok(FragmentNumber(n)));
        }
        assert_eq!(FragmentNumber(7).to_string(), "10000000000000000007");
    }

    #[test]
    fn text_order_is_number_order() {
        let numbers = [0u64, 9, 10, 99, 100, 12_345_678, u64::MAX];
        let texts: Vec<String> = numbers
            .iter()
            .map(|n| FragmentNumber(*n).to_string())
            .collect();
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(texts, sorted);
    }

    #[test]
    fn malformed_numbers_are_refused() {
        for bad in [
            "",
            "123",
            "0000000000000000000a",
            "09999999999999999999",
            "99999999999999999999",
            "+1000000000000000000",
            "100000000000000000000",
        ] {
            assert!(bad.parse::<FragmentNumber>().is_err(), "{bad}");
        }
    }
}
