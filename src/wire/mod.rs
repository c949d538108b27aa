//! The agent-server protocol as a sans-IO core, in the style of quinn-proto: no sockets, no
//! clock, no async. Shells feed it with `handle_*` calls (time passed in as [`std::time::Instant`]) and
//! take its actions out with `poll_*`.
//!
//! Owns: the message types and their binary encoding ([`codec`]), the agent core [`Uplink`]
//! (keeps every fragment until the server says it is persisted, in-flight window, ack
//! timeouts, reconnect backoff with full jitter, resume), and the server core per connection
//! [`IngestSession`] (hello validation, fragment admission and limits).
//!
//! May import: `crate::fragment` only.
//!
//! Backpressure: [`Uplink::push`] returns [`UplinkError::Full`] once `pending_fragments_max` or
//! `pending_bytes_max` is reached; the caller holds the fragment and retries after events free
//! room. The control stream decoder [`FrameDecoder`] holds at most one largest frame.
//!
//! Wire shape: a connection carries one bidirectional control stream, opened by the agent,
//! with length-prefixed frames (`u32` BE length, `u8` type, fields). Every fragment travels on
//! its own unidirectional stream: one header frame, then exactly `payload_len` payload bytes.

use crate::fragment::{FragmentId, StreamName, StreamNameError, UnixMillis};

pub mod codec;
mod fuzz;
mod ingest;
pub mod priority;
mod uplink;

#[cfg(test)]
mod sim_tests;

pub use codec::{
    CONTROL_FRAME_BYTES_MAX, FRAGMENT_HEADER_BYTES_MAX, FRAME_PREFIX_BYTES, FrameDecoder,
    decode_client_body, decode_fragment_header, decode_fragment_header_body, decode_server_body,
    encode_client, encode_fragment_header, encode_server, frame_body_len,
};
pub use fuzz::fuzz_decode;
pub use ingest::{IngestLimits, IngestSession};
pub use priority::{Priority, TokenBucket};
pub use uplink::{Uplink, UplinkConfig, UplinkError, UplinkEvent};

/// ALPN protocol name spoken by both sides.
pub const ALPN: &[u8] = b"hydrant/1";

/// Protocol version carried in `Hello`.
pub const PROTOCOL_VERSION: u16 = 1;

/// A stream the agent wants to write to, with its producer session epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOpen {
    pub stream: StreamName,
    pub epoch: u64,
}

/// Where the agent resumes a stream: every sequence below `next_sequence` is persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamResume {
    pub stream: StreamName,
    pub epoch: u64,
    pub next_sequence: u64,
}

/// Messages from the agent on the control stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Hello {
        version: u16,
        agent: String,
        streams: Vec<StreamOpen>,
    },
}

/// Messages from the server on the control stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    Welcome {
        resumes: Vec<StreamResume>,
    },
    StreamRefused {
        stream: StreamName,
        code: ErrorCode,
        message: String,
    },
    /// `fragment_number` is set on `Persisted`.
    Ack {
        id: FragmentId,
        kind: AckKind,
        fragment_number: Option<String>,
    },
    Error {
        id: Option<FragmentId>,
        code: ErrorCode,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckKind {
    /// The server has the whole payload and its checksum matched.
    Received,
    /// The fragment is durable (fsynced) on the server.
    Persisted,
}

/// Error codes, a `u16` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    MalformedFrame,
    UnsupportedVersion,
    UnknownStream,
    NotAuthorized,
    FragmentTooLarge,
    FragmentTooLong,
    ChecksumMismatch,
    BadStreamName,
    ProtocolViolation,
    StorageFailure,
    LimitExceeded,
    ShuttingDown,
}

impl ErrorCode {
    const ALL: [ErrorCode; 12] = [
        Self::MalformedFrame,
        Self::UnsupportedVersion,
        Self::UnknownStream,
        Self::NotAuthorized,
        Self::FragmentTooLarge,
        Self::FragmentTooLong,
        Self::ChecksumMismatch,
        Self::BadStreamName,
        Self::ProtocolViolation,
        Self::StorageFailure,
        Self::LimitExceeded,
        Self::ShuttingDown,
    ];

    pub fn as_u16(self) -> u16 {
        match self {
            Self::MalformedFrame => 1,
            Self::UnsupportedVersion => 2,
            Self::UnknownStream => 3,
            Self::NotAuthorized => 4,
            Self::FragmentTooLarge => 5,
            Self::FragmentTooLong => 6,
            Self::ChecksumMismatch => 7,
            Self::BadStreamName => 8,
            Self::ProtocolViolation => 9,
            Self::StorageFailure => 10,
            Self::LimitExceeded => 11,
            Self::ShuttingDown => 12,
        }
    }

    pub fn from_u16(code: u16) -> Result<Self, WireError> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_u16() == code)
            .ok_or(WireError::UnknownErrorCode(code))
    }

    /// A permanent error will come back on every resend, so the fragment is refused; a
    /// transient one (storage trouble, limits, shutdown, corruption in transit) is retried.
    pub fn is_permanent(self) -> bool {
        match self {
            Self::MalformedFrame
            | Self::UnsupportedVersion
            | Self::UnknownStream
            | Self::NotAuthorized
            | Self::FragmentTooLarge
            | Self::FragmentTooLong
            | Self::BadStreamName
            | Self::ProtocolViolation => true,
            Self::ChecksumMismatch
            | Self::StorageFailure
            | Self::LimitExceeded
            | Self::ShuttingDown => false,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// The frame that opens a fragment stream; exactly `payload_len` payload bytes follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FragmentHeader {
    pub id: FragmentId,
    pub producer_timestamp: UnixMillis,
    pub duration_ms: u32,
    pub payload_len: u32,
    /// CRC-32C of the payload.
    pub checksum: u32,
}

impl FragmentHeader {
    /// The header that announces `fragment`; `None` when its payload exceeds `u32` bytes.
    pub fn for_fragment(fragment: &crate::fragment::Fragment) -> Option<Self> {
        Some(Self {
            id: fragment.meta.id.clone(),
            producer_timestamp: fragment.meta.producer_timestamp,
            duration_ms: fragment.meta.duration_ms,
            payload_len: u32::try_from(fragment.payload.len()).ok()?,
            checksum: fragment.checksum(),
        })
    }
}

/// Everything that goes wrong in the protocol: undecodable input and refusals by the cores.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unknown message type {0:#04x}")]
    UnknownMessageType(u8),
    #[error("frame is truncated")]
    Truncated,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("decoder buffer would exceed {max} bytes")]
    BufferFull { max: usize },
    #[error("string is not valid UTF-8")]
    BadUtf8,
    #[error("bad stream name: {0}")]
    BadStreamName(StreamNameError),
    #[error("{0} bytes left after the end of the message")]
    TrailingBytes(usize),
    #[error("unknown error code {0}")]
    UnknownErrorCode(u16),
    #[error("unknown ack kind {0}")]
    BadAckKind(u8),
    #[error("bad presence flag {0}")]
    BadFlag(u8),
    #[error("refused with {code}: {message}")]
    Rejected { code: ErrorCode, message: String },
}

impl WireError {
    /// A refusal with a code for the peer.
    pub fn rejected(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Rejected {
            code,
            message: message.into(),
        }
    }

    /// The code to send back to the peer for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadStreamName(_) => ErrorCode::BadStreamName,
            Self::Rejected { code, .. } => *code,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

/// Deterministic pseudo-random numbers (SplitMix64) for backoff jitter: the core reads no
/// entropy, so a seed makes every run reproducible.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max` (modulo bias is irrelevant for jitter).
    pub(crate) fn below_or_eq(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            self.next_u64()
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

#[cfg(test)]
mod codec_tests;
