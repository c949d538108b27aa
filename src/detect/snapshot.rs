//! Event snapshots: the frame as JPEG with the detection's box drawn on it (`image` crate).

use image::{ImageEncoder, Rgb, RgbImage};

use super::{BoxXyxy, DetectError, Frame};

/// JPEG quality of snapshots.
pub const SNAPSHOT_QUALITY: u8 = 85;
/// Box outline thickness, in pixels.
const LINE_PX: u32 = 3;
const BOX_COLOUR: Rgb<u8> = Rgb([255, 40, 40]);

/// Encodes `frame` as JPEG with `bbox` (frame pixels) outlined.
pub fn jpeg_with_box(frame: &Frame, bbox: &BoxXyxy) -> Result<Vec<u8>, DetectError> {
    let rgb: Vec<u8> = frame
        .bgr
        .chunks_exact(3)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    let mut img =
        RgbImage::from_raw(frame.width, frame.height, rgb).ok_or(DetectError::FrameSize {
            width: frame.width,
            height: frame.height,
        })?;
    draw_box(&mut img, bbox);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, SNAPSHOT_QUALITY)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| DetectError::Video(format!("snapshot encode: {e}")))?;
    Ok(out)
}

/// Outlines the box, clamped to the image.
fn draw_box(img: &mut RgbImage, b: &BoxXyxy) {
    let (w, h) = (img.width(), img.height());
    let clamp = |v: f32, max: u32| (v.max(0.0) as u32).min(max.saturating_sub(1));
    let (x1, x2) = (clamp(b.x1, w), clamp(b.x2, w));
    let (y1, y2) = (clamp(b.y1, h), clamp(b.y2, h));
    for t in 0..LINE_PX {
        for x in x1..=x2 {
            img.put_pixel(x, (y1 + t).min(h - 1), BOX_COLOUR);
            img.put_pixel(x, y2.saturating_sub(t), BOX_COLOUR);
        }
        for y in y1..=y2 {
            img.put_pixel((x1 + t).min(w - 1), y, BOX_COLOUR);
            img.put_pixel(x2.saturating_sub(t), y, BOX_COLOUR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_decodes_and_shows_the_box() {
        let frame = Frame::new(64, 48, vec![0; 64 * 48 * 3]).unwrap();
        let b = BoxXyxy {
            x1: 10.0,
            y1: 10.0,
            x2: 40.0,
            y2: 30.0,
        };
        let jpeg = jpeg_with_box(&frame, &b).unwrap();
        let img = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (64, 48));
        assert!(img.get_pixel(25, 11).0[0] > 150);
        assert!(img.get_pixel(25, 20).0[0] < 60);
    }
}
