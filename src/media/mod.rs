//! The media payload format and muxing: the only place (with `capture` and `detect`) that knows
//! codecs.
//!
//! Owns:
//! - [`MediaFragment`]: one group of pictures as the codec configuration (an H.264
//!   AVCDecoderConfigurationRecord) plus samples with timestamps, durations and keyframe flags,
//!   and its versioned binary layout ([`MediaFragment::encode`], [`MediaFragment::decode`]);
//! - H.264 helpers in [`h264`]: the avcC record, SPS dimensions, Annex-B to AVC conversion;
//! - [`mp4::write_mp4`]: a standard progressive MP4 from stored fragments;
//! - [`fmp4`]: fragmented MP4 init and media segments for HLS.
//!
//! May import only `crate::fragment` (and nothing at all today). Decoding reads outside input
//! (the payload comes off the network and off disk), so it is bounded by named limits and turns
//! every malformed input into a typed [`MediaError`], never a panic.

pub mod fmp4;
pub mod h264;
pub mod matroska_parse;
pub mod matroska_write;
pub mod mp4;
mod payload;

use bytes::Bytes;

pub use payload::{
    CODEC_CONFIG_BYTES_MAX, FRAGMENT_SAMPLES_MAX, PAYLOAD_HEADER_BYTES, PAYLOAD_MAGIC,
    PAYLOAD_VERSION, SAMPLE_HEADER_BYTES, fuzz_decode,
};

/// Video codecs the payload format can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// H.264 / AVC; samples are AVC access units, the codec config is an avcC record.
    H264,
}

impl Codec {
    /// The tag written in the payload header.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Codec::H264 => 1,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Codec::H264),
            _ => None,
        }
    }
}

/// One access unit with its timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Presentation time, microseconds since the Unix epoch (producer clock).
    pub pts_us: i64,
    /// Decoding time, microseconds since the Unix epoch (producer clock).
    pub dts_us: i64,
    pub duration_us: u32,
    /// A sync sample (IDR): decoding can start here.
    pub keyframe: bool,
    /// One access unit in AVC format: NAL units each prefixed by a 4-byte big-endian length.
    pub data: Bytes,
}

/// A group of pictures with the codec configuration needed to decode it.
///
/// The first sample is normally a keyframe. A fragment whose first sample is not a keyframe
/// continues the previous one after a forced cut (the capture's duration or byte cap); a reader
/// can only decode it together with its predecessor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaFragment {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    /// AVCDecoderConfigurationRecord (avcC) holding the SPS and PPS.
    pub codec_config: Bytes,
    pub samples: Vec<Sample>,
}

impl MediaFragment {
    /// Presentation time of the earliest sample, microseconds since the Unix epoch; 0 when empty.
    pub fn start_us(&self) -> i64 {
        self.samples.iter().map(|s| s.pts_us).min().unwrap_or(0)
    }

    /// Sum of the sample durations, microseconds.
    pub fn duration_us(&self) -> u64 {
        self.samples.iter().map(|s| u64::from(s.duration_us)).sum()
    }

    /// Whether decoding can start at this fragment (its first sample is a keyframe).
    pub fn starts_with_keyframe(&self) -> bool {
        self.samples.first().is_some_and(|s| s.keyframe)
    }
}

/// Why media could not be decoded or muxed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("payload is truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("payload does not start with the media magic")]
    BadMagic,
    #[error("payload version {0} is not supported")]
    UnsupportedVersion(u16),
    #[error("codec tag {0} is unknown")]
    UnknownCodec(u8),
    #[error("reserved header byte is {0:#04x}, not zero")]
    ReservedNotZero(u8),
    #[error("codec config is {len} bytes; the limit is {CODEC_CONFIG_BYTES_MAX}")]
    CodecConfigTooLarge { len: usize },
    #[error("fragment has {count} samples; the limit is {FRAGMENT_SAMPLES_MAX}")]
    TooManySamples { count: usize },
    #[error("sample lengths add up to {declared} bytes but {available} bytes of data follow")]
    DataLengthMismatch { declared: u64, available: usize },
    #[error("sample flags {0:#04x} carry unknown bits")]
    UnknownSampleFlags(u8),
    #[error("codec config (avcC) is malformed: {0}")]
    BadCodecConfig(&'static str),
    #[error("sequence parameter set is malformed: {0}")]
    BadSps(&'static str),
    #[error("no fragments or no samples to mux")]
    Empty,
    #[error("fragments carry different codec configurations; muxing them needs one")]
    CodecConfigMismatch,
    #[error("decoding timestamps go backwards, or jump by more than 13 hours, at sample {index}")]
    NonMonotonicTimestamps { index: usize },
    #[error("picture size {width}x{height} does not fit an MP4 sample entry")]
    DimensionsTooLarge { width: u32, height: u32 },
}
