//! The IoU tracker and the dwell rule that turns tracks into events.
//!
//! Both are deterministic cores: detections and the frame time go in, tracks and event intervals
//! come out. The tracker matches greedily by IoU; a track dies when unseen for `lost_ms`. The
//! rule raises an event once a track has been seen for `min_dwell_ms` (a passing shadow or one
//! bad frame never alerts), keeps it open while any qualified track lives, and merges a new
//! event into the previous one when it starts within `cooldown_ms` of its end (a person lost for
//! a moment behind a door is one visit, not two alerts).

use std::collections::BTreeSet;

use super::decode::{BoxXyxy, Detection};

/// Settings of the tracker.
#[derive(Debug, Clone, Copy)]
pub struct TrackerOptions {
    /// Least IoU for a detection to continue a track.
    pub iou_min: f32,
    /// A track unseen for longer than this ends.
    pub lost_ms: u64,
    /// Tracks alive at once; detections beyond it are ignored (a broken model, not a crowd).
    pub tracks_max: usize,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            iou_min: 0.3,
            lost_ms: 1_500,
            tracks_max: 64,
        }
    }
}

/// One tracked object.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub id: u64,
    pub class: usize,
    pub bbox: BoxXyxy,
    pub first_ms: u64,
    pub last_ms: u64,
    pub hits: u32,
    pub best_score: f32,
}

/// Greedy IoU tracker.
#[derive(Debug)]
pub struct Tracker {
    options: TrackerOptions,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    pub fn new(options: TrackerOptions) -> Self {
        Tracker {
            options,
            tracks: Vec::new(),
            next_id: 1,
        }
    }

    /// Tracks alive after the last update.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Feeds the detections of a frame at `now_ms`; ends tracks unseen for too long.
    pub fn update(&mut self, dets: &[Detection], now_ms: u64) {
        let lost_ms = self.options.lost_ms;
        self.tracks
            .retain(|t| now_ms.saturating_sub(t.last_ms) <= lost_ms);
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (ti, t) in self.tracks.iter().enumerate() {
            for (di, d) in dets.iter().enumerate() {
                let iou = t.bbox.iou(&d.bbox);
                if t.class == d.class && iou >= self.options.iou_min {
                    pairs.push((iou, ti, di));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut track_used = vec![false; self.tracks.len()];
        let mut det_used = vec![false; dets.len()];
        for (_, ti, di) in pairs {
            if track_used[ti] || det_used[di] {
                continue;
            }
            track_used[ti] = true;
            det_used[di] = true;
            let (t, d) = (&mut self.tracks[ti], &dets[di]);
            t.bbox = d.bbox;
            t.last_ms = now_ms;
            t.hits = t.hits.saturating_add(1);
            t.best_score = t.best_score.max(d.score);
        }
        for (d, _) in dets.iter().zip(&det_used).filter(|(_, used)| !**used) {
            if self.tracks.len() >= self.options.tracks_max {
                break;
            }
            self.tracks.push(Track {
                id: self.next_id,
                class: d.class,
                bbox: d.bbox,
                first_ms: now_ms,
                last_ms: now_ms,
                hits: 1,
                best_score: d.score,
            });
            self.next_id += 1;
        }
    }
}

/// Settings of the event rule.
#[derive(Debug, Clone, Copy)]
pub struct RuleOptions {
    /// A track must be seen over at least this span (and twice) to raise an event.
    pub min_dwell_ms: u64,
    /// A new event starting within this time of the previous one's end extends it instead.
    pub cooldown_ms: u64,
}

impl Default for RuleOptions {
    fn default() -> Self {
        RuleOptions {
            min_dwell_ms: 1_000,
            cooldown_ms: 2_000,
        }
    }
}

/// A raised event: an interval during which a qualified track was present.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventSpan {
    pub start_ms: u64,
    pub end_ms: u64,
    pub class: usize,
    /// Best detection score of the event's tracks.
    pub score: f32,
}

/// Turns tracks into event intervals.
#[derive(Debug)]
pub struct EventRule {
    options: RuleOptions,
    qualified: BTreeSet<u64>,
    open: Option<EventSpan>,
    closed: Vec<EventSpan>,
}

impl EventRule {
    pub fn new(options: RuleOptions) -> Self {
        EventRule {
            options,
            qualified: BTreeSet::new(),
            open: None,
            closed: Vec::new(),
        }
    }

    /// Whether an event is open now.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Looks at the tracks alive after the frame at `now_ms`. Returns true when an event opened
    /// at this frame (the moment to alert).
    pub fn observe(&mut self, tracks: &[Track], now_ms: u64) -> bool {
        self.qualified
            .retain(|id| tracks.iter().any(|t| t.id == *id));
        let mut opened = false;
        for t in tracks.iter().filter(|t| t.last_ms == now_ms) {
            let dwelt = t.last_ms - t.first_ms >= self.options.min_dwell_ms && t.hits >= 2;
            if dwelt || self.qualified.contains(&t.id) {
                self.qualified.insert(t.id);
                opened |= self.extend(t, now_ms);
            }
        }
        if self.qualified.is_empty() {
            self.close();
        }
        opened
    }

    fn extend(&mut self, t: &Track, now_ms: u64) -> bool {
        if let Some(ev) = self.open.as_mut() {
            ev.end_ms = now_ms;
            ev.score = ev.score.max(t.best_score);
            return false;
        }
        let cooldown = self.options.cooldown_ms;
        let resumed = match self.closed.last() {
            Some(last) if last.class == t.class && last.end_ms + cooldown >= t.first_ms => {
                self.closed.pop()
            }
            _ => None,
        };
        let fresh = resumed.is_none();
        let mut ev = resumed.unwrap_or(EventSpan {
            start_ms: t.first_ms,
            end_ms: now_ms,
            class: t.class,
            score: t.best_score,
        });
        ev.end_ms = now_ms;
        ev.score = ev.score.max(t.best_score);
        self.open = Some(ev);
        fresh
    }

    fn close(&mut self) {
        if let Some(ev) = self.open.take() {
            self.closed.push(ev);
        }
    }

    /// Closes any open event and returns all events, oldest first.
    pub fn finish(mut self) -> Vec<EventSpan> {
        self.close();
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(x: f32, score: f32) -> Detection {
        Detection {
            bbox: BoxXyxy {
                x1: x,
                y1: 0.0,
                x2: x + 50.0,
                y2: 100.0,
            },
            score,
            class: 0,
        }
    }

    #[test]
    fn tracker_follows_moving_box_and_splits_far_ones() {
        let mut tr = Tracker::new(TrackerOptions::default());
        tr.update(&[person(0.0, 0.8)], 0);
        tr.update(&[person(5.0, 0.9), person(300.0, 0.7)], 200);
        assert_eq!(tr.tracks().len(), 2);
        let first = &tr.tracks()[0];
        assert_eq!((first.id, first.hits, first.best_score), (1, 2, 0.9));
        tr.update(&[], 1_600);
        assert_eq!(tr.tracks().len(), 2, "still within lost_ms");
        tr.update(&[], 1_800);
        assert!(tr.tracks().is_empty());
    }

    fn run(frames: &[(u64, bool)], options: RuleOptions) -> Vec<EventSpan> {
        let mut tr = Tracker::new(TrackerOptions::default());
        let mut rule = EventRule::new(options);
        for &(t, present) in frames {
            let dets = if present {
                vec![person(10.0, 0.8)]
            } else {
                vec![]
            };
            tr.update(&dets, t);
            rule.observe(tr.tracks(), t);
        }
        rule.finish()
    }

    fn every_200ms(from: u64, to: u64, present: bool) -> Vec<(u64, bool)> {
        (from..to).step_by(200).map(|t| (t, present)).collect()
    }

    #[test]
    fn short_blips_do_not_raise_events() {
        let mut frames = every_200ms(0, 400, true);
        frames.extend(every_200ms(400, 5_000, false));
        assert!(run(&frames, RuleOptions::default()).is_empty());
    }

    #[test]
    fn dwell_raises_one_event_and_cooldown_merges_a_short_gap() {
        let mut frames = every_200ms(0, 3_000, true);
        // Lost at 4.4 s (1.6 s unseen), back at 4.6 s: within the 2 s cooldown of 2.8 s.
        frames.extend(every_200ms(3_000, 4_600, false));
        frames.extend(every_200ms(4_600, 8_000, true));
        let events = run(&frames, RuleOptions::default());
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!((events[0].start_ms, events[0].end_ms), (0, 7_800));
        let apart = run(
            &frames,
            RuleOptions {
                cooldown_ms: 500,
                ..RuleOptions::default()
            },
        );
        assert_eq!(apart.len(), 2);
        assert_eq!(apart[1].start_ms, 4_600);
    }
}
