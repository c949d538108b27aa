//! Cheap per-frame checks before inference: the brightness gain and the motion gate.
//!
//! Both work on a small gray copy of the frame ([`GATE_WIDTH`] pixels wide), so they cost a
//! fraction of a millisecond. Time is an argument (the frame's presentation time), never read
//! from a clock, so replays and live streams behave the same.

use super::source::Frame;

/// Width of the gray thumbnail the gate compares.
pub const GATE_WIDTH: u32 = 64;
/// Mean luma (0..255) under which a frame is brightened before inference.
pub const DARK_LUMA_MAX: f32 = 60.0;
/// Mean luma a dark frame is brought up to, at most [`GAIN_MAX`] times.
pub const GAIN_TARGET_LUMA: f32 = 110.0;
pub const GAIN_MAX: f32 = 4.0;

/// A small gray copy of a frame (ITU-R BT.601 luma), nearest-neighbour sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumb {
    pub width: u32,
    pub height: u32,
    pub luma: Vec<u8>,
}

impl Thumb {
    pub fn of(frame: &Frame) -> Self {
        let width = GATE_WIDTH.min(frame.width);
        let height =
            ((u64::from(frame.height) * u64::from(width) / u64::from(frame.width)) as u32).max(1);
        let mut luma = Vec::with_capacity((width * height) as usize);
        for ty in 0..height {
            let y = (u64::from(ty) * u64::from(frame.height) / u64::from(height)) as usize;
            for tx in 0..width {
                let x = (u64::from(tx) * u64::from(frame.width) / u64::from(width)) as usize;
                let i = (y * frame.width as usize + x) * 3;
                let (b, g, r) = (frame.bgr[i], frame.bgr[i + 1], frame.bgr[i + 2]);
                luma.push(luma_of(b, g, r));
            }
        }
        Thumb {
            width,
            height,
            luma,
        }
    }

    pub fn mean(&self) -> f32 {
        let sum: u64 = self.luma.iter().map(|&v| u64::from(v)).sum();
        sum as f32 / self.luma.len().max(1) as f32
    }
}

fn luma_of(b: u8, g: u8, r: u8) -> u8 {
    ((299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000) as u8
}

/// The gain for a frame of this mean luma: `min(4, 110 / mean)` when darker than 60, else 1.
pub fn gain_for(mean_luma: f32) -> f32 {
    if mean_luma >= DARK_LUMA_MAX {
        1.0
    } else if mean_luma <= GAIN_TARGET_LUMA / GAIN_MAX {
        GAIN_MAX
    } else {
        (GAIN_TARGET_LUMA / mean_luma).min(GAIN_MAX)
    }
}

/// Multiplies every channel by `gain`, saturating at 255.
pub fn apply_gain(bgr: &mut [u8], gain: f32) {
    if gain == 1.0 {
        return;
    }
    let table: Vec<u8> = (0..=255u16)
        .map(|v| (f32::from(v) * gain).round().min(255.0) as u8)
        .collect();
    for v in bgr.iter_mut() {
        *v = table[*v as usize];
    }
}

/// Motion gate settings.
#[derive(Debug, Clone, Copy)]
pub struct GateOptions {
    /// A thumbnail pixel counts as changed when its luma moved by more than this.
    pub pixel_delta_min: u8,
    /// Share of changed pixels (0..1) that counts as motion.
    pub changed_share_min: f32,
    /// Inference runs at least this often even without motion.
    pub heartbeat_ms: u64,
}

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            pixel_delta_min: 12,
            changed_share_min: 0.003,
            heartbeat_ms: 2_000,
        }
    }
}

/// Why the gate let a frame through (or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateDecision {
    /// The first frame, or one after a size change.
    First,
    Motion,
    Heartbeat,
    /// Objects are being tracked, so every sampled frame is inferred.
    Tracking,
    Skip,
}

impl GateDecision {
    pub fn infer(self) -> bool {
        self != GateDecision::Skip
    }
}

/// Frame differencing against the previous sampled frame, after the brightness gain (so a dark
/// scene's small changes are seen at the same scale the model sees them).
#[derive(Debug)]
pub struct MotionGate {
    options: GateOptions,
    previous: Option<Thumb>,
    last_inferred_ms: Option<u64>,
}

impl MotionGate {
    pub fn new(options: GateOptions) -> Self {
        MotionGate {
            options,
            previous: None,
            last_inferred_ms: None,
        }
    }

    /// Decides for the (already brightened) thumbnail of a frame at `now_ms`.
    pub fn check(&mut self, thumb: Thumb, now_ms: u64, tracking: bool) -> GateDecision {
        let previous = self.previous.replace(thumb);
        let current = self.previous.as_ref().map(|t| &t.luma);
        let decision = match (previous, current) {
            (Some(p), Some(c)) if p.luma.len() == c.len() => {
                if self.changed_share(&p.luma, c) >= self.options.changed_share_min {
                    GateDecision::Motion
                } else if tracking {
                    GateDecision::Tracking
                } else if self.heartbeat_due(now_ms) {
                    GateDecision::Heartbeat
                } else {
                    GateDecision::Skip
                }
            }
            _ => GateDecision::First,
        };
        if decision.infer() {
            self.last_inferred_ms = Some(now_ms);
        }
        decision
    }

    fn changed_share(&self, a: &[u8], b: &[u8]) -> f32 {
        let changed = a
            .iter()
            .zip(b)
            .filter(|(x, y)| x.abs_diff(**y) > self.options.pixel_delta_min)
            .count();
        changed as f32 / a.len().max(1) as f32
    }

    fn heartbeat_due(&self, now_ms: u64) -> bool {
        self.last_inferred_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= self.options.heartbeat_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(w: u32, h: u32, v: u8) -> Frame {
        Frame::new(w, h, vec![v; (w * h * 3) as usize]).unwrap()
    }

    #[test]
    fn gain_follows_the_rule() {
        assert_eq!(gain_for(100.0), 1.0);
        assert_eq!(gain_for(60.0), 1.0);
        assert!((gain_for(55.0) - 2.0).abs() < 1e-6);
        assert_eq!(gain_for(4.0), 4.0);
        assert_eq!(gain_for(0.0), 4.0);
        let mut px = vec![10u8, 100, 200];
        apply_gain(&mut px, 2.0);
        assert_eq!(px, vec![20, 200, 255]);
    }

    #[test]
    fn thumb_is_small_and_keeps_luma() {
        let t = Thumb::of(&flat(768, 432, 50));
        assert_eq!((t.width, t.height), (64, 36));
        assert_eq!(t.mean(), 50.0);
    }

    #[test]
    fn gate_skips_still_frames_and_beats() {
        let mut gate = MotionGate::new(GateOptions::default());
        let still = || Thumb::of(&flat(64, 36, 80));
        assert_eq!(gate.check(still(), 0, false), GateDecision::First);
        assert_eq!(gate.check(still(), 200, false), GateDecision::Skip);
        assert_eq!(gate.check(still(), 400, true), GateDecision::Tracking);
        assert_eq!(gate.check(still(), 2_300, false), GateDecision::Skip);
        assert_eq!(gate.check(still(), 2_400, false), GateDecision::Heartbeat);
        let mut moved = flat(64, 36, 80);
        moved.bgr[..64 * 3 * 4].fill(200);
        assert_eq!(
            gate.check(Thumb::of(&moved), 2_600, false),
            GateDecision::Motion
        );
    }
}
