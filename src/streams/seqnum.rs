//! AWS-layout sequence numbers, as decimal strings.
//!
//! The hex form (47 digits) is `"2" | shard creation seconds (9 hex) | last hex digit of the
//! shard index | per-shard counter (16 hex) | "00" | arrival seconds (9 hex) | shard index
//! (8 hex) | "2"`. It needs 188 bits, more than a u128, so conversion to and from decimal is
//! done here on 32-bit limbs. Within a shard the counter sits above the arrival time, so the
//! numbers rise with the counter whatever the clock does.

/// Seconds fields have 9 hex digits.
const SECONDS_MAX: u64 = (1 << 36) - 1;
/// 188 bits fit in six 32-bit limbs.
const LIMBS: usize = 6;
/// Longest decimal string worth parsing (a 47-hex-digit value has at most 57 digits).
const DECIMAL_DIGITS_MAX: usize = 64;
const HEX_DIGITS: usize = 47;

/// The fields a sequence number carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqNum {
    pub shard_created_s: u64,
    pub shard_index: u32,
    pub counter: u64,
    pub arrival_s: u64,
}

impl SeqNum {
    /// The decimal string clients see.
    pub fn encode(self) -> String {
        let hex = format!(
            "2{:09x}{:x}{:016x}00{:09x}{:08x}2",
            self.shard_created_s.min(SECONDS_MAX),
            self.shard_index & 0xf,
            self.counter,
            self.arrival_s.min(SECONDS_MAX),
            self.shard_index
        );
        let mut limbs = [0u32; LIMBS];
        for digit in hex.bytes() {
            // Every character comes from the format above: always a hex digit.
            let value = char::from(digit).to_digit(16).unwrap_or(0);
            mul_add(&mut limbs, 16, value);
        }
        to_decimal(limbs)
    }

    /// Parses a decimal string of this layout; `None` for anything else.
    pub fn decode(decimal: &str) -> Option<SeqNum> {
        if decimal.is_empty() || decimal.len() > DECIMAL_DIGITS_MAX {
            return None;
        }
        let mut limbs = [0u32; LIMBS];
        for c in decimal.chars() {
            if mul_add(&mut limbs, 10, c.to_digit(10)?) {
                return None;
            }
        }
        let hex = to_hex(limbs);
        if hex.len() != HEX_DIGITS || !hex.starts_with('2') || !hex.ends_with('2') {
            return None;
        }
        let field = |range: std::ops::Range<usize>| u64::from_str_radix(&hex[range], 16).ok();
        let nibble = field(10..11)?;
        if &hex[27..29] != "00" {
            return None;
        }
        let seq = SeqNum {
            shard_created_s: field(1..10)?,
            counter: field(11..27)?,
            arrival_s: field(29..38)?,
            shard_index: u32::try_from(field(38..46)?).ok()?,
        };
        (u64::from(seq.shard_index & 0xf) == nibble).then_some(seq)
    }
}

/// limbs = limbs * factor + add; true on overflow.
fn mul_add(limbs: &mut [u32; LIMBS], factor: u32, add: u32) -> bool {
    let mut carry = u64::from(add);
    for limb in limbs.iter_mut() {
        let v = u64::from(*limb) * u64::from(factor) + carry;
        *limb = v as u32;
        carry = v >> 32;
    }
    carry != 0
}

/// limbs /= divisor, returning the remainder.
fn div_rem(limbs: &mut [u32; LIMBS], divisor: u32) -> u32 {
    let mut rem = 0u64;
    for limb in limbs.iter_mut().rev() {
        let v = (rem << 32) | u64::from(*limb);
        *limb = (v / u64::from(divisor)) as u32;
        rem = v % u64::from(divisor);
    }
    rem as u32
}

fn to_decimal(mut limbs: [u32; LIMBS]) -> String {
    let mut digits = Vec::with_capacity(DECIMAL_DIGITS_MAX);
    while limbs.iter().any(|&l| l != 0) && digits.len() < DECIMAL_DIGITS_MAX {
        digits.push(b'0' + div_rem(&mut limbs, 10) as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

fn to_hex(limbs: [u32; LIMBS]) -> String {
    let full: String = limbs.iter().rev().map(|l| format!("{l:08x}")).collect();
    full.trim_start_matches('0').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SeqNum {
        SeqNum {
            shard_created_s: 1_700_000_000,
            shard_index: 3,
            counter: 42,
            arrival_s: 1_700_000_123,
        }
    }

    #[test]
    fn round_trips_and_has_the_aws_length() {
        let encoded = sample().encode();
        assert_eq!(encoded.len(), 56, "{encoded}");
        assert_eq!(SeqNum::decode(&encoded), Some(sample()));
        let big = SeqNum {
            shard_created_s: SECONDS_MAX,
            shard_index: u32::MAX,
            counter: u64::MAX,
            arrival_s: SECONDS_MAX,
        };
        assert_eq!(SeqNum::decode(&big.encode()), Some(big));
    }

    #[test]
    fn rises_with_the_counter_even_when_the_clock_goes_back() {
        let a = sample();
        let b = SeqNum {
            counter: 43,
            arrival_s: 1,
            ..a
        };
        let (ea, eb) = (a.encode(), b.encode());
        assert_eq!(ea.len(), eb.len());
        assert!(eb > ea);
    }

    #[test]
    fn rejects_what_is_not_a_sequence_number() {
        for bad in ["", "0", "12a", "1", &"9".repeat(80), &"1".repeat(56)] {
            assert_eq!(SeqNum::decode(bad), None, "{bad}");
        }
        // A wrong redundant nibble is refused.
        let hex = format!(
            "2{:09x}{:x}{:016x}00{:09x}{:08x}2",
            1u64, 5u32, 1u64, 1u64, 3u32
        );
        let mut limbs = [0u32; LIMBS];
        hex.chars().for_each(|c| {
            mul_add(&mut limbs, 16, c.to_digit(16).unwrap_or(0));
        });
        assert_eq!(SeqNum::decode(&to_decimal(limbs)), None);
    }

    #[test]
    fn the_shard_is_readable_from_the_number() {
        let other = SeqNum {
            shard_index: 4,
            ..sample()
        };
        let decoded = SeqNum::decode(&other.encode()).expect("decodes");
        assert_ne!(decoded.shard_index, sample().shard_index);
    }
}
