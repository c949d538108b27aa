//! The media payload format, version 1. All integers big-endian:
//!
//! ```text
//! magic "HYMF" | version u16 | codec u8 | reserved u8 (0) | width u32 | height u32
//! | codec_config_len u32 | codec_config bytes
//! | sample_count u32
//! | sample_count x (pts_us i64 | dts_us i64 | duration_us u32 | flags u8 | length u32)
//! | sample data, concatenated in sample order (exactly the sum of the lengths)
//! ```
//!
//! Sample flags: bit 0 = keyframe; other bits must be zero in version 1. Putting the sample
//! table before the data lets a reader check every length against the buffer before it copies
//! anything.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Codec, MediaError, MediaFragment, Sample};

/// The first four bytes of every media payload.
pub const PAYLOAD_MAGIC: [u8; 4] = *b"HYMF";
/// The layout version written by [`MediaFragment::encode`].
pub const PAYLOAD_VERSION: u16 = 1;
/// Fixed header bytes, not counting the codec config: magic, version, codec, reserved, width,
/// height, config length, sample count.
pub const PAYLOAD_HEADER_BYTES: usize = 4 + 2 + 1 + 1 + 4 + 4 + 4 + 4;
/// Bytes of one sample table entry.
pub const SAMPLE_HEADER_BYTES: usize = 8 + 8 + 4 + 1 + 4;
/// Most samples one fragment may hold: 10 s at 240 fps leaves room to spare.
pub const FRAGMENT_SAMPLES_MAX: usize = 10_000;
/// Largest codec config accepted: an avcC record with many parameter sets is a few hundred bytes.
pub const CODEC_CONFIG_BYTES_MAX: usize = 64 * 1024;

const FLAG_KEYFRAME: u8 = 0x01;

impl MediaFragment {
    /// Bytes that [`MediaFragment::encode`] will produce.
    pub fn encoded_len(&self) -> usize {
        let data: usize = self.samples.iter().map(|s| s.data.len()).sum();
        PAYLOAD_HEADER_BYTES
            + self.codec_config.len()
            + self.samples.len() * SAMPLE_HEADER_BYTES
            + data
    }

    /// Writes the media payload format. A fragment built within the limits (samples, codec
    /// config, sample sizes below 4 GiB) decodes back to itself.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        out.put_slice(&PAYLOAD_MAGIC);
        out.put_u16(PAYLOAD_VERSION);
        out.put_u8(self.codec.tag());
        out.put_u8(0);
        out.put_u32(self.width);
        out.put_u32(self.height);
        out.put_u32(len_u32(self.codec_config.len()));
        out.put_slice(&self.codec_config);
        out.put_u32(len_u32(self.samples.len()));
        for sample in &self.samples {
            out.put_i64(sample.pts_us);
            out.put_i64(sample.dts_us);
            out.put_u32(sample.duration_us);
            out.put_u8(if sample.keyframe { FLAG_KEYFRAME } else { 0 });
            out.put_u32(len_u32(sample.data.len()));
        }
        for sample in &self.samples {
            out.put_slice(&sample.data);
        }
        out.freeze()
    }

    /// Reads the media payload format, checking every count and length against the limits and
    /// the buffer before allocating.
    pub fn decode(bytes: &[u8]) -> Result<MediaFragment, MediaError> {
        let mut r = Reader::new(bytes);
        if r.take(4)? != PAYLOAD_MAGIC {
            return Err(MediaError::BadMagic);
        }
        let version = r.u16()?;
        if version != PAYLOAD_VERSION {
            return Err(MediaError::UnsupportedVersion(version));
        }
        let tag = r.u8()?;
        let codec = Codec::from_tag(tag).ok_or(MediaError::UnknownCodec(tag))?;
        // Reserved for later versions; must be zero so that decode/encode stays exact.
        let reserved = r.u8()?;
        if reserved != 0 {
            return Err(MediaError::ReservedNotZero(reserved));
        }
        let width = r.u32()?;
        let height = r.u32()?;
        let config_len = r.u32()? as usize;
        if config_len > CODEC_CONFIG_BYTES_MAX {
            return Err(MediaError::CodecConfigTooLarge { len: config_len });
        }
        let codec_config = Bytes::copy_from_slice(r.take(config_len)?);
        let headers = read_sample_headers(&mut r)?;
        let samples = attach_data(headers, r.rest())?;
        Ok(MediaFragment {
            codec,
            width,
            height,
            codec_config,
            samples,
        })
    }
}

/// Entry point for the fuzz target: decoding arbitrary bytes must never panic, and whatever
/// decodes must encode back to the same bytes.
pub fn fuzz_decode(bytes: &[u8]) {
    if let Ok(fragment) = MediaFragment::decode(bytes) {
        assert_eq!(
            fragment.encode().as_ref(),
            bytes,
            "decode then encode changed the payload"
        );
    }
}

struct SampleHeader {
    pts_us: i64,
    dts_us: i64,
    duration_us: u32,
    keyframe: bool,
    len: usize,
}

fn read_sample_headers(r: &mut Reader<'_>) -> Result<Vec<SampleHeader>, MediaError> {
    let count = r.u32()? as usize;
    if count > FRAGMENT_SAMPLES_MAX {
        return Err(MediaError::TooManySamples { count });
    }
    // Check the whole table is present before reserving room for it.
    r.ensure(count * SAMPLE_HEADER_BYTES)?;
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let pts_us = r.i64()?;
        let dts_us = r.i64()?;
        let duration_us = r.u32()?;
        let flags = r.u8()?;
        if flags & !FLAG_KEYFRAME != 0 {
            return Err(MediaError::UnknownSampleFlags(flags));
        }
        let len = r.u32()? as usize;
        let keyframe = flags & FLAG_KEYFRAME != 0;
        headers.push(SampleHeader {
            pts_us,
            dts_us,
            duration_us,
            keyframe,
            len,
        });
    }
    Ok(headers)
}

fn attach_data(headers: Vec<SampleHeader>, data: &[u8]) -> Result<Vec<Sample>, MediaError> {
    let declared: u64 = headers.iter().map(|h| h.len as u64).sum();
    if declared != data.len() as u64 {
        return Err(MediaError::DataLengthMismatch {
            declared,
            available: data.len(),
        });
    }
    // One copy of the data region; every sample is a cheap slice of it.
    let data = Bytes::copy_from_slice(data);
    let mut offset = 0;
    let samples = headers
        .into_iter()
        .map(|h| {
            let sample = Sample {
                pts_us: h.pts_us,
                dts_us: h.dts_us,
                duration_us: h.duration_us,
                keyframe: h.keyframe,
                data: data.slice(offset..offset + h.len),
            };
            offset += h.len;
            sample
        })
        .collect();
    Ok(samples)
}

/// Lengths are bounded by the limits long before 4 GiB; saturating keeps encode total, and a
/// saturated length then fails decoding with a typed error instead of wrapping silently.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// A cursor over untrusted bytes: every read checks the remaining length first.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn ensure(&self, needed: usize) -> Result<(), MediaError> {
        let available = self.bytes.len() - self.pos;
        if needed > available {
            return Err(MediaError::Truncated { needed, available });
        }
        Ok(())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], MediaError> {
        self.ensure(len)?;
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MediaError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, MediaError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, MediaError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, MediaError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, MediaError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn sample_fragment() -> MediaFragment {
        let samples = (0..5)
            .map(|i| Sample {
                pts_us: 1_700_000_000_000_000 + i * 40_000,
                dts_us: 1_700_000_000_000_000 + i * 40_000,
                duration_us: 40_000,
                keyframe: i == 0,
                data: Bytes::from(vec![i as u8; 10 + i as usize]),
            })
            .collect();
        MediaFragment {
            codec: Codec::H264,
            width: 640,
            height: 360,
            codec_config: Bytes::from_static(&[1, 0x64, 0, 0x1f, 0xff, 0xe0, 0]),
            samples,
        }
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let fragment = sample_fragment();
        let bytes = fragment.encode();
        assert_eq!(bytes.len(), fragment.encoded_len());
        assert_eq!(MediaFragment::decode(&bytes), Ok(fragment.clone()));
        assert_eq!(fragment.start_us(), 1_700_000_000_000_000);
        assert_eq!(fragment.duration_us(), 200_000);
        assert!(fragment.starts_with_keyframe());
    }

    #[test]
    fn decode_names_each_failure() {
        let good = sample_fragment().encode().to_vec();
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert_eq!(MediaFragment::decode(&bad_magic), Err(MediaError::BadMagic));
        let mut bad_version = good.clone();
        bad_version[5] = 9;
        assert_eq!(
            MediaFragment::decode(&bad_version),
            Err(MediaError::UnsupportedVersion(9))
        );
        let mut bad_codec = good.clone();
        bad_codec[6] = 7;
        assert_eq!(
            MediaFragment::decode(&bad_codec),
            Err(MediaError::UnknownCodec(7))
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            MediaFragment::decode(&trailing),
            Err(MediaError::DataLengthMismatch { .. })
        ));
        assert!(matches!(
            MediaFragment::decode(&good[..good.len() - 1]),
            Err(MediaError::DataLengthMismatch { .. })
        ));
    }

    #[test]
    fn decode_refuses_counts_beyond_the_limits() {
        let mut huge_config = sample_fragment().encode()[..20].to_vec();
        huge_config[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            MediaFragment::decode(&huge_config),
            Err(MediaError::CodecConfigTooLarge { .. })
        ));
        let mut many = sample_fragment();
        many.codec_config = Bytes::new();
        let mut bytes = many.encode()[..PAYLOAD_HEADER_BYTES].to_vec();
        let count = (FRAGMENT_SAMPLES_MAX + 1) as u32;
        bytes[20..24].copy_from_slice(&count.to_be_bytes());
        assert_eq!(
            MediaFragment::decode(&bytes),
            Err(MediaError::TooManySamples {
                count: FRAGMENT_SAMPLES_MAX + 1
            })
        );
        // A plausible count whose table is missing fails before any allocation for it.
        bytes[20..24].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            MediaFragment::decode(&bytes),
            Err(MediaError::Truncated { .. })
        ));
    }

    #[test]
    fn random_and_truncated_buffers_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let good = sample_fragment().encode().to_vec();
        for len in 0..good.len() {
            assert!(
                MediaFragment::decode(&good[..len]).is_err(),
                "prefix {len} decoded"
            );
        }
        for _ in 0..5_000 {
            let mut bytes = good.clone();
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            bytes.truncate(rng.random_range(0..=bytes.len()));
            fuzz_decode(&bytes);
        }
        for _ in 0..5_000 {
            let len = rng.random_range(0..256);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && bytes.len() >= 6 {
                bytes[..4].copy_from_slice(&PAYLOAD_MAGIC);
                bytes[4..6].copy_from_slice(&PAYLOAD_VERSION.to_be_bytes());
            }
            fuzz_decode(&bytes);
        }
    }
}
