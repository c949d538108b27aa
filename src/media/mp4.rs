//! A standard progressive MP4 from media fragments: `ftyp`, `moov` (one H.264 video track with
//! `avc1`/`avcC`, `stts`, `ctts` when presentation and decoding times differ, `stss`, `stsz`,
//! `stsc`, `stco` or `co64`), then `mdat`. Each fragment becomes one chunk.
//!
//! The track timescale is 90 kHz; sample deltas are taken from consecutive decoding times
//! (rounded on the absolute times so that rounding never drifts), the last sample keeps its own
//! duration, so a gap between fragments (a missing one) stays a gap in the timeline rather than
//! shifting later samples. All fragments must share one codec configuration: a second sample
//! description is deliberately not supported, so a change is a typed error.

use super::{MediaError, MediaFragment, Sample, h264};

/// Ticks per second of the video track.
pub const TRACK_TIMESCALE: u32 = 90_000;
/// Ticks per second of the movie header.
const MOVIE_TIMESCALE: u32 = 1_000;

/// Writes the fragments, in order, as one progressive MP4 file.
pub fn write_mp4(fragments: &[MediaFragment]) -> Result<Vec<u8>, MediaError> {
    let track = Track::from_fragments(fragments)?;
    let ftyp = ftyp();
    let data_bytes: u64 = track.chunk_sizes.iter().sum();
    // mdat needs the 64-bit size form when its payload would not fit 32 bits.
    let mdat_header: u64 = if data_bytes + 8 > u64::from(u32::MAX) {
        16
    } else {
        8
    };
    let moov_len = moov(&track, &vec![0; track.chunk_sizes.len()], false).len() as u64;
    let use_co64 = ftyp.len() as u64 + moov_len + mdat_header + data_bytes > u64::from(u32::MAX);
    let final_moov_len = if use_co64 {
        moov(&track, &vec![0; track.chunk_sizes.len()], true).len() as u64
    } else {
        moov_len
    };
    let mut offset = ftyp.len() as u64 + final_moov_len + mdat_header;
    let mut chunk_offsets = Vec::with_capacity(track.chunk_sizes.len());
    for size in &track.chunk_sizes {
        chunk_offsets.push(offset);
        offset += size;
    }
    let mut out = ftyp;
    out.extend_from_slice(&moov(&track, &chunk_offsets, use_co64));
    write_mdat_header(&mut out, mdat_header, data_bytes);
    for fragment in fragments {
        for sample in &fragment.samples {
            out.extend_from_slice(&sample.data);
        }
    }
    Ok(out)
}

/// The sample tables of the one video track, in track ticks.
struct Track {
    width: u16,
    height: u16,
    codec_config: Vec<u8>,
    deltas: Vec<u32>,
    composition_offsets: Vec<i64>,
    sizes: Vec<u32>,
    sync_samples: Vec<u32>,
    chunk_sizes: Vec<u64>,
    chunk_samples: Vec<u32>,
    duration_ticks: u64,
}

impl Track {
    fn from_fragments(fragments: &[MediaFragment]) -> Result<Self, MediaError> {
        let first = fragments
            .iter()
            .find(|f| !f.samples.is_empty())
            .ok_or(MediaError::Empty)?;
        if fragments
            .iter()
            .any(|f| f.codec_config != first.codec_config)
        {
            return Err(MediaError::CodecConfigMismatch);
        }
        let (width, height) = dimensions(first)?;
        let samples: Vec<&Sample> = fragments.iter().flat_map(|f| &f.samples).collect();
        let (deltas, composition_offsets) = timing(&samples)?;
        let sizes = samples
            .iter()
            .map(|s| u32::try_from(s.data.len()).unwrap_or(u32::MAX))
            .collect();
        let sync_samples = (1u32..)
            .zip(&samples)
            .filter(|(_, s)| s.keyframe)
            .map(|(i, _)| i)
            .collect();
        let chunks = fragments.iter().filter(|f| !f.samples.is_empty());
        let chunk_sizes = chunks
            .clone()
            .map(|f| f.samples.iter().map(|s| s.data.len() as u64).sum())
            .collect();
        let chunk_samples = chunks.map(|f| f.samples.len() as u32).collect();
        let duration_ticks = deltas.iter().map(|d| u64::from(*d)).sum();
        Ok(Track {
            width,
            height,
            codec_config: first.codec_config.to_vec(),
            deltas,
            composition_offsets,
            sizes,
            sync_samples,
            chunk_sizes,
            chunk_samples,
            duration_ticks,
        })
    }
}

/// Width and height from the fragment, or from its SPS when the fragment left them zero.
pub(super) fn dimensions(fragment: &MediaFragment) -> Result<(u16, u16), MediaError> {
    let (width, height) = if fragment.width == 0 || fragment.height == 0 {
        let size = h264::picture_size_from_avcc(&fragment.codec_config)?;
        (size.width, size.height)
    } else {
        (fragment.width, fragment.height)
    };
    match (u16::try_from(width), u16::try_from(height)) {
        (Ok(w), Ok(h)) => Ok((w, h)),
        _ => Err(MediaError::DimensionsTooLarge { width, height }),
    }
}

pub(super) fn ticks(us: i64) -> i64 {
    // i128 keeps epoch microseconds times 90 000 from overflowing.
    (i128::from(us) * i128::from(TRACK_TIMESCALE) / 1_000_000) as i64
}

/// Sample deltas (from decoding times) and composition offsets (pts - dts), in ticks.
pub(super) fn timing(samples: &[&Sample]) -> Result<(Vec<u32>, Vec<i64>), MediaError> {
    let mut deltas = Vec::with_capacity(samples.len());
    for (index, pair) in samples.windows(2).enumerate() {
        let delta = ticks(pair[1].dts_us) - ticks(pair[0].dts_us);
        let delta = u32::try_from(delta)
            .map_err(|_| MediaError::NonMonotonicTimestamps { index: index + 1 })?;
        deltas.push(delta);
    }
    if let Some(last) = samples.last() {
        deltas.push(ticks(i64::from(last.duration_us)) as u32);
    }
    let offsets = samples
        .iter()
        .map(|s| ticks(s.pts_us) - ticks(s.dts_us))
        .collect();
    Ok((deltas, offsets))
}

fn write_mdat_header(out: &mut Vec<u8>, header_len: u64, data_bytes: u64) {
    if header_len == 16 {
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(b"mdat");
        out.extend_from_slice(&(data_bytes + 16).to_be_bytes());
    } else {
        out.extend_from_slice(&((data_bytes + 8) as u32).to_be_bytes());
        out.extend_from_slice(b"mdat");
    }
}

/// Builds boxes in one buffer: `open` writes a size placeholder, `close` patches it.
pub(super) struct BoxWriter {
    pub(super) buf: Vec<u8>,
    open: Vec<usize>,
}

impl BoxWriter {
    pub(super) fn new() -> Self {
        Self {
            buf: Vec::new(),
            open: Vec::new(),
        }
    }

    pub(super) fn open(&mut self, fourcc: &[u8; 4]) {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(fourcc);
    }

    /// A full box: version and 24-bit flags follow the type.
    pub(super) fn open_full(&mut self, fourcc: &[u8; 4], version: u8, flags: u32) {
        self.open(fourcc);
        self.u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
    }

    pub(super) fn close(&mut self) {
        if let Some(start) = self.open.pop() {
            let len = (self.buf.len() - start) as u32;
            self.buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    pub(super) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(super) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(super) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(super) fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    pub(super) fn matrix(&mut self) {
        for v in [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000u32] {
            self.u32(v);
        }
    }
}

fn ftyp() -> Vec<u8> {
    let mut w = BoxWriter::new();
    w.open(b"ftyp");
    w.bytes(b"isom");
    w.u32(0x200);
    for brand in [b"isom", b"iso2", b"avc1", b"mp41"] {
        w.bytes(brand);
    }
    w.close();
    w.buf
}

fn moov(track: &Track, chunk_offsets: &[u64], use_co64: bool) -> Vec<u8> {
    let mut w = BoxWriter::new();
    let movie_duration =
        track.duration_ticks * u64::from(MOVIE_TIMESCALE) / u64::from(TRACK_TIMESCALE);
    w.open(b"moov");
    mvhd(&mut w, movie_duration);
    w.open(b"trak");
    tkhd(&mut w, (track.width, track.height), movie_duration);
    w.open(b"mdia");
    mdhd_and_hdlr(&mut w, track.duration_ticks);
    w.open(b"minf");
    vmhd_and_dinf(&mut w);
    stbl(&mut w, track, chunk_offsets, use_co64);
    w.close(); // minf
    w.close(); // mdia
    w.close(); // trak
    w.close(); // moov
    w.buf
}

pub(super) fn mvhd(w: &mut BoxWriter, duration: u64) {
    w.open_full(b"mvhd", 1, 0);
    w.u64(0); // creation time
    w.u64(0); // modification time
    w.u32(MOVIE_TIMESCALE);
    w.u64(duration);
    w.u32(0x0001_0000); // rate 1.0
    w.u16(0x0100); // volume 1.0
    w.bytes(&[0; 10]);
    w.matrix();
    w.bytes(&[0; 24]); // pre_defined
    w.u32(2); // next track id
    w.close();
}

pub(super) fn tkhd(w: &mut BoxWriter, (width, height): (u16, u16), duration: u64) {
    w.open_full(b"tkhd", 1, 0x3); // enabled, in movie
    w.u64(0);
    w.u64(0);
    w.u32(1); // track id
    w.u32(0);
    w.u64(duration);
    w.bytes(&[0; 8]);
    w.u16(0); // layer
    w.u16(0); // alternate group
    w.u16(0); // volume
    w.u16(0);
    w.matrix();
    w.u32(u32::from(width) << 16);
    w.u32(u32::from(height) << 16);
    w.close();
}

pub(super) fn mdhd_and_hdlr(w: &mut BoxWriter, duration_ticks: u64) {
    w.open_full(b"mdhd", 1, 0);
    w.u64(0);
    w.u64(0);
    w.u32(TRACK_TIMESCALE);
    w.u64(duration_ticks);
    w.u16(0x55c4); // language "und"
    w.u16(0);
    w.close();
    w.open_full(b"hdlr", 0, 0);
    w.u32(0);
    w.bytes(b"vide");
    w.bytes(&[0; 12]);
    w.bytes(b"VideoHandler\0");
    w.close();
}

pub(super) fn vmhd_and_dinf(w: &mut BoxWriter) {
    w.open_full(b"vmhd", 0, 1);
    w.bytes(&[0; 8]); // graphics mode, opcolor
    w.close();
    w.open(b"dinf");
    w.open_full(b"dref", 0, 0);
    w.u32(1);
    w.open_full(b"url ", 0, 1); // media in this file
    w.close();
    w.close();
    w.close();
}

fn stbl(w: &mut BoxWriter, track: &Track, chunk_offsets: &[u64], use_co64: bool) {
    w.open(b"stbl");
    stsd(w, (track.width, track.height), &track.codec_config);
    stts(w, &track.deltas);
    ctts(w, &track.composition_offsets);
    w.open_full(b"stss", 0, 0);
    w.u32(track.sync_samples.len() as u32);
    track.sync_samples.iter().for_each(|i| w.u32(*i));
    w.close();
    w.open_full(b"stsz", 0, 0);
    w.u32(0); // sizes differ: one entry per sample
    w.u32(track.sizes.len() as u32);
    track.sizes.iter().for_each(|s| w.u32(*s));
    w.close();
    stsc(w, &track.chunk_samples);
    chunk_offset_box(w, chunk_offsets, use_co64);
    w.close();
}

pub(super) fn stsd(w: &mut BoxWriter, (width, height): (u16, u16), codec_config: &[u8]) {
    w.open_full(b"stsd", 0, 0);
    w.u32(1);
    w.open(b"avc1");
    w.bytes(&[0; 6]);
    w.u16(1); // data reference index
    w.bytes(&[0; 16]); // pre_defined and reserved
    w.u16(width);
    w.u16(height);
    w.u32(0x0048_0000); // 72 dpi
    w.u32(0x0048_0000);
    w.u32(0);
    w.u16(1); // frame count
    w.bytes(&[0; 32]); // compressor name
    w.u16(0x0018); // depth
    w.u16(0xffff); // pre_defined -1
    w.open(b"avcC");
    w.bytes(codec_config);
    w.close();
    w.close();
    w.close();
}

/// Run-length encodes equal neighbours.
fn runs<T: PartialEq + Copy>(values: &[T]) -> Vec<(u32, T)> {
    let mut out: Vec<(u32, T)> = Vec::new();
    for &v in values {
        match out.last_mut() {
            Some((count, last)) if *last == v => *count += 1,
            _ => out.push((1, v)),
        }
    }
    out
}

fn stts(w: &mut BoxWriter, deltas: &[u32]) {
    let runs = runs(deltas);
    w.open_full(b"stts", 0, 0);
    w.u32(runs.len() as u32);
    for (count, delta) in runs {
        w.u32(count);
        w.u32(delta);
    }
    w.close();
}

/// Written only when some presentation time differs from its decoding time; version 1 (signed
/// offsets) when any offset is negative.
fn ctts(w: &mut BoxWriter, offsets: &[i64]) {
    if offsets.iter().all(|o| *o == 0) {
        return;
    }
    let version = u8::from(offsets.iter().any(|o| *o < 0));
    let runs = runs(offsets);
    w.open_full(b"ctts", version, 0);
    w.u32(runs.len() as u32);
    for (count, offset) in runs {
        w.u32(count);
        w.u32(offset.clamp(i64::from(i32::MIN), i64::from(u32::MAX)) as u32);
    }
    w.close();
}

fn stsc(w: &mut BoxWriter, chunk_samples: &[u32]) {
    w.open_full(b"stsc", 0, 0);
    let mut entries = Vec::new();
    for (chunk, &count) in (1u32..).zip(chunk_samples) {
        if entries.last().is_none_or(|(_, last)| *last != count) {
            entries.push((chunk, count));
        }
    }
    w.u32(entries.len() as u32);
    for (first_chunk, samples) in entries {
        w.u32(first_chunk);
        w.u32(samples);
        w.u32(1); // sample description index
    }
    w.close();
}

fn chunk_offset_box(w: &mut BoxWriter, chunk_offsets: &[u64], use_co64: bool) {
    if use_co64 {
        w.open_full(b"co64", 0, 0);
        w.u32(chunk_offsets.len() as u32);
        chunk_offsets.iter().for_each(|o| w.u64(*o));
    } else {
        w.open_full(b"stco", 0, 0);
        w.u32(chunk_offsets.len() as u32);
        chunk_offsets.iter().for_each(|o| w.u32(*o as u32));
    }
    w.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Codec;
    use bytes::Bytes;

    fn fragment(config: &'static [u8], start_us: i64, frames: i64) -> MediaFragment {
        let samples = (0..frames)
            .map(|i| Sample {
                pts_us: start_us + i * 40_000,
                dts_us: start_us + i * 40_000,
                duration_us: 40_000,
                keyframe: i == 0,
                data: Bytes::from(vec![0, 0, 0, 1, 0x65]),
            })
            .collect();
        MediaFragment {
            codec: Codec::H264,
            width: 640,
            height: 360,
            codec_config: Bytes::from_static(config),
            samples,
        }
    }

    fn find_box(file: &[u8], fourcc: &[u8; 4]) -> Option<usize> {
        file.windows(4).position(|w| w == fourcc)
    }

    #[test]
    fn writes_the_standard_boxes_in_order() {
        let file = write_mp4(&[fragment(b"cfg", 0, 3), fragment(b"cfg", 120_000, 2)]).unwrap();
        let order = [
            b"ftyp", b"moov", b"mvhd", b"tkhd", b"mdhd", b"hdlr", b"avcC", b"stts", b"stss",
            b"stsz", b"stsc", b"stco", b"mdat",
        ];
        let positions: Vec<usize> = order.iter().map(|b| find_box(&file, b).unwrap()).collect();
        assert!(positions.windows(2).all(|p| p[0] < p[1]), "{positions:?}");
        assert!(
            find_box(&file, b"ctts").is_none(),
            "no ctts when pts == dts"
        );
        let mdat = find_box(&file, b"mdat").unwrap() - 4;
        assert_eq!(file.len() - mdat, 8 + 5 * 5);
    }

    #[test]
    fn refuses_mixed_configs_and_backwards_time() {
        let mixed = write_mp4(&[fragment(b"one", 0, 2), fragment(b"two", 80_000, 2)]);
        assert_eq!(mixed, Err(MediaError::CodecConfigMismatch));
        let backwards = write_mp4(&[fragment(b"cfg", 1_000_000, 2), fragment(b"cfg", 0, 2)]);
        assert_eq!(
            backwards,
            Err(MediaError::NonMonotonicTimestamps { index: 2 })
        );
        assert_eq!(write_mp4(&[]), Err(MediaError::Empty));
    }

    #[test]
    fn writes_ctts_when_presentation_differs() {
        let mut f = fragment(b"cfg", 0, 3);
        f.samples[1].pts_us += 80_000;
        let file = write_mp4(&[f]).unwrap();
        assert!(find_box(&file, b"ctts").is_some());
    }
}
