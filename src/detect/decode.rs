//! Output decoders (YOLOX and YOLOv8-style) and greedy non-maximum suppression.
//!
//! Decoders turn a raw output tensor into candidate boxes in model-input pixels; the letterbox
//! maps them back to frame pixels. Pure functions over slices; every loop is bounded by the
//! tensor's checked shape.

use super::DetectError;
use super::model::DecoderKind;

/// Candidates kept before NMS: NMS is quadratic, and a flood of boxes means a broken model.
pub const CANDIDATES_MAX: usize = 4096;

/// An axis-aligned box, corners in pixels.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BoxXyxy {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BoxXyxy {
    pub fn area(&self) -> f32 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }

    pub fn iou(&self, other: &BoxXyxy) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

/// One detected object.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Detection {
    pub bbox: BoxXyxy,
    pub score: f32,
    /// Class index in the model's class list.
    pub class: usize,
}

/// A decoder family with what it needs to know about the input.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub kind: DecoderKind,
    pub strides: Vec<u32>,
    pub input_width: u32,
    pub input_height: u32,
}

impl Decoder {
    /// Candidates of the given classes scoring at least `threshold`, in input pixels, before NMS.
    pub fn decode(
        &self,
        shape: &[i64],
        data: &[f32],
        classes: &[usize],
        threshold: f32,
    ) -> Result<Vec<Detection>, DetectError> {
        let out = match self.kind {
            DecoderKind::Yolox => self.yolox(shape, data, classes, threshold)?,
            DecoderKind::Yolov8 => yolov8(shape, data, classes, threshold)?,
        };
        Ok(out)
    }

    fn yolox(
        &self,
        shape: &[i64],
        data: &[f32],
        classes: &[usize],
        threshold: f32,
    ) -> Result<Vec<Detection>, DetectError> {
        let grids: Vec<(u32, u32, u32)> = self
            .strides
            .iter()
            .map(|&s| (self.input_width / s, self.input_height / s, s))
            .collect();
        let rows: usize = grids.iter().map(|(w, h, _)| (*w * *h) as usize).sum();
        let (n, width) = match shape {
            [1, n, w] if *n as usize == rows && *w >= 6 => (rows, *w as usize),
            _ => return Err(shape_error(shape, format!("[1,{rows},5+classes]"))),
        };
        check_len(data, n * width, shape)?;
        let mut out = Vec::new();
        let mut row = 0usize;
        for (gw, gh, s) in grids {
            let s = s as f32;
            for gy in 0..gh {
                for gx in 0..gw {
                    let r = &data[row * width..(row + 1) * width];
                    row += 1;
                    let obj = r[4];
                    for &c in classes.iter().filter(|&&c| 5 + c < width) {
                        let score = obj * r[5 + c];
                        if score < threshold || out.len() >= CANDIDATES_MAX {
                            continue;
                        }
                        let cx = (r[0] + gx as f32) * s;
                        let cy = (r[1] + gy as f32) * s;
                        let (w, h) = (r[2].exp() * s, r[3].exp() * s);
                        out.push(centre_box(cx, cy, w, h, score, c));
                    }
                }
            }
        }
        Ok(out)
    }
}

fn yolov8(
    shape: &[i64],
    data: &[f32],
    classes: &[usize],
    threshold: f32,
) -> Result<Vec<Detection>, DetectError> {
    let (attrs, n) = match shape {
        [1, a, n] if *a >= 5 && *n >= 1 => (*a as usize, *n as usize),
        _ => return Err(shape_error(shape, "[1,4+classes,N]".into())),
    };
    check_len(data, attrs * n, shape)?;
    let at = |k: usize, i: usize| data[k * n + i];
    let mut out = Vec::new();
    for i in 0..n {
        for &c in classes.iter().filter(|&&c| 4 + c < attrs) {
            let score = at(4 + c, i);
            if score >= threshold && out.len() < CANDIDATES_MAX {
                out.push(centre_box(at(0, i), at(1, i), at(2, i), at(3, i), score, c));
            }
        }
    }
    Ok(out)
}

fn centre_box(cx: f32, cy: f32, w: f32, h: f32, score: f32, class: usize) -> Detection {
    Detection {
        bbox: BoxXyxy {
            x1: cx - w / 2.0,
            y1: cy - h / 2.0,
            x2: cx + w / 2.0,
            y2: cy + h / 2.0,
        },
        score,
        class,
    }
}

fn check_len(data: &[f32], want: usize, shape: &[i64]) -> Result<(), DetectError> {
    if data.len() == want {
        Ok(())
    } else {
        Err(shape_error(shape, format!("{want} values")))
    }
}

fn shape_error(shape: &[i64], expected: String) -> DetectError {
    DetectError::OutputShape {
        name: "output".into(),
        shape: shape.to_vec(),
        expected,
    }
}

/// Greedy NMS per class: keeps the best box and drops others of its class overlapping it by more
/// than `iou_max`. Output is sorted by score, best first.
pub fn nms(mut dets: Vec<Detection>, iou_max: f32) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<Detection> = Vec::new();
    for d in dets {
        let suppressed = keep
            .iter()
            .any(|k| k.class == d.class && k.bbox.iou(&d.bbox) > iou_max);
        if !suppressed {
            keep.push(d);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x1: f32, y1: f32, x2: f32, y2: f32, score: f32) -> Detection {
        Detection {
            bbox: BoxXyxy { x1, y1, x2, y2 },
            score,
            class: 0,
        }
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = det(0.0, 0.0, 10.0, 10.0, 1.0).bbox;
        let b = det(5.0, 0.0, 15.0, 10.0, 1.0).bbox;
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(a.iou(&det(20.0, 20.0, 30.0, 30.0, 1.0).bbox), 0.0);
    }

    #[test]
    fn nms_keeps_best_of_overlapping_and_separate_boxes() {
        let out = nms(
            vec![
                det(0.0, 0.0, 10.0, 10.0, 0.6),
                det(1.0, 0.0, 11.0, 10.0, 0.9),
                det(50.0, 50.0, 60.0, 60.0, 0.7),
            ],
            0.45,
        );
        let scores: Vec<f32> = out.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.7]);
    }

    fn yolox32() -> Decoder {
        Decoder {
            kind: DecoderKind::Yolox,
            strides: vec![8, 16, 32],
            input_width: 32,
            input_height: 32,
        }
    }

    #[test]
    fn yolox_decodes_grid_offsets_and_strides() {
        // 32x32 input: 16 + 4 + 1 rows; 2 classes -> 7 values a row.
        let mut data = vec![0.0f32; 21 * 7];
        // Row 5 is stride 8, gx = 1, gy = 1: centre (1.5+1)*8 = 20, size exp(0)*8 = 8.
        data[5 * 7..6 * 7].copy_from_slice(&[1.5, 1.5, 0.0, 0.0, 0.9, 0.8, 0.1]);
        // Row 20 is stride 32 (the single cell); a class-1 object only.
        data[20 * 7..21 * 7].copy_from_slice(&[0.5, 0.5, 0.0, 0.0, 0.9, 0.1, 0.9]);
        let out = yolox32().decode(&[1, 21, 7], &data, &[0], 0.5).unwrap();
        assert_eq!(out.len(), 1);
        assert!((out[0].score - 0.72).abs() < 1e-6);
        assert_eq!(
            out[0].bbox,
            BoxXyxy {
                x1: 16.0,
                y1: 16.0,
                x2: 24.0,
                y2: 24.0
            }
        );
        let both = yolox32().decode(&[1, 21, 7], &data, &[0, 1], 0.5).unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(both[1].class, 1);
    }

    #[test]
    fn yolox_rejects_wrong_shapes() {
        let data = vec![0.0f32; 20 * 7];
        assert!(yolox32().decode(&[1, 20, 7], &data, &[0], 0.5).is_err());
        assert!(yolox32().decode(&[1, 21, 7], &data, &[0], 0.5).is_err());
    }

    #[test]
    fn yolov8_decodes_attribute_major_output() {
        // [1, 4 + 2, 3]: attribute-major, three candidates.
        let n = 3;
        let mut data = vec![0.0f32; 6 * n];
        let set = |d: &mut Vec<f32>, k: usize, i: usize, v: f32| d[k * n + i] = v;
        for (k, v) in [(0, 100.0), (1, 50.0), (2, 20.0), (3, 40.0), (4, 0.95)] {
            set(&mut data, k, 1, v);
        }
        let dec = Decoder {
            kind: DecoderKind::Yolov8,
            strides: vec![],
            input_width: 640,
            input_height: 640,
        };
        let out = dec.decode(&[1, 6, 3], &data, &[0], 0.5).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].bbox,
            BoxXyxy {
                x1: 90.0,
                y1: 30.0,
                x2: 110.0,
                y2: 70.0
            }
        );
    }
}
