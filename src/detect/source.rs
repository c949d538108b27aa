//! Frame sources: decoded BGR frames pulled one at a time.
//!
//! [`FrameSource`] is the seam between decoding and detection: `hydrant detect eval` reads a
//! file through GStreamer ([`GstFileSource`]); a server consumer can implement it over stored
//! fragments. Sources are pulled, so a slow consumer slows the decoder (the appsink holds at most
//! [`APPSINK_BUFFERS_MAX`] frames) instead of queueing frames.

use std::path::{Path, PathBuf};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::DetectError;

/// Frames the appsink may hold before the decoder blocks.
pub const APPSINK_BUFFERS_MAX: u32 = 2;
/// Longest wait for the next decoded frame before the source gives up.
pub const FRAME_WAIT_MS_MAX: u64 = 30_000;
/// How often a waiting source looks at the bus for errors.
const FRAME_POLL_MS: u64 = 100;
/// Largest frame accepted (8K UHD), in pixels.
pub const FRAME_PIXELS_MAX: u64 = 7680 * 4320;
/// Frame rate assumed for streams without timestamps (raw Annex-B files).
pub const UNTIMED_FPS: u64 = 25;

/// One decoded frame: packed BGR, rows without padding.
#[derive(Debug, Clone)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub bgr: Vec<u8>,
    /// Presentation time from the start of the source.
    pub pts_ms: u64,
    /// 0-based position in the decoded sequence.
    pub index: u64,
}

impl Frame {
    /// A frame from packed BGR bytes; refuses sizes that do not match or are out of range.
    pub fn new(width: u32, height: u32, bgr: Vec<u8>) -> Result<Self, DetectError> {
        check_size(width, height)?;
        if bgr.len() != width as usize * height as usize * 3 {
            return Err(DetectError::FrameSize { width, height });
        }
        Ok(Frame {
            width,
            height,
            bgr,
            pts_ms: 0,
            index: 0,
        })
    }

    /// Reads a JPEG or PNG still.
    pub fn from_image_file(path: &Path) -> Result<Self, DetectError> {
        let img = image::open(path).map_err(|e| DetectError::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let rgb = img.to_rgb8();
        let (w, h) = rgb.dimensions();
        let bgr = rgb
            .pixels()
            .flat_map(|p| [p.0[2], p.0[1], p.0[0]])
            .collect();
        Frame::new(w, h, bgr)
    }
}

fn check_size(width: u32, height: u32) -> Result<(), DetectError> {
    let pixels = u64::from(width) * u64::from(height);
    if width == 0 || height == 0 || pixels > FRAME_PIXELS_MAX {
        return Err(DetectError::FrameSize { width, height });
    }
    Ok(())
}

/// Something that yields decoded frames in presentation order.
pub trait FrameSource {
    /// The next frame, or `None` at the end of the source.
    fn next_frame(&mut self) -> Result<Option<Frame>, DetectError>;
}

/// Decodes a video file with GStreamer (`filesrc ! decodebin ! videoconvert ! BGR appsink`).
#[derive(Debug)]
pub struct GstFileSource {
    path: PathBuf,
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    index: u64,
    first_pts_ns: Option<u64>,
}

impl GstFileSource {
    pub fn open(path: &Path) -> Result<Self, DetectError> {
        if !path.is_file() {
            return Err(DetectError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        gst::init().map_err(|e| DetectError::Video(e.to_string()))?;
        let video = |e: &dyn std::fmt::Display| DetectError::Video(e.to_string());
        let desc = format!(
            "decodebin name=dec ! videoconvert ! video/x-raw,format=BGR ! appsink name=sink sync=false max-buffers={APPSINK_BUFFERS_MAX}"
        );
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| video(&e))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| video(&"not a pipeline"))?;
        let src = gst::ElementFactory::make("filesrc")
            .property("location", path.to_string_lossy().as_ref())
            .build()
            .map_err(|e| video(&e))?;
        let dec = pipeline
            .by_name("dec")
            .ok_or_else(|| video(&"no decodebin"))?;
        pipeline.add(&src).map_err(|e| video(&e))?;
        src.link(&dec).map_err(|e| video(&e))?;
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| video(&"no appsink"))?;
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| video(&e))?;
        Ok(GstFileSource {
            path: path.to_path_buf(),
            pipeline,
            sink,
            index: 0,
            first_pts_ns: None,
        })
    }

    /// The error posted on the bus, if any, to explain why no frame came.
    fn bus_error(&self) -> Option<DetectError> {
        let bus = self.pipeline.bus()?;
        while let Some(msg) = bus.pop() {
            if let gst::MessageView::Error(err) = msg.view() {
                return Some(DetectError::Video(format!(
                    "{}: {}",
                    self.path.display(),
                    err.error()
                )));
            }
        }
        None
    }

    fn frame_from_sample(&mut self, sample: &gst::Sample) -> Result<Frame, DetectError> {
        let bad = |what: &str| DetectError::Video(format!("{}: {what}", self.path.display()));
        let caps = sample.caps().ok_or_else(|| bad("sample without caps"))?;
        let info = gst_video::VideoInfo::from_caps(caps).map_err(|_| bad("unreadable caps"))?;
        let (w, h) = (info.width(), info.height());
        check_size(w, h)?;
        let buffer = sample
            .buffer()
            .ok_or_else(|| bad("sample without buffer"))?;
        let map = buffer
            .map_readable()
            .map_err(|_| bad("unmappable buffer"))?;
        let stride = usize::try_from(info.stride()[0]).map_err(|_| bad("negative stride"))?;
        let row = w as usize * 3;
        if stride < row || map.len() < stride * (h as usize - 1) + row {
            return Err(bad("buffer smaller than its caps"));
        }
        let mut bgr = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            bgr.extend_from_slice(&map[y * stride..y * stride + row]);
        }
        let pts_ms = match buffer.pts() {
            Some(pts) => {
                let first = *self.first_pts_ns.get_or_insert(pts.nseconds());
                pts.nseconds().saturating_sub(first) / 1_000_000
            }
            None => self.index * 1000 / UNTIMED_FPS,
        };
        let frame = Frame {
            width: w,
            height: h,
            bgr,
            pts_ms,
            index: self.index,
        };
        self.index += 1;
        Ok(frame)
    }
}

impl FrameSource for GstFileSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, DetectError> {
        // Short polls so a decode error on the bus is seen without waiting for the full limit.
        let poll = gst::ClockTime::from_mseconds(FRAME_POLL_MS);
        for _ in 0..FRAME_WAIT_MS_MAX / FRAME_POLL_MS {
            if let Some(sample) = self.sink.try_pull_sample(poll) {
                return self.frame_from_sample(&sample).map(Some);
            }
            if let Some(e) = self.bus_error() {
                return Err(e);
            }
            if self.sink.is_eos() {
                return Ok(None);
            }
        }
        Err(DetectError::Video(format!(
            "{}: no frame within {FRAME_WAIT_MS_MAX} ms",
            self.path.display()
        )))
    }
}

impl Drop for GstFileSource {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
