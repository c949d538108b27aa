//! Pure rules of a live consumer: which tracks may raise an event, and when the camera is armed.
//!
//! Time is always an argument (Unix milliseconds), so every rule is a deterministic function.
//! Zones are polygons in normalised frame coordinates (0..1, origin top-left); a track is inside
//! when the bottom-centre of its box (where a person stands) is inside the polygon. Schedules are
//! weekly ranges in a **fixed UTC offset** (`utc_offset_minutes`; daylight saving is not followed:
//! shift the offset when the clocks change). A manual arm/disarm overrides the schedule until it
//! is cleared.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::track::Track;

/// Vertices one zone polygon may have.
pub const ZONE_POINTS_MAX: usize = 64;
/// Zones one camera may have.
pub const ZONES_MAX: usize = 16;
/// Weekly ranges one schedule may have.
pub const SCHEDULE_RANGES_MAX: usize = 64;
const DAY_MS: u64 = 86_400_000;
const WEEK_MS: u64 = 7 * DAY_MS;

/// A rule that cannot be used as configured.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuleError {
    #[error("zone {0:?} needs 3 to {ZONE_POINTS_MAX} points, each inside 0..1")]
    Zone(String),
    #[error("too many zones (limit {ZONES_MAX})")]
    Zones,
    #[error("schedule range {0:?}: expected `mon 22:00-06:00` (days mon..sun, times HH:MM)")]
    Range(String),
    #[error("too many schedule ranges (limit {SCHEDULE_RANGES_MAX})")]
    Ranges,
}

/// A named polygon in normalised coordinates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Zone {
    pub name: String,
    pub points: Vec<[f32; 2]>,
}

impl Zone {
    pub fn validate(&self) -> Result<(), RuleError> {
        let inside = |p: &[f32; 2]| (0.0..=1.0).contains(&p[0]) && (0.0..=1.0).contains(&p[1]);
        let n = self.points.len();
        if !(3..=ZONE_POINTS_MAX).contains(&n) || !self.points.iter().all(inside) {
            return Err(RuleError::Zone(self.name.clone()));
        }
        Ok(())
    }

    /// Whether a normalised point is inside (even-odd ray casting).
    pub fn contains(&self, x: f32, y: f32) -> bool {
        let pts = &self.points;
        let mut inside = false;
        let mut j = pts.len().wrapping_sub(1);
        for i in 0..pts.len() {
            let ([xi, yi], [xj, yj]) = (pts[i], pts[j]);
            if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                inside = !inside;
            }
            j = i;
        }
        inside
    }
}

/// One weekly range: from `start` to `end` minutes of the week (Monday 00:00 is 0); a range may
/// wrap past Sunday midnight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeeklyRange {
    pub start_min: u32,
    pub end_min: u32,
}

impl WeeklyRange {
    /// Parses `mon 22:00-06:00` (the end on the next day when earlier than the start) or
    /// `daily 08:00-18:00` (seven ranges).
    pub fn parse(text: &str) -> Result<Vec<WeeklyRange>, RuleError> {
        let bad = || RuleError::Range(text.to_string());
        let (day, times) = text.trim().split_once(' ').ok_or_else(bad)?;
        let (from, to) = times.trim().split_once('-').ok_or_else(bad)?;
        let (from, to) = (hhmm(from).ok_or_else(bad)?, hhmm(to).ok_or_else(bad)?);
        let days: Vec<u32> = match day.to_ascii_lowercase().as_str() {
            "daily" => (0..7).collect(),
            d => vec![day_index(d).ok_or_else(bad)?],
        };
        let length = if to > from {
            to - from
        } else {
            1440 - from + to
        };
        Ok(days
            .into_iter()
            .map(|d| {
                let start_min = d * 1440 + from;
                WeeklyRange {
                    start_min,
                    end_min: (start_min + length) % (7 * 1440),
                }
            })
            .collect())
    }

    fn contains(&self, minute_of_week: u32) -> bool {
        if self.start_min < self.end_min {
            (self.start_min..self.end_min).contains(&minute_of_week)
        } else {
            minute_of_week >= self.start_min || minute_of_week < self.end_min
        }
    }
}

fn hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn day_index(d: &str) -> Option<u32> {
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .position(|x| *x == d)
        .map(|i| i as u32)
}

/// When a camera is armed: always (no ranges) or inside any weekly range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    pub ranges: Vec<WeeklyRange>,
    pub utc_offset_minutes: i32,
}

impl Schedule {
    /// A schedule from range texts; no ranges means always armed.
    pub fn parse(ranges: &[String], utc_offset_minutes: i32) -> Result<Schedule, RuleError> {
        let mut out = Vec::new();
        for r in ranges {
            out.extend(WeeklyRange::parse(r)?);
        }
        if out.len() > SCHEDULE_RANGES_MAX {
            return Err(RuleError::Ranges);
        }
        Ok(Schedule {
            ranges: out,
            utc_offset_minutes,
        })
    }

    /// Whether the schedule arms the camera at `now_ms` (Unix milliseconds).
    pub fn armed_at(&self, now_ms: u64) -> bool {
        if self.ranges.is_empty() {
            return true;
        }
        let local = now_ms as i64 + i64::from(self.utc_offset_minutes) * 60_000;
        // 1970-01-01 was a Thursday: shift by three days so Monday starts the week.
        let of_week = (local + 3 * DAY_MS as i64).rem_euclid(WEEK_MS as i64) as u64;
        let minute = (of_week / 60_000) as u32;
        self.ranges.iter().any(|r| r.contains(minute))
    }
}

/// Manual arm/disarm per stream, shared by the API and the consumers.
#[derive(Debug, Default)]
pub struct ArmSwitch {
    overrides: RwLock<BTreeMap<String, bool>>,
}

impl ArmSwitch {
    /// Forces a stream armed (`Some(true)`), disarmed (`Some(false)`), or back to its schedule.
    pub fn set(&self, stream: &str, armed: Option<bool>) {
        let mut map = self.overrides.write().unwrap_or_else(|e| e.into_inner());
        match armed {
            Some(a) => map.insert(stream.to_string(), a),
            None => map.remove(stream),
        };
    }

    pub fn get(&self, stream: &str) -> Option<bool> {
        let map = self.overrides.read().unwrap_or_else(|e| e.into_inner());
        map.get(stream).copied()
    }
}

/// Whether a stream is armed: the manual override first, then the schedule.
pub fn is_armed(manual: Option<bool>, schedule: &Schedule, now_ms: u64) -> bool {
    manual.unwrap_or_else(|| schedule.armed_at(now_ms))
}

/// The per-camera filter on tracks.
#[derive(Debug, Clone, Default)]
pub struct TrackFilter {
    /// Class indexes that may raise events; empty means every class the model reports.
    pub classes: Vec<usize>,
    pub score_min: f32,
    /// Zones; empty means the whole frame.
    pub zones: Vec<Zone>,
}

impl TrackFilter {
    /// The zone a track stands in (`Some("")` when no zones are configured), or `None` when the
    /// track may not raise an event.
    pub fn admit(&self, t: &Track, frame_w: u32, frame_h: u32) -> Option<String> {
        if !self.classes.is_empty() && !self.classes.contains(&t.class) {
            return None;
        }
        if t.best_score < self.score_min {
            return None;
        }
        if self.zones.is_empty() {
            return Some(String::new());
        }
        let x = (t.bbox.x1 + t.bbox.x2) / 2.0 / frame_w.max(1) as f32;
        let y = t.bbox.y2 / frame_h.max(1) as f32;
        self.zones
            .iter()
            .find(|z| z.contains(x, y))
            .map(|z| z.name.clone())
    }
}

/// Per-track cooldown: a track that raised an event raises no other until `cooldown_ms` after
/// its last one (bounded map; old entries are dropped first).
#[derive(Debug, Default)]
pub struct Cooldown {
    last_ms: BTreeMap<u64, u64>,
}

/// Tracks remembered by [`Cooldown`].
pub const COOLDOWN_TRACKS_MAX: usize = 1024;

impl Cooldown {
    /// Whether track `id` may raise an event at `now_ms`; records it when it may.
    pub fn allow(&mut self, id: u64, now_ms: u64, cooldown_ms: u64) -> bool {
        if let Some(&last) = self.last_ms.get(&id) {
            if now_ms < last.saturating_add(cooldown_ms) {
                return false;
            }
        }
        if self.last_ms.len() >= COOLDOWN_TRACKS_MAX {
            self.last_ms.pop_first();
        }
        self.last_ms.insert(id, now_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::BoxXyxy;

    fn track(x1: f32, y1: f32, x2: f32, y2: f32) -> Track {
        Track {
            id: 1,
            class: 0,
            bbox: BoxXyxy { x1, y1, x2, y2 },
            first_ms: 0,
            last_ms: 0,
            hits: 3,
            best_score: 0.8,
        }
    }

    fn left_half() -> Zone {
        Zone {
            name: "left".into(),
            points: vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]],
        }
    }

    #[test]
    fn zone_uses_the_bottom_centre() {
        let f = TrackFilter {
            zones: vec![left_half()],
            ..TrackFilter::default()
        };
        // Box spans both halves but its bottom-centre (x=40%) is on the left.
        assert_eq!(
            f.admit(&track(10.0, 0.0, 70.0, 90.0), 100, 100),
            Some("left".into())
        );
        assert_eq!(f.admit(&track(60.0, 0.0, 90.0, 90.0), 100, 100), None);
        let whole = TrackFilter::default();
        assert_eq!(
            whole.admit(&track(60.0, 0.0, 90.0, 90.0), 100, 100),
            Some(String::new())
        );
    }

    #[test]
    fn triangle_contains() {
        let z = Zone {
            name: "t".into(),
            points: vec![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
        };
        assert!(z.contains(0.2, 0.2));
        assert!(!z.contains(0.8, 0.8));
        assert!(z.validate().is_ok());
        let bad = Zone {
            name: "b".into(),
            points: vec![[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]],
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn class_and_score_filter() {
        let f = TrackFilter {
            classes: vec![0],
            score_min: 0.9,
            zones: vec![],
        };
        assert_eq!(f.admit(&track(0.0, 0.0, 1.0, 1.0), 10, 10), None);
        let f = TrackFilter {
            score_min: 0.5,
            ..f
        };
        assert!(f.admit(&track(0.0, 0.0, 1.0, 1.0), 10, 10).is_some());
        let mut t = track(0.0, 0.0, 1.0, 1.0);
        t.class = 2;
        assert_eq!(f.admit(&t, 10, 10), None);
    }

    /// Unix ms of 2024-01-01 (a Monday) at hh:mm UTC.
    fn monday(hh: u64, mm: u64) -> u64 {
        1_704_067_200_000 + (hh * 60 + mm) * 60_000
    }

    #[test]
    fn schedule_ranges_and_offsets() {
        let s = Schedule::parse(&["mon 22:00-06:00".into()], 0).unwrap();
        assert!(!s.armed_at(monday(21, 59)));
        assert!(s.armed_at(monday(22, 0)));
        assert!(s.armed_at(monday(24 + 5, 59)));
        assert!(!s.armed_at(monday(24 + 6, 0)));
        // The same wall-clock range at UTC+2 is two hours earlier in UTC.
        let s2 = Schedule::parse(&["mon 22:00-06:00".into()], 120).unwrap();
        assert!(s2.armed_at(monday(20, 0)));
        assert!(!s2.armed_at(monday(19, 59)));
        // Sunday night wraps into Monday.
        let s3 = Schedule::parse(&["sun 23:00-01:00".into()], 0).unwrap();
        assert!(s3.armed_at(monday(0, 30)));
        assert!(!s3.armed_at(monday(1, 0)));
        let daily = Schedule::parse(&["daily 08:00-18:00".into()], 0).unwrap();
        assert!(daily.armed_at(monday(24 * 3 + 9, 0)));
        assert!(!daily.armed_at(monday(24 * 3 + 19, 0)));
        assert!(Schedule::default().armed_at(monday(3, 0)));
        assert!(Schedule::parse(&["funday 01:00-02:00".into()], 0).is_err());
        assert!(Schedule::parse(&["mon 25:00-02:00".into()], 0).is_err());
    }

    #[test]
    fn manual_override_beats_the_schedule() {
        let off = Schedule::parse(&["mon 22:00-23:00".into()], 0).unwrap();
        let sw = ArmSwitch::default();
        assert!(!is_armed(sw.get("cam"), &off, monday(12, 0)));
        sw.set("cam", Some(true));
        assert!(is_armed(sw.get("cam"), &off, monday(12, 0)));
        sw.set("cam", Some(false));
        assert!(!is_armed(sw.get("cam"), &off, monday(22, 30)));
        sw.set("cam", None);
        assert!(is_armed(sw.get("cam"), &off, monday(22, 30)));
    }

    #[test]
    fn cooldown_per_track() {
        let mut c = Cooldown::default();
        assert!(c.allow(1, 0, 1_000));
        assert!(!c.allow(1, 500, 1_000));
        assert!(c.allow(2, 500, 1_000));
        assert!(c.allow(1, 1_000, 1_000));
    }
}
