//! The pure fragmenter: samples in, fragments out. No I/O, no clock.
//!
//! Cut rules, checked before a sample is added:
//! - at a keyframe, once the fragment holds at least the target duration less half a frame
//!   (so a clip with an IDR exactly every target gives one fragment per GOP despite rounding);
//! - forced, even without a keyframe, when adding the sample would pass the hard duration cap,
//!   the encoded byte cap or [`FRAGMENT_SAMPLES_MAX`]. The next fragment then starts with a
//!   non-key sample; its first sample's keyframe flag is what marks it as a continuation.
//!
//! Samples before the first keyframe (and after a format change, until the next keyframe) are
//! dropped and counted: a fragment that no decoder can start is useless. A sample that alone is
//! larger than the byte cap is dropped too (counted), and the fragmenter waits for the next
//! keyframe, because the samples after it cannot be decoded without it.

use bytes::Bytes;

use crate::media::{
    Codec, FRAGMENT_SAMPLES_MAX, MediaFragment, PAYLOAD_HEADER_BYTES, SAMPLE_HEADER_BYTES, Sample,
};

/// Where fragments are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentLimits {
    pub target_ms: u32,
    pub duration_ms_max: u32,
    /// Largest encoded payload ([`MediaFragment::encoded_len`]) of one fragment.
    pub bytes_max: usize,
}

/// The stream's codec and configuration, as announced by the caps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamFormat {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub codec_config: Bytes,
}

/// Counters for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmenterStats {
    pub fragments: u64,
    pub samples: u64,
    /// Samples dropped while waiting for a keyframe (stream start, format change).
    pub samples_before_keyframe_dropped: u64,
    /// Samples dropped because alone they exceed the byte cap.
    pub samples_oversize_dropped: u64,
    /// Cuts made without a keyframe (duration, byte or sample-count cap).
    pub forced_cuts: u64,
}

/// Cuts a stream of samples into fragments; see the module doc for the rules.
#[derive(Debug)]
pub struct Fragmenter {
    limits: FragmentLimits,
    format: Option<StreamFormat>,
    samples: Vec<Sample>,
    duration_us: u64,
    encoded_bytes: usize,
    waiting_for_keyframe: bool,
    stats: FragmenterStats,
}

impl Fragmenter {
    pub fn new(limits: FragmentLimits) -> Self {
        Self {
            limits,
            format: None,
            samples: Vec::new(),
            duration_us: 0,
            encoded_bytes: 0,
            waiting_for_keyframe: true,
            stats: FragmenterStats::default(),
        }
    }

    /// Sets the format of the samples that follow. A change flushes the current fragment (one
    /// fragment has one codec config) and waits for a keyframe.
    pub fn set_format(&mut self, format: StreamFormat) -> Option<MediaFragment> {
        if self.format.as_ref() == Some(&format) {
            return None;
        }
        let flushed = self.finish();
        self.format = Some(format);
        self.waiting_for_keyframe = true;
        flushed
    }

    /// Adds a sample; returns the fragment this sample closed, if any.
    pub fn push(&mut self, sample: Sample) -> Option<MediaFragment> {
        let Some(format) = &self.format else {
            self.stats.samples_before_keyframe_dropped += 1;
            return None;
        };
        let sample_bytes = SAMPLE_HEADER_BYTES + sample.data.len();
        if PAYLOAD_HEADER_BYTES + format.codec_config.len() + sample_bytes > self.limits.bytes_max {
            self.stats.samples_oversize_dropped += 1;
            self.waiting_for_keyframe = true;
            return self.finish();
        }
        if self.waiting_for_keyframe {
            if !sample.keyframe {
                self.stats.samples_before_keyframe_dropped += 1;
                return None;
            }
            self.waiting_for_keyframe = false;
        }
        let cut = self.cut_before(&sample, sample_bytes);
        let out = if cut { self.finish() } else { None };
        self.add(sample, sample_bytes);
        out
    }

    /// Closes the current fragment (end of stream or a flush); `None` when it is empty.
    pub fn finish(&mut self) -> Option<MediaFragment> {
        if self.samples.is_empty() {
            return None;
        }
        let format = self.format.as_ref()?;
        let fragment = MediaFragment {
            codec: format.codec,
            width: format.width,
            height: format.height,
            codec_config: format.codec_config.clone(),
            samples: std::mem::take(&mut self.samples),
        };
        self.duration_us = 0;
        self.encoded_bytes = 0;
        self.stats.fragments += 1;
        Some(fragment)
    }

    pub fn stats(&self) -> FragmenterStats {
        self.stats
    }

    fn cut_before(&mut self, sample: &Sample, sample_bytes: usize) -> bool {
        if self.samples.is_empty() {
            return false;
        }
        let half_frame_us = u64::from(sample.duration_us / 2);
        let target_us = u64::from(self.limits.target_ms) * 1000;
        if sample.keyframe && self.duration_us + half_frame_us >= target_us {
            return true;
        }
        let max_us = u64::from(self.limits.duration_ms_max) * 1000;
        let forced = self.duration_us + u64::from(sample.duration_us) > max_us
            || self.encoded_bytes + sample_bytes > self.limits.bytes_max
            || self.samples.len() >= FRAGMENT_SAMPLES_MAX;
        if forced {
            self.stats.forced_cuts += 1;
        }
        forced
    }

    fn add(&mut self, sample: Sample, sample_bytes: usize) {
        if self.samples.is_empty() {
            let config_len = self.format.as_ref().map_or(0, |f| f.codec_config.len());
            self.encoded_bytes = PAYLOAD_HEADER_BYTES + config_len;
        }
        self.duration_us += u64::from(sample.duration_us);
        self.encoded_bytes += sample_bytes;
        self.stats.samples += 1;
        self.samples.push(sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME_US: u32 = 100_000;

    fn limits() -> FragmentLimits {
        FragmentLimits {
            target_ms: 2_000,
            duration_ms_max: 10_000,
            bytes_max: 1024 * 1024,
        }
    }

    fn format() -> StreamFormat {
        StreamFormat {
            codec: Codec::H264,
            width: 640,
            height: 360,
            codec_config: Bytes::from_static(b"avcC"),
        }
    }

    fn sample(index: i64, keyframe: bool, len: usize) -> Sample {
        let t = index * i64::from(FRAME_US);
        Sample {
            pts_us: t,
            dts_us: t,
            duration_us: FRAME_US,
            keyframe,
            data: Bytes::from(vec![0u8; len]),
        }
    }

    /// Feeds `frames` samples with a keyframe every `gop` frames; returns the fragments.
    fn run(fragmenter: &mut Fragmenter, frames: i64, gop: i64, len: usize) -> Vec<MediaFragment> {
        let mut out: Vec<_> = (0..frames)
            .filter_map(|i| fragmenter.push(sample(i, i % gop == 0, len)))
            .collect();
        out.extend(fragmenter.finish());
        out
    }

    #[test]
    fn cuts_one_fragment_per_gop_at_the_target() {
        let mut f = Fragmenter::new(limits());
        assert_eq!(f.set_format(format()), None);
        let fragments = run(&mut f, 1394, 20, 100);
        assert_eq!(fragments.len(), 70);
        assert!(fragments.iter().all(|f| f.starts_with_keyframe()));
        assert!(fragments[..69].iter().all(|f| f.samples.len() == 20));
        assert_eq!(fragments[69].samples.len(), 14);
        assert_eq!(f.stats().forced_cuts, 0);
    }

    #[test]
    fn short_gops_are_joined_up_to_the_target() {
        let mut f = Fragmenter::new(limits());
        f.set_format(format());
        let fragments = run(&mut f, 100, 5, 10);
        assert_eq!(fragments.len(), 5);
        assert!(fragments.iter().all(|f| f.samples.len() == 20));
    }

    #[test]
    fn the_hard_cap_forces_a_cut_without_a_keyframe() {
        let mut f = Fragmenter::new(limits());
        f.set_format(format());
        let fragments = run(&mut f, 250, 1000, 10);
        let lens: Vec<usize> = fragments.iter().map(|f| f.samples.len()).collect();
        assert_eq!(lens, [100, 100, 50]);
        assert!(fragments[0].starts_with_keyframe());
        assert!(
            !fragments[1].starts_with_keyframe(),
            "a continuation is marked by its first sample"
        );
        assert!(fragments.iter().all(|f| f.duration_us() <= 10_000_000));
        assert_eq!(f.stats().forced_cuts, 2);
    }

    #[test]
    fn samples_before_the_first_keyframe_are_dropped() {
        let mut f = Fragmenter::new(limits());
        assert_eq!(f.push(sample(0, true, 10)), None, "no format yet");
        f.set_format(format());
        for i in 1..4 {
            assert_eq!(f.push(sample(i, false, 10)), None);
        }
        assert_eq!(f.push(sample(4, true, 10)), None);
        let fragment = f.finish().unwrap();
        assert_eq!(fragment.samples.len(), 1);
        assert_eq!(fragment.samples[0].pts_us, 400_000);
        assert_eq!(f.stats().samples_before_keyframe_dropped, 4);
    }

    #[test]
    fn the_byte_cap_bounds_every_encoded_fragment() {
        let bytes_max = 4096;
        let mut f = Fragmenter::new(FragmentLimits {
            bytes_max,
            ..limits()
        });
        f.set_format(format());
        let fragments = run(&mut f, 40, 20, 1000);
        assert!(fragments.len() >= 10);
        assert!(fragments.iter().all(|f| f.encoded_len() <= bytes_max));
        assert_eq!(fragments.iter().map(|f| f.samples.len()).sum::<usize>(), 40);
        // A sample that alone is too large is dropped, and so is the rest of its GOP.
        assert_eq!(f.push(sample(40, true, bytes_max)), None);
        assert_eq!(f.push(sample(41, false, 10)), None);
        assert!(f.finish().is_none());
        assert_eq!(f.stats().samples_oversize_dropped, 1);
    }

    #[test]
    fn a_format_change_flushes_and_waits_for_a_keyframe() {
        let mut f = Fragmenter::new(limits());
        f.set_format(format());
        f.push(sample(0, true, 10));
        f.push(sample(1, false, 10));
        let changed = StreamFormat {
            width: 1280,
            ..format()
        };
        let flushed = f.set_format(changed).unwrap();
        assert_eq!(flushed.samples.len(), 2);
        assert_eq!(f.push(sample(2, false, 10)), None);
        f.push(sample(3, true, 10));
        assert_eq!(f.finish().unwrap().width, 1280);
    }
}
