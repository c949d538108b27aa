//! Matroska (EBML) output of stored fragments, in the chunk layout Kinesis Video's GetMedia and
//! GetMediaForFragmentList return.
//!
//! One chunk per fragment:
//!
//! ```text
//! EBML header (DocType "matroska")
//! Segment (unknown size)
//!   Info (TimecodeScale 1,000,000: timecodes in milliseconds)
//!   Tracks (one H.264 video track: V_MPEG4/ISO/AVC, CodecPrivate = avcC, pixel size)
//!   Tags (the fragment's tags: number, server and producer timestamps)
//!   Cluster+ (Timecode = presentation time in ms, SimpleBlocks with i16 relative timecodes)
//!   Tags (trailing tags, GetMedia only: millis behind now, continuation token)
//! ```
//!
//! The Segment has unknown size because a chunk is written before the next one is known; the
//! next chunk's EBML header (a top-level element) ends it for a reader. GetMedia sends such
//! chunks back to back, as Kinesis Video does (readers such as `mkvinfo` warn and resync at each
//! new header). [`FragmentListWriter`] instead writes one continuous stream for
//! GetMediaForFragmentList: one header, then Tags and Clusters per fragment, and a new header
//! only when the track changes (another avcC or picture size), so ordinary readers see one
//! clean file. Clusters have known sizes. A fragment normally fits one cluster (a fragment lasts at most about 10 s and a block's
//! relative timecode reaches ±32.767 s); a sample out of that reach opens a new cluster.
//! SimpleBlocks are written in decoding order with presentation timestamps, as Matroska wants.

use super::{MediaFragment, Sample};

/// Element ids, with their length marker bits, as the Matroska specification lists them.
pub mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const EBML_VERSION: u32 = 0x4286;
    pub const EBML_READ_VERSION: u32 = 0x42F7;
    pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
    pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const DOC_TYPE_VERSION: u32 = 0x4287;
    pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;
    pub const SEGMENT: u32 = 0x1853_8067;
    pub const INFO: u32 = 0x1549_A966;
    pub const TIMECODE_SCALE: u32 = 0x2A_D7B1;
    pub const MUXING_APP: u32 = 0x4D80;
    pub const WRITING_APP: u32 = 0x5741;
    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_UID: u32 = 0x73C5;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const FLAG_LACING: u32 = 0x9C;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const VIDEO: u32 = 0xE0;
    pub const PIXEL_WIDTH: u32 = 0xB0;
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    pub const TAGS: u32 = 0x1254_C367;
    pub const TAG: u32 = 0x7373;
    pub const TARGETS: u32 = 0x63C0;
    pub const SIMPLE_TAG: u32 = 0x67C8;
    pub const TAG_NAME: u32 = 0x45A3;
    pub const TAG_STRING: u32 = 0x4487;
    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const TIMECODE: u32 = 0xE7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;
}

/// The size field that marks an element of unknown size (all value bits set, 8 bytes).
pub const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
/// Nanoseconds per timecode tick: 1,000,000 makes every timecode a millisecond count.
pub const TIMECODE_SCALE_NS: u64 = 1_000_000;
/// Matroska's codec id of H.264 in AVC (length-prefixed) form with an avcC CodecPrivate.
pub const CODEC_ID_AVC: &str = "V_MPEG4/ISO/AVC";
/// The only track's number.
const TRACK_NUMBER: u64 = 1;
/// Largest value a size field can carry (8 bytes, all-ones reserved for unknown size).
const SIZE_VALUE_MAX: u64 = (1 << 56) - 2;
/// SimpleBlock flag of a keyframe.
const BLOCK_FLAG_KEYFRAME: u8 = 0x80;
const APP_NAME: &str = concat!("hydrant ", env!("CARGO_PKG_VERSION"));

/// Tag names of the fragment tags. GetMedia and GetMediaForFragmentList name the two timestamps
/// differently (their botocore documentation lists both spellings).
pub const TAG_FRAGMENT_NUMBER: &str = "AWS_KINESISVIDEO_FRAGMENT_NUMBER";
pub const TAG_SERVER_TIMESTAMP: &str = "AWS_KINESISVIDEO_SERVER_TIMESTAMP";
pub const TAG_PRODUCER_TIMESTAMP: &str = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP";
pub const TAG_SERVER_SIDE_TIMESTAMP: &str = "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP";
pub const TAG_PRODUCER_SIDE_TIMESTAMP: &str = "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP";
pub const TAG_MILLIS_BEHIND_NOW: &str = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW";
pub const TAG_CONTINUATION_TOKEN: &str = "AWS_KINESISVIDEO_CONTINUATION_TOKEN";
pub const TAG_ERROR_CODE: &str = "AWS_KINESISVIDEO_ERROR_CODE";
pub const TAG_ERROR_ID: &str = "AWS_KINESISVIDEO_ERROR_ID";
pub const TAG_EXCEPTION_ERROR_CODE: &str = "AWS_KINESISVIDEO_EXCEPTION_ERROR_CODE";
pub const TAG_EXCEPTION_MESSAGE: &str = "AWS_KINESISVIDEO_EXCEPTION_MESSAGE";

/// Why a fragment cannot be written as Matroska.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatroskaWriteError {
    #[error("sample {index} has a negative presentation time; cluster timecodes are unsigned")]
    NegativeTimestamp { index: usize },
    #[error("an element of {bytes} bytes is beyond the largest EBML size")]
    ElementTooLarge { bytes: u64 },
}

/// A tag name and its string value.
pub type SimpleTag<'a> = (&'a str, String);

/// `seconds.millis` with three digits of milliseconds, as Kinesis Video writes timestamps in tags.
pub fn tag_timestamp(unix_ms: u64) -> String {
    format!("{}.{:03}", unix_ms / 1000, unix_ms % 1000)
}

/// One whole chunk: header, `tags`, the fragment's clusters, then `trailing_tags` when any.
pub fn write_chunk(
    fragment: &MediaFragment,
    tags: &[SimpleTag<'_>],
    trailing_tags: &[SimpleTag<'_>],
) -> Result<Vec<u8>, MatroskaWriteError> {
    let data_bytes: usize = fragment.samples.iter().map(|s| s.data.len()).sum();
    let mut out = Vec::with_capacity(data_bytes + fragment.samples.len() * 16 + 1024);
    write_header(&mut out, fragment);
    write_tags(&mut out, tags);
    write_clusters(&mut out, fragment)?;
    if !trailing_tags.is_empty() {
        write_tags(&mut out, trailing_tags);
    }
    Ok(out)
}

/// Writes fragments as one continuous Matroska stream: a header before the first fragment and
/// again whenever the track changes, then each fragment's Tags and Clusters.
#[derive(Debug, Default)]
pub struct FragmentListWriter {
    /// The track the last header described: codec config, width, height.
    track: Option<(bytes::Bytes, u32, u32)>,
}

impl FragmentListWriter {
    /// The bytes for one fragment, preceded by a header when one is due.
    pub fn write_fragment(
        &mut self,
        fragment: &MediaFragment,
        tags: &[SimpleTag<'_>],
    ) -> Result<Vec<u8>, MatroskaWriteError> {
        let data_bytes: usize = fragment.samples.iter().map(|s| s.data.len()).sum();
        let mut out = Vec::with_capacity(data_bytes + fragment.samples.len() * 16 + 1024);
        let track = (
            fragment.codec_config.clone(),
            fragment.width,
            fragment.height,
        );
        if self.track.as_ref() != Some(&track) {
            write_header(&mut out, fragment);
            self.track = Some(track);
        }
        write_tags(&mut out, tags);
        write_clusters(&mut out, fragment)?;
        Ok(out)
    }
}

/// A chunk with no media: EBML header, Segment, and tags only (GetMedia's error report).
pub fn write_tags_chunk(tags: &[SimpleTag<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    write_ebml_header(&mut out);
    write_id(&mut out, id::SEGMENT);
    out.extend_from_slice(&UNKNOWN_SIZE);
    write_info(&mut out);
    write_tags(&mut out, tags);
    out
}

/// EBML header, Segment of unknown size, Info and Tracks for this fragment's track.
pub fn write_header(out: &mut Vec<u8>, fragment: &MediaFragment) {
    write_ebml_header(out);
    write_id(out, id::SEGMENT);
    out.extend_from_slice(&UNKNOWN_SIZE);
    write_info(out);
    write_tracks(out, fragment);
}

fn write_ebml_header(out: &mut Vec<u8>) {
    let mut body = Vec::new();
    write_uint(&mut body, id::EBML_VERSION, 1);
    write_uint(&mut body, id::EBML_READ_VERSION, 1);
    write_uint(&mut body, id::EBML_MAX_ID_LENGTH, 4);
    write_uint(&mut body, id::EBML_MAX_SIZE_LENGTH, 8);
    write_bytes(&mut body, id::DOC_TYPE, b"matroska");
    // Version 2 introduced SimpleBlock.
    write_uint(&mut body, id::DOC_TYPE_VERSION, 2);
    write_uint(&mut body, id::DOC_TYPE_READ_VERSION, 2);
    write_bytes(out, id::EBML, &body);
}

fn write_info(out: &mut Vec<u8>) {
    let mut body = Vec::new();
    write_uint(&mut body, id::TIMECODE_SCALE, TIMECODE_SCALE_NS);
    write_bytes(&mut body, id::MUXING_APP, APP_NAME.as_bytes());
    write_bytes(&mut body, id::WRITING_APP, APP_NAME.as_bytes());
    write_bytes(out, id::INFO, &body);
}

fn write_tracks(out: &mut Vec<u8>, fragment: &MediaFragment) {
    let mut video = Vec::new();
    write_uint(&mut video, id::PIXEL_WIDTH, u64::from(fragment.width));
    write_uint(&mut video, id::PIXEL_HEIGHT, u64::from(fragment.height));
    let mut entry = Vec::new();
    write_uint(&mut entry, id::TRACK_NUMBER, TRACK_NUMBER);
    write_uint(&mut entry, id::TRACK_UID, TRACK_NUMBER);
    // Track type 1 is video.
    write_uint(&mut entry, id::TRACK_TYPE, 1);
    write_uint(&mut entry, id::FLAG_LACING, 0);
    write_bytes(&mut entry, id::CODEC_ID, CODEC_ID_AVC.as_bytes());
    write_bytes(&mut entry, id::CODEC_PRIVATE, &fragment.codec_config);
    write_bytes(&mut entry, id::VIDEO, &video);
    let mut tracks = Vec::new();
    write_bytes(&mut tracks, id::TRACK_ENTRY, &entry);
    write_bytes(out, id::TRACKS, &tracks);
}

/// A Tags element with one Tag (empty Targets: the whole segment) holding every simple tag.
pub fn write_tags(out: &mut Vec<u8>, tags: &[SimpleTag<'_>]) {
    let mut tag = Vec::new();
    write_bytes(&mut tag, id::TARGETS, &[]);
    for (name, value) in tags {
        let mut simple = Vec::new();
        write_bytes(&mut simple, id::TAG_NAME, name.as_bytes());
        write_bytes(&mut simple, id::TAG_STRING, value.as_bytes());
        write_bytes(&mut tag, id::SIMPLE_TAG, &simple);
    }
    let mut body = Vec::new();
    write_bytes(&mut body, id::TAG, &tag);
    write_bytes(out, id::TAGS, &body);
}

/// The fragment's samples as clusters; an empty fragment gives one empty cluster at its start.
pub fn write_clusters(
    out: &mut Vec<u8>,
    fragment: &MediaFragment,
) -> Result<(), MatroskaWriteError> {
    let samples = &fragment.samples;
    if samples.is_empty() {
        let start_ms = non_negative_ms(fragment.start_us(), 0)?;
        write_cluster(out, start_ms, &[])?;
        return Ok(());
    }
    let mut first = 0;
    while first < samples.len() {
        let start_ms = non_negative_ms(samples[first].pts_us, first)?;
        let count = samples[first..]
            .iter()
            .take_while(|s| relative_ms(s, start_ms).is_some())
            .count();
        // The first sample is always within reach of its own timecode (offset 0).
        let end = first + count.max(1);
        write_cluster(out, start_ms, &samples[first..end])?;
        first = end;
    }
    Ok(())
}

fn write_cluster(
    out: &mut Vec<u8>,
    timecode_ms: u64,
    samples: &[Sample],
) -> Result<(), MatroskaWriteError> {
    let mut timecode = Vec::new();
    write_uint(&mut timecode, id::TIMECODE, timecode_ms);
    let mut body_bytes = timecode.len() as u64;
    for sample in samples {
        let block = simple_block_bytes(sample);
        body_bytes += id_len(id::SIMPLE_BLOCK) as u64 + size_len(block) as u64 + block;
    }
    if body_bytes > SIZE_VALUE_MAX {
        return Err(MatroskaWriteError::ElementTooLarge { bytes: body_bytes });
    }
    write_id(out, id::CLUSTER);
    write_size(out, body_bytes);
    out.extend_from_slice(&timecode);
    for sample in samples {
        // Within the cluster's reach: the caller grouped samples by `relative_ms`.
        let relative = relative_ms(sample, timecode_ms).unwrap_or(0);
        write_id(out, id::SIMPLE_BLOCK);
        write_size(out, simple_block_bytes(sample));
        // Track number as a 1-byte vint, relative timecode, flags.
        out.push(0x80 | TRACK_NUMBER as u8);
        out.extend_from_slice(&relative.to_be_bytes());
        out.push(if sample.keyframe {
            BLOCK_FLAG_KEYFRAME
        } else {
            0
        });
        out.extend_from_slice(&sample.data);
    }
    Ok(())
}

/// SimpleBlock body bytes: track vint (1), relative timecode (2), flags (1), frame data.
fn simple_block_bytes(sample: &Sample) -> u64 {
    4 + sample.data.len() as u64
}

/// The sample's presentation time relative to a cluster timecode, when an i16 can carry it.
fn relative_ms(sample: &Sample, cluster_ms: u64) -> Option<i16> {
    let pts_ms = i128::from(sample.pts_us.div_euclid(1000));
    i16::try_from(pts_ms - i128::from(cluster_ms)).ok()
}

fn non_negative_ms(pts_us: i64, index: usize) -> Result<u64, MatroskaWriteError> {
    u64::try_from(pts_us.div_euclid(1000))
        .map_err(|_| MatroskaWriteError::NegativeTimestamp { index })
}

/// Writes an element whose whole body is `body`.
fn write_bytes(out: &mut Vec<u8>, element: u32, body: &[u8]) {
    write_id(out, element);
    write_size(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// An unsigned integer element in its shortest big-endian form (at least one byte).
fn write_uint(out: &mut Vec<u8>, element: u32, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = (value.leading_zeros() / 8).min(7) as usize;
    write_bytes(out, element, &bytes[skip..]);
}

/// Bytes of an element id: ids carry their own length marker, so the value's width is its length.
pub fn id_len(element: u32) -> usize {
    (4 - (element.leading_zeros() / 8) as usize).max(1)
}

pub fn write_id(out: &mut Vec<u8>, element: u32) {
    let bytes = element.to_be_bytes();
    out.extend_from_slice(&bytes[4 - id_len(element)..]);
}

/// Bytes of the shortest size vint for `size`: `n` bytes carry up to 2^(7n) - 2 (all ones is
/// reserved for "unknown").
pub fn size_len(size: u64) -> usize {
    (1..=8).find(|n| size < (1u64 << (7 * n)) - 1).unwrap_or(8)
}

/// Writes `size` as the shortest vint; callers keep sizes at most [`SIZE_VALUE_MAX`].
pub fn write_size(out: &mut Vec<u8>, size: u64) {
    let len = size_len(size);
    let marked = size | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Codec;
    use bytes::Bytes;

    fn vint(size: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_size(&mut out, size);
        out
    }

    fn sample(pts_ms: i64, keyframe: bool, len: usize) -> Sample {
        Sample {
            pts_us: pts_ms * 1000,
            dts_us: pts_ms * 1000,
            duration_us: 40_000,
            keyframe,
            data: Bytes::from(vec![0xAB; len]),
        }
    }

    fn fragment(samples: Vec<Sample>) -> MediaFragment {
        MediaFragment {
            codec: Codec::H264,
            width: 640,
            height: 360,
            codec_config: Bytes::from_static(&[1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 0]),
            samples,
        }
    }

    /// Every offset where `needle` occurs in `haystack`.
    fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
        haystack
            .windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn sizes_use_the_shortest_vint_and_skip_the_reserved_value() {
        assert_eq!(vint(0), [0x80]);
        assert_eq!(vint(1), [0x81]);
        assert_eq!(vint(126), [0xFE]);
        // 127 is all ones in one byte, reserved for unknown size: two bytes.
        assert_eq!(vint(127), [0x40, 0x7F]);
        assert_eq!(vint(16_382), [0x7F, 0xFE]);
        assert_eq!(vint(16_383), [0x20, 0x3F, 0xFF]);
        assert_eq!(vint(SIZE_VALUE_MAX).len(), 8);
        assert_eq!(vint(SIZE_VALUE_MAX)[0], 0x01);
        assert_ne!(vint(SIZE_VALUE_MAX), UNKNOWN_SIZE);
    }

    #[test]
    fn ids_keep_their_marker_bits_and_width() {
        let mut out = Vec::new();
        write_id(&mut out, id::EBML);
        write_id(&mut out, id::TIMECODE_SCALE);
        write_id(&mut out, id::TAG_NAME);
        write_id(&mut out, id::SIMPLE_BLOCK);
        assert_eq!(
            out,
            [0x1A, 0x45, 0xDF, 0xA3, 0x2A, 0xD7, 0xB1, 0x45, 0xA3, 0xA3]
        );
    }

    #[test]
    fn integers_are_minimal_and_zero_takes_one_byte() {
        let mut out = Vec::new();
        write_uint(&mut out, id::TIMECODE, 0);
        assert_eq!(out, [0xE7, 0x81, 0x00]);
        out.clear();
        write_uint(&mut out, id::TIMECODE_SCALE, TIMECODE_SCALE_NS);
        assert_eq!(out, [0x2A, 0xD7, 0xB1, 0x83, 0x0F, 0x42, 0x40]);
    }

    #[test]
    fn a_chunk_opens_with_the_header_and_an_unknown_size_segment() {
        let chunk = write_chunk(
            &fragment(vec![sample(1_000, true, 10)]),
            &[(TAG_FRAGMENT_NUMBER, "42".into())],
            &[],
        )
        .expect("writes");
        assert_eq!(&chunk[..4], &[0x1A, 0x45, 0xDF, 0xA3]);
        let segment = find_all(&chunk, &[0x18, 0x53, 0x80, 0x67]);
        assert_eq!(segment.len(), 1);
        assert_eq!(&chunk[segment[0] + 4..segment[0] + 12], &UNKNOWN_SIZE);
        assert_eq!(find_all(&chunk, b"matroska").len(), 1);
        assert_eq!(find_all(&chunk, CODEC_ID_AVC.as_bytes()).len(), 1);
        assert_eq!(find_all(&chunk, TAG_FRAGMENT_NUMBER.as_bytes()).len(), 1);
    }

    #[test]
    fn blocks_carry_relative_timecodes_and_keyframe_flags() {
        let frag = fragment(vec![sample(5_000, true, 3), sample(5_040, false, 3)]);
        let mut out = Vec::new();
        write_clusters(&mut out, &frag).expect("writes");
        // Cluster: id, size, Timecode 5000 (0x1388), then two blocks of 4 + 3 bytes.
        let expected_body: Vec<u8> = [
            vec![0xE7, 0x82, 0x13, 0x88],
            vec![0xA3, 0x87, 0x81, 0x00, 0x00, 0x80, 0xAB, 0xAB, 0xAB],
            vec![0xA3, 0x87, 0x81, 0x00, 0x28, 0x00, 0xAB, 0xAB, 0xAB],
        ]
        .concat();
        let mut expected = vec![0x1F, 0x43, 0xB6, 0x75];
        expected.extend(vint(expected_body.len() as u64));
        expected.extend(expected_body);
        assert_eq!(out, expected);
    }

    #[test]
    fn samples_beyond_an_i16_offset_open_a_new_cluster() {
        let frag = fragment(vec![
            sample(0, true, 1),
            sample(32_767, false, 1),
            sample(32_768, false, 1),
            sample(40_000, false, 1),
        ]);
        let mut out = Vec::new();
        write_clusters(&mut out, &frag).expect("writes");
        assert_eq!(find_all(&out, &[0x1F, 0x43, 0xB6, 0x75]).len(), 2);
        // The second cluster starts at 32,768 ms (0x8000).
        assert_eq!(find_all(&out, &[0xE7, 0x82, 0x80, 0x00]).len(), 1);
    }

    #[test]
    fn negative_times_are_refused_and_empty_fragments_give_an_empty_cluster() {
        let err = write_chunk(&fragment(vec![sample(-5, true, 1)]), &[], &[]);
        assert_eq!(err, Err(MatroskaWriteError::NegativeTimestamp { index: 0 }));
        let mut out = Vec::new();
        write_clusters(&mut out, &fragment(Vec::new())).expect("writes");
        assert_eq!(out, [0x1F, 0x43, 0xB6, 0x75, 0x83, 0xE7, 0x81, 0x00]);
    }

    #[test]
    fn tag_timestamps_have_three_millisecond_digits() {
        assert_eq!(tag_timestamp(1_511_852_109_126), "1511852109.126");
        assert_eq!(tag_timestamp(1_511_852_109_006), "1511852109.006");
        assert_eq!(tag_timestamp(0), "0.000");
    }

    fn mkvinfo(bytes: &[u8]) -> (Option<i32>, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("out.mkv");
        std::fs::write(&path, bytes).expect("write file");
        let output = std::process::Command::new("mkvinfo")
            .arg("--all")
            .arg(&path)
            .output()
            .expect("mkvinfo (mkvtoolnix) must be installed: run scripts/setup.sh");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code(), text)
    }

    fn three_samples(start_ms: i64) -> Vec<Sample> {
        (0..3)
            .map(|i| sample(start_ms + i * 40, i == 0, 50))
            .collect()
    }

    /// mkvtoolnix, an independent reader, sees both GetMedia chunks' tags, tracks and blocks; it
    /// warns (exit status 1) at the second EBML header, as it does on Kinesis Video's output.
    #[test]
    fn mkvinfo_reads_concatenated_chunks() {
        let mut bytes = Vec::new();
        for (n, start_ms) in [(1u64, 1_700_000_000_000i64), (2, 1_700_000_002_000)] {
            let tags = [
                (TAG_FRAGMENT_NUMBER, format!("9100{n}")),
                (TAG_SERVER_TIMESTAMP, tag_timestamp(start_ms as u64 + 7)),
            ];
            let trailing = [(TAG_CONTINUATION_TOKEN, format!("9100{n}"))];
            let frag = fragment(three_samples(start_ms));
            bytes.extend(write_chunk(&frag, &tags, &trailing).expect("writes"));
        }
        let (status, text) = mkvinfo(&bytes);
        assert!(matches!(status, Some(0 | 1)), "mkvinfo failed: {text}");
        assert_eq!(
            text.matches("Codec ID: V_MPEG4/ISO/AVC").count(),
            2,
            "{text}"
        );
        assert!(text.contains("Pixel width: 640"), "{text}");
        assert!(
            text.contains("String: 91001") && text.contains("String: 91002"),
            "{text}"
        );
        assert_eq!(text.matches("Simple block: key").count(), 2, "{text}");
        assert_eq!(text.matches("Simple block:").count(), 6, "{text}");
    }

    /// The fragment-list stream is one clean file for mkvinfo: exit status 0, one header until
    /// the track changes, and every fragment's tags.
    #[test]
    fn mkvinfo_reads_a_fragment_list_stream_cleanly() {
        let mut writer = FragmentListWriter::default();
        let mut bytes = Vec::new();
        for n in 0..3i64 {
            let tags = [(TAG_FRAGMENT_NUMBER, format!("9200{n}"))];
            let frag = fragment(three_samples(1_700_000_000_000 + n * 2000));
            bytes.extend(writer.write_fragment(&frag, &tags).expect("writes"));
        }
        let (status, text) = mkvinfo(&bytes);
        assert_eq!(status, Some(0), "mkvinfo complained: {text}");
        assert_eq!(text.matches("+ EBML head").count(), 1, "{text}");
        assert_eq!(
            text.matches("Name: AWS_KINESISVIDEO_FRAGMENT_NUMBER")
                .count(),
            3
        );
        assert_eq!(text.matches("|+ Cluster\n").count(), 3, "{text}");
        let mut resized = fragment(three_samples(1_700_000_009_000));
        resized.width = 1280;
        let again = writer.write_fragment(&resized, &[]).expect("writes");
        assert_eq!(find_all(&again, &[0x1A, 0x45, 0xDF, 0xA3]).len(), 1);
    }
}
