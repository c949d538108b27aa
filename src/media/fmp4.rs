//! Fragmented MP4 (ISO BMFF with movie fragments) for HLS: one init segment (`ftyp` + `moov`
//! with an empty sample table and `mvex`/`trex`) and one media segment per stored fragment
//! (`moof` with `mfhd`, `traf` = `tfhd` + `tfdt` + `trun`, then `mdat`).
//!
//! Shares the box writer, timing and sample-entry code with [`super::mp4`], so a clip and an HLS
//! stream describe the same track the same way: one H.264 track, id 1, 90 kHz. The media
//! segment's `tfdt` is the first sample's decoding time on the producer clock in track ticks, so
//! consecutive segments line up on one timeline and a gap stays a gap.

use super::mp4::{self, BoxWriter};
use super::{MediaError, MediaFragment, Sample};

/// The only track's id, in the init segment and in every media segment.
const TRACK_ID: u32 = 1;
/// `trun` flags: data offset, then per-sample duration, size, flags, composition time offset.
const TRUN_FLAGS: u32 = 0x000001 | 0x000100 | 0x000200 | 0x000400 | 0x000800;
/// `tfhd` flag: sample data offsets count from the start of the `moof`.
const TFHD_DEFAULT_BASE_IS_MOOF: u32 = 0x020000;
/// Sample flags of a sync sample: depends on no other sample (sample_depends_on = 2).
const SAMPLE_FLAGS_SYNC: u32 = 0x0200_0000;
/// Sample flags of any other sample: depends on others, and is not a sync sample.
const SAMPLE_FLAGS_NON_SYNC: u32 = 0x0101_0000;

/// The init segment for fragments carrying `fragment`'s codec configuration.
pub fn init_segment(fragment: &MediaFragment) -> Result<Vec<u8>, MediaError> {
    let size = mp4::dimensions(fragment)?;
    let mut w = BoxWriter::new();
    w.open(b"ftyp");
    w.bytes(b"iso6");
    w.u32(0);
    for brand in [b"iso6", b"iso5", b"cmfc", b"avc1", b"mp41"] {
        w.bytes(brand);
    }
    w.close();
    w.open(b"moov");
    mp4::mvhd(&mut w, 0);
    w.open(b"trak");
    mp4::tkhd(&mut w, size, 0);
    w.open(b"mdia");
    mp4::mdhd_and_hdlr(&mut w, 0);
    w.open(b"minf");
    mp4::vmhd_and_dinf(&mut w);
    empty_stbl(&mut w, size, &fragment.codec_config);
    w.close(); // minf
    w.close(); // mdia
    w.close(); // trak
    mvex(&mut w);
    w.close(); // moov
    Ok(w.buf)
}

/// One media segment (`moof` + `mdat`) holding every sample of `fragment`; `sequence` is the
/// `mfhd` sequence number, which must rise from one segment to the next.
pub fn media_segment(fragment: &MediaFragment, sequence: u32) -> Result<Vec<u8>, MediaError> {
    let first = fragment.samples.first().ok_or(MediaError::Empty)?;
    let samples: Vec<&Sample> = fragment.samples.iter().collect();
    let (deltas, offsets) = mp4::timing(&samples)?;
    let base_decode_ticks = u64::try_from(mp4::ticks(first.dts_us))
        .map_err(|_| MediaError::NonMonotonicTimestamps { index: 0 })?;
    let data_bytes: usize = fragment.samples.iter().map(|s| s.data.len()).sum();
    let data_len = u32::try_from(data_bytes + 8).map_err(|_| MediaError::TooManySamples {
        count: samples.len(),
    })?;
    let mut w = BoxWriter::new();
    w.open(b"moof");
    w.open_full(b"mfhd", 0, 0);
    w.u32(sequence);
    w.close();
    w.open(b"traf");
    w.open_full(b"tfhd", 0, TFHD_DEFAULT_BASE_IS_MOOF);
    w.u32(TRACK_ID);
    w.close();
    w.open_full(b"tfdt", 1, 0);
    w.u64(base_decode_ticks);
    w.close();
    let data_offset_at = trun(&mut w, &samples, &deltas, &offsets);
    w.close(); // traf
    w.close(); // moof
    // The data begins right after the mdat header that follows the moof.
    let data_offset = (w.buf.len() + 8) as u32;
    w.buf[data_offset_at..data_offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
    w.u32(data_len);
    w.bytes(b"mdat");
    for sample in &fragment.samples {
        w.bytes(&sample.data);
    }
    Ok(w.buf)
}

/// Writes the `trun` box; returns where its data offset field sits, to be patched once the
/// `moof`'s length is known.
fn trun(w: &mut BoxWriter, samples: &[&Sample], deltas: &[u32], offsets: &[i64]) -> usize {
    // Version 1: composition offsets are signed, which B-frames before their reference need.
    w.open_full(b"trun", 1, TRUN_FLAGS);
    w.u32(samples.len() as u32);
    let data_offset_at = w.buf.len();
    w.u32(0);
    for ((sample, delta), offset) in samples.iter().zip(deltas).zip(offsets) {
        w.u32(*delta);
        w.u32(u32::try_from(sample.data.len()).unwrap_or(u32::MAX));
        w.u32(if sample.keyframe {
            SAMPLE_FLAGS_SYNC
        } else {
            SAMPLE_FLAGS_NON_SYNC
        });
        let offset = (*offset).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        w.bytes(&offset.to_be_bytes());
    }
    w.close();
    data_offset_at
}

/// A sample table with the sample description only: every sample lives in movie fragments.
fn empty_stbl(w: &mut BoxWriter, size: (u16, u16), codec_config: &[u8]) {
    w.open(b"stbl");
    mp4::stsd(w, size, codec_config);
    for fourcc in [b"stts", b"stsc", b"stco"] {
        w.open_full(fourcc, 0, 0);
        w.u32(0);
        w.close();
    }
    w.open_full(b"stsz", 0, 0);
    w.u32(0);
    w.u32(0);
    w.close();
    w.close();
}

fn mvex(w: &mut BoxWriter) {
    w.open(b"mvex");
    w.open_full(b"trex", 0, 0);
    w.u32(TRACK_ID);
    w.u32(1); // sample description index
    w.u32(0); // default duration
    w.u32(0); // default size
    w.u32(0); // default flags
    w.close();
    w.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Codec;
    use bytes::Bytes;

    fn fragment(start_us: i64, frames: i64) -> MediaFragment {
        let samples = (0..frames)
            .map(|i| Sample {
                pts_us: start_us + i * 40_000 + if i == 1 { 80_000 } else { 0 },
                dts_us: start_us + i * 40_000,
                duration_us: 40_000,
                keyframe: i == 0,
                data: Bytes::from(vec![0, 0, 0, 1, i as u8]),
            })
            .collect();
        MediaFragment {
            codec: Codec::H264,
            width: 640,
            height: 360,
            codec_config: Bytes::from_static(b"cfg"),
            samples,
        }
    }

    /// Top-level boxes as (type, start, length).
    fn boxes(data: &[u8]) -> Vec<([u8; 4], usize, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 8 <= data.len() {
            let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            out.push((data[at + 4..at + 8].try_into().unwrap(), at, len));
            at += len;
        }
        assert_eq!(at, data.len(), "boxes tile the buffer");
        out
    }

    fn find(data: &[u8], fourcc: &[u8; 4]) -> usize {
        data.windows(4)
            .position(|w| w == fourcc)
            .expect("box present")
            - 4
    }

    fn be32(data: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(data[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn init_segment_is_ftyp_then_moov_with_mvex() {
        let init = init_segment(&fragment(0, 3)).unwrap();
        let top: Vec<[u8; 4]> = boxes(&init).iter().map(|b| b.0).collect();
        assert_eq!(top, [*b"ftyp", *b"moov"]);
        for fourcc in [b"avc1", b"avcC", b"mvex", b"trex", b"stts", b"stsz"] {
            find(&init, fourcc);
        }
        assert!(find(&init, b"trak") < find(&init, b"mvex"));
    }

    #[test]
    fn media_segment_points_trun_at_the_samples() {
        let f = fragment(1_000_000, 3);
        let seg = media_segment(&f, 7).unwrap();
        let top = boxes(&seg);
        assert_eq!(
            top.iter().map(|b| b.0).collect::<Vec<_>>(),
            [*b"moof", *b"mdat"]
        );
        let (_, moof_at, _) = top[0];
        let (_, mdat_at, mdat_len) = top[1];
        assert_eq!(mdat_len, 8 + 15);
        assert_eq!(be32(&seg, find(&seg, b"mfhd") + 12), 7);
        let tfdt = find(&seg, b"tfdt");
        assert_eq!(seg[tfdt + 8], 1, "version 1: 64-bit decode time");
        let base = u64::from_be_bytes(seg[tfdt + 12..tfdt + 20].try_into().unwrap());
        assert_eq!(base, 90_000);
        let trun = find(&seg, b"trun");
        assert_eq!(be32(&seg, trun + 8), (1 << 24) | TRUN_FLAGS);
        assert_eq!(be32(&seg, trun + 12), 3);
        let data_offset = be32(&seg, trun + 16) as usize;
        assert_eq!(moof_at + data_offset, mdat_at + 8);
        // First sample: 40 ms = 3600 ticks, 5 bytes, sync, offset 0; second has a +80 ms offset.
        assert_eq!(be32(&seg, trun + 20), 3600);
        assert_eq!(be32(&seg, trun + 24), 5);
        assert_eq!(be32(&seg, trun + 28), SAMPLE_FLAGS_SYNC);
        assert_eq!(be32(&seg, trun + 32), 0);
        assert_eq!(be32(&seg, trun + 44), SAMPLE_FLAGS_NON_SYNC);
        assert_eq!(be32(&seg, trun + 48), 7200);
        assert_eq!(&seg[mdat_at + 8..mdat_at + 13], &[0, 0, 0, 1, 0]);
    }

    #[test]
    fn empty_fragments_are_refused() {
        let mut f = fragment(0, 1);
        f.samples.clear();
        assert_eq!(media_segment(&f, 1), Err(MediaError::Empty));
    }
}
