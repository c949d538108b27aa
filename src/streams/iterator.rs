//! Shard iterators: opaque tokens that say where the next GetRecords starts.
//!
//! A token is base64 of the AWS header `00 00 00 00 00 00 00 01`, a payload (stream name,
//! stream creation time, shard index, next counter, issue time) and an HMAC-SHA256 of header
//! and payload under the server's key. The server keeps no iterator state; a token is trusted
//! only if its MAC verifies, and it expires `ITERATOR_TTL_MS` after issue. Time is an argument.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::fragment::UnixMillis;

/// How long an iterator stays valid after it is issued.
pub const ITERATOR_TTL_MS: u64 = 5 * 60 * 1000;
/// Longest iterator accepted, in characters (the model's limit).
pub const ITERATOR_CHARS_MAX: usize = 512;
const HEADER: [u8; 8] = [0, 0, 0, 0, 0, 0, 0, 1];
const MAC_BYTES: usize = 32;
/// Length of the secret key in bytes.
pub const KEY_BYTES: usize = 32;

/// Where an iterator points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub stream: String,
    pub stream_created_ms: u64,
    pub shard_index: u32,
    /// The counter of the next record to return.
    pub next_counter: u64,
    pub issued_ms: u64,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    Expired { issued_ms: u64 },
}

/// Issues and checks tokens under one key.
#[derive(Clone)]
pub struct IteratorKey([u8; KEY_BYTES]);

impl std::fmt::Debug for IteratorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IteratorKey(..)")
    }
}

impl IteratorKey {
    pub fn new(key: [u8; KEY_BYTES]) -> Self {
        Self(key)
    }

    fn mac(&self, bytes: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(bytes);
        mac
    }

    pub fn issue(&self, position: &Position) -> String {
        let mut bytes = HEADER.to_vec();
        let name = position.stream.as_bytes();
        bytes.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        bytes.extend_from_slice(&name[..name.len().min(usize::from(u8::MAX))]);
        bytes.extend_from_slice(&position.stream_created_ms.to_be_bytes());
        bytes.extend_from_slice(&position.shard_index.to_be_bytes());
        bytes.extend_from_slice(&position.next_counter.to_be_bytes());
        bytes.extend_from_slice(&position.issued_ms.to_be_bytes());
        let tag = self.mac(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag);
        STANDARD.encode(bytes)
    }

    /// Checks a token (surrounding double quotes allowed, as AWS does) at time `now`.
    pub fn check(&self, token: &str, now: UnixMillis) -> Result<Position, TokenError> {
        let token = token.trim_matches('"');
        if token.len() > ITERATOR_CHARS_MAX {
            return Err(TokenError::Malformed);
        }
        let bytes = STANDARD.decode(token).map_err(|_| TokenError::Malformed)?;
        let body_len = bytes
            .len()
            .checked_sub(MAC_BYTES)
            .ok_or(TokenError::Malformed)?;
        let (body, tag) = bytes.split_at(body_len);
        self.mac(body)
            .verify_slice(tag)
            .map_err(|_| TokenError::Malformed)?;
        let position = parse_body(body).ok_or(TokenError::Malformed)?;
        if now.0.saturating_sub(position.issued_ms) > ITERATOR_TTL_MS {
            return Err(TokenError::Expired {
                issued_ms: position.issued_ms,
            });
        }
        Ok(position)
    }
}

fn parse_body(body: &[u8]) -> Option<Position> {
    let rest = body.strip_prefix(&HEADER)?;
    let (&name_len, rest) = rest.split_first()?;
    let (name, rest) = rest.split_at_checked(usize::from(name_len))?;
    let (created, rest) = rest.split_first_chunk::<8>()?;
    let (shard, rest) = rest.split_first_chunk::<4>()?;
    let (next, rest) = rest.split_first_chunk::<8>()?;
    let (issued, rest) = rest.split_first_chunk::<8>()?;
    if !rest.is_empty() {
        return None;
    }
    Some(Position {
        stream: String::from_utf8(name.to_vec()).ok()?,
        stream_created_ms: u64::from_be_bytes(*created),
        shard_index: u32::from_be_bytes(*shard),
        next_counter: u64::from_be_bytes(*next),
        issued_ms: u64::from_be_bytes(*issued),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position() -> Position {
        Position {
            stream: "orders".into(),
            stream_created_ms: 1_000,
            shard_index: 1,
            next_counter: 77,
            issued_ms: 10_000,
        }
    }

    #[test]
    fn round_trips_within_the_ttl_and_in_quotes() {
        let key = IteratorKey::new([7; KEY_BYTES]);
        let token = key.issue(&position());
        assert!(token.len() <= ITERATOR_CHARS_MAX);
        assert_eq!(key.check(&token, UnixMillis(10_000)), Ok(position()));
        let quoted = format!("\"{token}\"");
        assert_eq!(
            key.check(&quoted, UnixMillis(10_000 + ITERATOR_TTL_MS)),
            Ok(position())
        );
    }

    #[test]
    fn expires_after_five_minutes() {
        let key = IteratorKey::new([7; KEY_BYTES]);
        let token = key.issue(&position());
        assert_eq!(
            key.check(&token, UnixMillis(10_001 + ITERATOR_TTL_MS)),
            Err(TokenError::Expired { issued_ms: 10_000 })
        );
    }

    #[test]
    fn tampering_and_foreign_keys_are_refused() {
        let key = IteratorKey::new([7; KEY_BYTES]);
        let token = key.issue(&position());
        let mut bytes = STANDARD.decode(&token).expect("base64");
        // Move the position forward by one record: the MAC no longer matches.
        let counter_at = 8 + 1 + 6 + 8 + 4 + 7;
        bytes[counter_at] ^= 1;
        let tampered = STANDARD.encode(&bytes);
        assert_eq!(
            key.check(&tampered, UnixMillis(10_000)),
            Err(TokenError::Malformed)
        );
        let other = IteratorKey::new([8; KEY_BYTES]);
        assert_eq!(
            other.check(&token, UnixMillis(10_000)),
            Err(TokenError::Malformed)
        );
        for junk in ["", "AAAA", "not base64!", &"A".repeat(600)] {
            assert_eq!(
                key.check(junk, UnixMillis(10_000)),
                Err(TokenError::Malformed)
            );
        }
    }
}
