//! Letterbox pre-processing: resize a packed BGR frame into the model's input tensor.
//!
//! The resize is bilinear with half-pixel centres and no anti-aliasing (the kernel OpenCV's
//! `INTER_LINEAR` uses), because that is what the models were evaluated with; an anti-aliased
//! kernel blurs small people and moves scores. Pure functions, no allocation beyond the outputs.

use super::decode::BoxXyxy;
use super::model::{ChannelOrder, LetterboxRule, ModelSpec};
use super::source::Frame;

/// How a frame sits on the model's input canvas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Input pixels per frame pixel.
    pub scale: f64,
    /// Resized image size on the canvas.
    pub width: u32,
    pub height: u32,
    /// Top-left corner of the resized image on the canvas.
    pub pad_x: u32,
    pub pad_y: u32,
}

impl Letterbox {
    /// The fit of a `src_w`x`src_h` frame into a `dst_w`x`dst_h` canvas, keeping the aspect ratio.
    /// Sizes truncate like `int(w * r)` so boxes agree with the reference implementation.
    pub fn fit(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32, rule: LetterboxRule) -> Self {
        let scale = (f64::from(dst_h) / f64::from(src_h)).min(f64::from(dst_w) / f64::from(src_w));
        let width = ((f64::from(src_w) * scale) as u32).clamp(1, dst_w);
        let height = ((f64::from(src_h) * scale) as u32).clamp(1, dst_h);
        let (pad_x, pad_y) = match rule {
            LetterboxRule::TopLeft => (0, 0),
            LetterboxRule::Centre => ((dst_w - width) / 2, (dst_h - height) / 2),
        };
        Letterbox {
            scale,
            width,
            height,
            pad_x,
            pad_y,
        }
    }

    /// Maps a box from input-canvas pixels back to frame pixels, clipped to the frame.
    pub fn unmap(&self, b: BoxXyxy, frame_w: u32, frame_h: u32) -> BoxXyxy {
        let s = self.scale as f32;
        let (px, py) = (self.pad_x as f32, self.pad_y as f32);
        let (fw, fh) = (frame_w as f32, frame_h as f32);
        BoxXyxy {
            x1: ((b.x1 - px) / s).clamp(0.0, fw),
            y1: ((b.y1 - py) / s).clamp(0.0, fh),
            x2: ((b.x2 - px) / s).clamp(0.0, fw),
            y2: ((b.y2 - py) / s).clamp(0.0, fh),
        }
    }
}

/// Bilinear resize of packed 3-channel pixels (half-pixel centres, edge clamped).
pub fn resize_bilinear(src: &[u8], sw: u32, sh: u32, dw: u32, dh: u32) -> Vec<u8> {
    let (sw, sh, dw, dh) = (sw as usize, sh as usize, dw as usize, dh as usize);
    let taps = |d: usize, s: usize| -> Vec<(usize, usize, f32)> {
        let ratio = s as f64 / d as f64;
        (0..d)
            .map(|i| {
                let pos = ((i as f64 + 0.5) * ratio - 0.5).max(0.0);
                let i0 = (pos.floor() as usize).min(s - 1);
                let i1 = (i0 + 1).min(s - 1);
                (i0, i1, (pos - i0 as f64).min(1.0) as f32)
            })
            .collect()
    };
    let xs = taps(dw, sw);
    let ys = taps(dh, sh);
    let mut out = vec![0u8; dw * dh * 3];
    for (y, &(y0, y1, fy)) in ys.iter().enumerate() {
        let row0 = &src[y0 * sw * 3..(y0 + 1) * sw * 3];
        let row1 = &src[y1 * sw * 3..(y1 + 1) * sw * 3];
        let dst = &mut out[y * dw * 3..(y + 1) * dw * 3];
        for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let top = lerp(row0[x0 * 3 + c], row0[x1 * 3 + c], fx);
                let bottom = lerp(row1[x0 * 3 + c], row1[x1 * 3 + c], fx);
                dst[x * 3 + c] = (top + (bottom - top) * fy).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

fn lerp(a: u8, b: u8, t: f32) -> f32 {
    let a = f32::from(a);
    a + (f32::from(b) - a) * t
}

/// Fills `input` (NCHW, 1x3xHxW) from a BGR frame and returns the letterbox used.
pub fn fill_input(frame: &Frame, spec: &ModelSpec, input: &mut Vec<f32>) -> Letterbox {
    let (iw, ih) = (spec.input_width, spec.input_height);
    let lb = Letterbox::fit(frame.width, frame.height, iw, ih, spec.letterbox);
    let resized = resize_bilinear(&frame.bgr, frame.width, frame.height, lb.width, lb.height);
    let plane = (iw * ih) as usize;
    input.clear();
    input.resize(plane * 3, 0.0);
    // Channel c of the tensor reads BGR channel `src_c[c]`.
    let src_c = match spec.channel_order {
        ChannelOrder::Bgr => [0, 1, 2],
        ChannelOrder::Rgb => [2, 1, 0],
    };
    for c in 0..3 {
        let fill = normalise(spec.letterbox_fill, c, spec);
        let dst = &mut input[c * plane..(c + 1) * plane];
        dst.fill(fill);
        for y in 0..lb.height as usize {
            let row = (y + lb.pad_y as usize) * iw as usize + lb.pad_x as usize;
            let src_row = &resized[y * lb.width as usize * 3..];
            for x in 0..lb.width as usize {
                dst[row + x] = normalise(src_row[x * 3 + src_c[c]], c, spec);
            }
        }
    }
    lb
}

fn normalise(v: u8, channel: usize, spec: &ModelSpec) -> f32 {
    let mut f = f32::from(v) * spec.scale;
    if let Some(mean) = spec.mean {
        f -= mean[channel];
    }
    if let Some(std) = spec.std {
        f /= std[channel];
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_truncates_like_the_reference() {
        let lb = Letterbox::fit(768, 432, 416, 416, LetterboxRule::TopLeft);
        assert_eq!((lb.width, lb.pad_x, lb.pad_y), (416, 0, 0));
        assert_eq!(lb.height, (432.0 * (416.0f64 / 768.0)) as u32);
        let lb = Letterbox::fit(640, 424, 416, 416, LetterboxRule::Centre);
        assert_eq!(lb.width, 416);
        assert_eq!(lb.pad_y, (416 - lb.height) / 2);
    }

    #[test]
    fn unmap_inverts_the_fit() {
        let lb = Letterbox::fit(800, 400, 416, 416, LetterboxRule::Centre);
        let b = BoxXyxy {
            x1: 52.0,
            y1: lb.pad_y as f32 + 26.0,
            x2: 104.0,
            y2: lb.pad_y as f32 + 52.0,
        };
        let back = lb.unmap(b, 800, 400);
        assert!((back.x1 - 100.0).abs() < 0.01 && (back.y1 - 50.0).abs() < 0.01);
        assert!((back.x2 - 200.0).abs() < 0.01 && (back.y2 - 100.0).abs() < 0.01);
    }

    #[test]
    fn resize_keeps_flat_colour_and_halves_a_ramp() {
        let flat: Vec<u8> = [10u8, 20, 30].repeat(8 * 4);
        let out = resize_bilinear(&flat, 8, 4, 4, 2);
        assert!(out.chunks(3).all(|p| p == [10, 20, 30]));
        // A horizontal ramp 0,10,..,70 halved samples between neighbours: 5, 25, 45, 65.
        let ramp: Vec<u8> = (0..8u8).flat_map(|x| [x * 10; 3]).collect();
        let out = resize_bilinear(&ramp, 8, 1, 4, 1);
        let firsts: Vec<u8> = out.chunks(3).map(|p| p[0]).collect();
        assert_eq!(firsts, vec![5, 25, 45, 65]);
    }
}
