//! H.264 parameter sets: the AVCDecoderConfigurationRecord (avcC), picture size from the SPS
//! (exp-Golomb, frame cropping; baseline, main and high profiles), and Annex-B to AVC
//! conversion for streams that carry start codes.

use super::MediaError;

/// Most parameter sets of one kind read from an avcC record (the field holds at most 31 SPS).
const PARAMETER_SETS_MAX: usize = 32;
/// Most NAL units split out of one Annex-B access unit.
const ANNEXB_NALS_MAX: usize = 1024;
/// Most `offset_for_ref_frame` entries in an SPS (the standard allows 255).
const REF_FRAMES_IN_POC_CYCLE_MAX: u32 = 255;

/// The parameter sets held in an avcC record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvcConfig {
    pub profile: u8,
    pub level: u8,
    /// Bytes of each NAL length prefix in the samples (1, 2 or 4).
    pub nal_length_size: u8,
    pub sps: Vec<Vec<u8>>,
    pub pps: Vec<Vec<u8>>,
}

/// Picture size in pixels after cropping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PictureSize {
    pub width: u32,
    pub height: u32,
}

/// Parses an AVCDecoderConfigurationRecord.
pub fn parse_avcc(record: &[u8]) -> Result<AvcConfig, MediaError> {
    let bad = MediaError::BadCodecConfig;
    let header = record.get(..6).ok_or(bad("shorter than its header"))?;
    if header[0] != 1 {
        return Err(bad("configuration version is not 1"));
    }
    let nal_length_size = (header[4] & 0x03) + 1;
    if nal_length_size == 3 {
        return Err(bad("NAL length size 3 is not allowed"));
    }
    let mut pos = 5;
    let sps_count = usize::from(record[pos] & 0x1f);
    pos += 1;
    let sps = read_parameter_sets(record, &mut pos, sps_count)?;
    let pps_count = usize::from(*record.get(pos).ok_or(bad("PPS count missing"))?);
    pos += 1;
    let pps = read_parameter_sets(record, &mut pos, pps_count)?;
    Ok(AvcConfig {
        profile: header[1],
        level: header[3],
        nal_length_size,
        sps,
        pps,
    })
}

fn read_parameter_sets(
    record: &[u8],
    pos: &mut usize,
    count: usize,
) -> Result<Vec<Vec<u8>>, MediaError> {
    if count > PARAMETER_SETS_MAX {
        return Err(MediaError::BadCodecConfig("too many parameter sets"));
    }
    let mut sets = Vec::with_capacity(count);
    for _ in 0..count {
        let len_bytes = record
            .get(*pos..*pos + 2)
            .ok_or(MediaError::BadCodecConfig("parameter set length truncated"))?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        *pos += 2;
        let set = record
            .get(*pos..*pos + len)
            .ok_or(MediaError::BadCodecConfig("parameter set truncated"))?;
        *pos += len;
        sets.push(set.to_vec());
    }
    Ok(sets)
}

/// Picture size of the first SPS in an avcC record.
pub fn picture_size_from_avcc(record: &[u8]) -> Result<PictureSize, MediaError> {
    let config = parse_avcc(record)?;
    let sps = config
        .sps
        .first()
        .ok_or(MediaError::BadCodecConfig("no SPS"))?;
    picture_size_from_sps(sps)
}

/// Picture size from an SPS NAL unit (with its one-byte NAL header).
pub fn picture_size_from_sps(nal: &[u8]) -> Result<PictureSize, MediaError> {
    let header = *nal.first().ok_or(MediaError::BadSps("empty"))?;
    if header & 0x1f != 7 {
        return Err(MediaError::BadSps("NAL unit is not an SPS"));
    }
    let rbsp = remove_emulation_prevention(&nal[1..]);
    let mut bits = BitReader::new(&rbsp);
    let profile_idc = bits.bits(8)?;
    bits.bits(16)?; // constraint flags and level_idc
    bits.ue()?; // seq_parameter_set_id
    let chroma = read_chroma_format(&mut bits, profile_idc)?;
    skip_frame_num_and_poc(&mut bits)?;
    bits.ue()?; // max_num_ref_frames
    bits.bits(1)?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = bits.ue()? + 1;
    let height_map_units = bits.ue()? + 1;
    let frame_mbs_only = bits.bits(1)?;
    if frame_mbs_only == 0 {
        bits.bits(1)?; // mb_adaptive_frame_field_flag
    }
    bits.bits(1)?; // direct_8x8_inference_flag
    let crop = read_crop(&mut bits)?;
    apply_crop(width_mbs, height_map_units, frame_mbs_only, chroma, crop)
}

/// `chroma_array_type` (0 when colour planes are coded separately), default 1 (4:2:0).
fn read_chroma_format(bits: &mut BitReader<'_>, profile_idc: u32) -> Result<u32, MediaError> {
    const HIGH_PROFILES: [u32; 13] = [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135];
    if !HIGH_PROFILES.contains(&profile_idc) {
        return Ok(1);
    }
    let chroma_format_idc = bits.ue()?;
    let mut chroma_array_type = chroma_format_idc;
    if chroma_format_idc == 3 && bits.bits(1)? == 1 {
        chroma_array_type = 0; // separate_colour_plane_flag
    }
    bits.ue()?; // bit_depth_luma_minus8
    bits.ue()?; // bit_depth_chroma_minus8
    bits.bits(1)?; // qpprime_y_zero_transform_bypass_flag
    if bits.bits(1)? == 1 {
        let lists = if chroma_format_idc == 3 { 12 } else { 8 };
        for i in 0..lists {
            if bits.bits(1)? == 1 {
                skip_scaling_list(bits, if i < 6 { 16 } else { 64 })?;
            }
        }
    }
    Ok(chroma_array_type)
}

fn skip_scaling_list(bits: &mut BitReader<'_>, size: u32) -> Result<(), MediaError> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + bits.se()? + 256) % 256;
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

fn skip_frame_num_and_poc(bits: &mut BitReader<'_>) -> Result<(), MediaError> {
    bits.ue()?; // log2_max_frame_num_minus4
    match bits.ue()? {
        0 => {
            bits.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            bits.bits(1)?; // delta_pic_order_always_zero_flag
            bits.se()?; // offset_for_non_ref_pic
            bits.se()?; // offset_for_top_to_bottom_field
            let cycle = bits.ue()?;
            if cycle > REF_FRAMES_IN_POC_CYCLE_MAX {
                return Err(MediaError::BadSps("POC cycle too long"));
            }
            for _ in 0..cycle {
                bits.se()?;
            }
        }
        2 => {}
        _ => return Err(MediaError::BadSps("unknown pic_order_cnt_type")),
    }
    Ok(())
}

/// Frame cropping offsets (left, right, top, bottom) in crop units.
fn read_crop(bits: &mut BitReader<'_>) -> Result<[u32; 4], MediaError> {
    if bits.bits(1)? == 0 {
        return Ok([0; 4]);
    }
    Ok([bits.ue()?, bits.ue()?, bits.ue()?, bits.ue()?])
}

fn apply_crop(
    width_mbs: u32,
    height_map_units: u32,
    frame_mbs_only: u32,
    chroma_array_type: u32,
    [left, right, top, bottom]: [u32; 4],
) -> Result<PictureSize, MediaError> {
    let field_factor = 2 - u64::from(frame_mbs_only);
    let (sub_width, sub_height) = match chroma_array_type {
        0 => (1, 1),
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let crop_unit_x = if chroma_array_type == 0 { 1 } else { sub_width };
    let crop_unit_y = if chroma_array_type == 0 {
        1
    } else {
        sub_height
    } * field_factor;
    let full_width = u64::from(width_mbs) * 16;
    let full_height = field_factor * u64::from(height_map_units) * 16;
    let crop_x = crop_unit_x * (u64::from(left) + u64::from(right));
    let crop_y = crop_unit_y * (u64::from(top) + u64::from(bottom));
    let width = full_width.checked_sub(crop_x).filter(|w| *w > 0);
    let height = full_height.checked_sub(crop_y).filter(|h| *h > 0);
    match (width.map(u32::try_from), height.map(u32::try_from)) {
        (Some(Ok(width)), Some(Ok(height))) => Ok(PictureSize { width, height }),
        _ => Err(MediaError::BadSps("cropping leaves no picture")),
    }
}

/// Drops the 0x03 byte of every `00 00 03` sequence (emulation prevention), giving the RBSP.
pub fn remove_emulation_prevention(ebsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ebsp.len());
    let mut zeros = 0;
    for &byte in ebsp {
        if zeros >= 2 && byte == 3 {
            zeros = 0;
            continue;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        out.push(byte);
    }
    out
}

/// Converts an Annex-B access unit (start codes) to AVC format (4-byte big-endian lengths).
pub fn annexb_to_avc(annexb: &[u8]) -> Result<Vec<u8>, MediaError> {
    let nals = split_annexb(annexb)?;
    let mut out = Vec::with_capacity(annexb.len() + nals.len() * 4);
    for nal in nals {
        let len = u32::try_from(nal.len())
            .map_err(|_| MediaError::BadCodecConfig("NAL unit over 4 GiB"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(nal);
    }
    Ok(out)
}

/// The NAL units between start codes (`00 00 01` or `00 00 00 01`), without trailing zeros.
pub fn split_annexb(annexb: &[u8]) -> Result<Vec<&[u8]>, MediaError> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= annexb.len() {
        if annexb[i..i + 3] == [0, 0, 1] {
            if starts.len() == ANNEXB_NALS_MAX {
                return Err(MediaError::BadCodecConfig(
                    "too many NAL units in one access unit",
                ));
            }
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(annexb.len(), |next| next - 3);
        let mut nal = &annexb[start..end];
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        if !nal.is_empty() {
            nals.push(nal);
        }
    }
    Ok(nals)
}

/// Reads bits most significant first from an RBSP; every read checks the end.
struct BitReader<'a> {
    bytes: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, bit: 0 }
    }

    fn bits(&mut self, count: u32) -> Result<u32, MediaError> {
        let mut value = 0u32;
        for _ in 0..count {
            let byte = self
                .bytes
                .get(self.bit / 8)
                .ok_or(MediaError::BadSps("truncated"))?;
            let bit = (byte >> (7 - self.bit % 8)) & 1;
            value = (value << 1) | u32::from(bit);
            self.bit += 1;
        }
        Ok(value)
    }

    /// Unsigned exp-Golomb; values above 2^31 are refused (no SPS field is that large).
    fn ue(&mut self) -> Result<u32, MediaError> {
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(MediaError::BadSps("exp-Golomb code too long"));
            }
        }
        let suffix = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + u64::from(suffix)).min(u64::from(u32::MAX)) as u32)
    }

    fn se(&mut self) -> Result<i64, MediaError> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// avcC from x264 (High 4:4:4 Predictive profile, 640x360: 23 macroblock rows, 8 lines
    /// cropped at the bottom).
    const AVCC_640X360: &[u8] = &[
        0x01, 0xf4, 0x00, 0x1e, 0xff, 0xe1, 0x00, 0x1d, 0x67, 0xf4, 0x00, 0x1e, 0x90, 0xd9, 0x68,
        0x0a, 0x02, 0xff, 0x89, 0xc0, 0x5a, 0x83, 0x03, 0x03, 0x20, 0x00, 0x00, 0x03, 0x00, 0x20,
        0x00, 0x00, 0x06, 0x51, 0xe2, 0xc5, 0xd4, 0x01, 0x00, 0x04, 0x68, 0xce, 0x31, 0x92,
    ];
    /// avcC of a Main profile camera clip, 768x432.
    const AVCC_768X432: &[u8] = &[
        0x01, 0x4d, 0x40, 0x16, 0xff, 0xe1, 0x00, 0x1b, 0x67, 0x4d, 0x40, 0x16, 0xd9, 0x00, 0xc0,
        0x37, 0xa6, 0xa0, 0xc0, 0xc0, 0xc8, 0x00, 0x00, 0x03, 0x00, 0x08, 0x00, 0x00, 0x03, 0x00,
        0xa0, 0x78, 0xb1, 0x72, 0x40, 0x01, 0x00, 0x05, 0x68, 0xeb, 0xc3, 0xcb, 0x20,
    ];

    #[test]
    fn reads_the_picture_size_from_an_x264_avcc() {
        let config = parse_avcc(AVCC_640X360).unwrap();
        assert_eq!((config.profile, config.nal_length_size), (0xf4, 4));
        assert_eq!((config.sps.len(), config.pps.len()), (1, 1));
        let size = picture_size_from_avcc(AVCC_640X360).unwrap();
        assert_eq!(
            size,
            PictureSize {
                width: 640,
                height: 360
            }
        );
        let size = picture_size_from_avcc(AVCC_768X432).unwrap();
        assert_eq!(
            size,
            PictureSize {
                width: 768,
                height: 432
            }
        );
    }

    #[test]
    fn malformed_records_give_typed_errors() {
        assert!(parse_avcc(&[]).is_err());
        for len in 0..AVCC_640X360.len() {
            // Every prefix either parses or fails cleanly; none panics.
            let _ = picture_size_from_avcc(&AVCC_640X360[..len]);
        }
        assert!(matches!(
            picture_size_from_sps(&[0x68, 1, 2]),
            Err(MediaError::BadSps(_))
        ));
        assert!(matches!(
            picture_size_from_sps(&[0x67]),
            Err(MediaError::BadSps(_))
        ));
    }

    #[test]
    fn annexb_becomes_length_prefixed() {
        let annexb = [
            0, 0, 0, 1, 0x67, 0xaa, 0, 0, 1, 0x68, 0xbb, 0, 0, 0, 1, 0x65, 0xcc, 0xdd,
        ];
        let avc = annexb_to_avc(&annexb).unwrap();
        assert_eq!(
            avc,
            [
                0, 0, 0, 2, 0x67, 0xaa, 0, 0, 0, 2, 0x68, 0xbb, 0, 0, 0, 3, 0x65, 0xcc, 0xdd
            ]
        );
        assert_eq!(
            remove_emulation_prevention(&[0, 0, 3, 1, 0, 0, 3]),
            [0, 0, 1, 0, 0]
        );
    }
}
