//! GetImages: still images sampled from stored fragments.
//!
//! Each wanted timestamp (start, start + interval, ... before end) is served from the fragment
//! that covers it: the fragment is muxed into a small MP4 with `media::mp4`, decoded with
//! GStreamer (`appsrc ! qtdemux ! h264parse ! avdec_h264 ! videoconvert ! RGB appsink`), and the
//! frame nearest the timestamp is scaled and encoded with the `image` crate. A timestamp no
//! fragment covers is `NO_MEDIA`; a fragment that fails to decode is `MEDIA_ERROR`.
//!
//! Bounds: at most [`IMAGES_RESULTS_MAX`] images per page, and decoding runs on the blocking
//! pool one request's fragments at a time, each decoded at most once per page.

use std::io::Cursor;

use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use image::{ImageFormat, RgbImage, codecs::jpeg::JpegEncoder, imageops::FilterType};
use serde_json::{Value, json};

use crate::fragment::{StreamName, UnixMillis};
use crate::media::{MediaFragment, mp4};
use crate::store::{FragmentSummary, Store, TimestampKind};

use super::json::Members;
use super::kvs::resolve_authorized;
use super::{ApiError, AppState, JsonBody, Principal, blocking};

/// Most images one page returns (the model's bound on MaxResults); also the default.
pub const IMAGES_RESULTS_MAX: i64 = 100;
/// Smallest sampling interval, in milliseconds.
pub const SAMPLING_INTERVAL_MS_MIN: i64 = 200;
/// Largest sampling interval accepted, in milliseconds.
pub const SAMPLING_INTERVAL_MS_MAX: i64 = 20_000;
/// Sampling interval when the request gives none, in milliseconds.
const SAMPLING_INTERVAL_MS_DEFAULT: i64 = 3_000;
/// JPEG quality when FormatConfig gives none.
const JPEG_QUALITY_DEFAULT: u8 = 80;
/// Longest time a fragment's decode may take before it counts as a media error, in seconds.
const DECODE_TIMEOUT_S: u64 = 30;

/// Decoded frames of one fragment: time from the fragment's start (µs) and picture.
type Frames = Vec<(i64, RgbImage)>;

/// Why one image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("decoding failed: {0}")]
    Decode(String),
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// A validated GetImages request.
#[derive(Debug, Clone, PartialEq)]
struct ImagesRequest {
    producer: bool,
    /// Next timestamp to sample (from NextToken when given).
    from: UnixMillis,
    end: UnixMillis,
    interval_ms: u64,
    png: bool,
    jpeg_quality: u8,
    width: Option<u32>,
    height: Option<u32>,
    max_results: usize,
}

fn parse_request(body: &Members) -> Result<ImagesRequest, ApiError> {
    let kind = body.required_enumeration(
        "ImageSelectorType",
        &["PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"],
    )?;
    let start = body.required_timestamp("StartTimestamp")?;
    let end = body.required_timestamp("EndTimestamp")?;
    if end <= start {
        return Err(ApiError::invalid(
            "EndTimestamp must be later than StartTimestamp.",
        ));
    }
    let format = body.required_enumeration("Format", &["JPEG", "PNG"])?;
    let interval_ms = body
        .integer(
            "SamplingInterval",
            SAMPLING_INTERVAL_MS_MIN,
            SAMPLING_INTERVAL_MS_MAX,
        )?
        .unwrap_or(SAMPLING_INTERVAL_MS_DEFAULT);
    let jpeg_quality = match body.object("FormatConfig")? {
        None => JPEG_QUALITY_DEFAULT,
        // FormatConfig is a map of strings: {"JPEGQuality": "80"}.
        Some(config) => match config.raw_string("JPEGQuality") {
            None => JPEG_QUALITY_DEFAULT,
            Some(text) => text
                .parse::<u8>()
                .ok()
                .filter(|q| (1..=100).contains(q))
                .ok_or_else(|| {
                    ApiError::invalid("JPEGQuality must be an integer from 1 to 100.")
                })?,
        },
    };
    let from =
        match body.raw_string("NextToken") {
            None => start,
            Some(token) => UnixMillis(token.parse().ok().filter(|ms| *ms >= start.0).ok_or_else(
                || ApiError::invalid("NextToken is not a token this server issued."),
            )?),
        };
    Ok(ImagesRequest {
        producer: kind == "PRODUCER_TIMESTAMP",
        from,
        end,
        interval_ms: interval_ms as u64,
        png: format == "PNG",
        jpeg_quality,
        width: body.integer("WidthPixels", 1, 3840)?.map(|w| w as u32),
        height: body.integer("HeightPixels", 1, 2160)?.map(|h| h as u32),
        max_results: body
            .integer("MaxResults", 1, IMAGES_RESULTS_MAX)?
            .unwrap_or(IMAGES_RESULTS_MAX) as usize,
    })
}

/// `POST /getImages`.
pub async fn get_images(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let request = parse_request(&body)?;
    let store = s.api.store.clone();
    blocking(move || {
        let info = resolve_authorized(&store, &principal, &body)?;
        images_page(&store, &info.name, &request)
    })
    .await
    .map(Json)
}

/// The timestamps one page samples, and where the next page starts (if anything is left).
fn sample_times(request: &ImagesRequest) -> (Vec<UnixMillis>, Option<UnixMillis>) {
    let mut times = Vec::new();
    let mut at = request.from.0;
    while at < request.end.0 && times.len() < request.max_results {
        times.push(UnixMillis(at));
        at += request.interval_ms;
    }
    let next = (at < request.end.0).then_some(UnixMillis(at));
    (times, next)
}

fn images_page(
    store: &Store,
    stream: &StreamName,
    request: &ImagesRequest,
) -> Result<Value, ApiError> {
    let (times, next) = sample_times(request);
    let kind = if request.producer {
        TimestampKind::Producer
    } else {
        TimestampKind::Server
    };
    let last = times.last().copied().unwrap_or(request.from);
    // Fragments starting up to 10 s (the longest fragment) before the first sample may cover it.
    let fragments = store.list_fragments(
        stream,
        kind,
        UnixMillis(request.from.0.saturating_sub(10_000)),
        last,
        None,
        crate::store::LIST_FRAGMENTS_MAX,
    )?;
    let mut decoded: Option<(u64, Result<Frames, ImageError>)> = None;
    let mut images = Vec::with_capacity(times.len());
    for at in times {
        let stamp = |f: &FragmentSummary| {
            if request.producer {
                f.producer_timestamp
            } else {
                f.server_timestamp
            }
        };
        let covering = fragments
            .iter()
            .rev()
            .find(|f| stamp(f) <= at && at.0 < stamp(f).0 + u64::from(f.duration_ms.max(1)));
        let Some(fragment) = covering else {
            images.push(json!({ "TimeStamp": secs(at), "Error": "NO_MEDIA" }));
            continue;
        };
        if decoded.as_ref().map(|(n, _)| *n) != Some(fragment.number.0) {
            decoded = Some((fragment.number.0, decode_fragment(store, stream, fragment)));
        }
        let offset_us = (at.0 - stamp(fragment).0) as i64 * 1000;
        let image = match decoded.as_ref().map(|(_, d)| d) {
            Some(Ok(frames)) => nearest(frames, offset_us).map(|f| encode(f, request)),
            _ => None,
        };
        images.push(match image {
            Some(Ok(bytes)) => {
                json!({ "TimeStamp": secs(at), "ImageContent": STANDARD.encode(bytes) })
            }
            _ => json!({ "TimeStamp": secs(at), "Error": "MEDIA_ERROR" }),
        });
    }
    let mut out = json!({ "Images": images });
    if let Some(next) = next {
        out["NextToken"] = Value::String(next.0.to_string());
    }
    Ok(out)
}

fn secs(at: UnixMillis) -> f64 {
    at.0 as f64 / 1000.0
}

fn nearest(frames: &[(i64, RgbImage)], offset_us: i64) -> Option<&RgbImage> {
    frames
        .iter()
        .min_by_key(|(pts, _)| pts.abs_diff(offset_us))
        .map(|(_, image)| image)
}

/// Every frame of the fragment, with its time from the fragment's start in microseconds.
fn decode_fragment(
    store: &Store,
    stream: &StreamName,
    fragment: &FragmentSummary,
) -> Result<Frames, ImageError> {
    let (_, payload) = store
        .read_fragment(stream, fragment.number)
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    let media = MediaFragment::decode(&payload).map_err(|e| ImageError::Decode(e.to_string()))?;
    let file = mp4::write_mp4(std::slice::from_ref(&media))
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    decode_mp4(file)
}

fn decode_mp4(file: Vec<u8>) -> Result<Frames, ImageError> {
    let err = |e: &dyn std::fmt::Display| ImageError::Decode(e.to_string());
    gst::init().map_err(|e| err(&e))?;
    let pipeline = gst::parse::launch(
        "appsrc name=src ! qtdemux ! h264parse ! avdec_h264 ! videoconvert ! \
         video/x-raw,format=RGB ! appsink name=sink sync=false",
    )
    .map_err(|e| err(&e))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| ImageError::Decode("not a pipeline".into()))?;
    let result = run_decode(&pipeline, file);
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn run_decode(pipeline: &gst::Pipeline, file: Vec<u8>) -> Result<Frames, ImageError> {
    let err = |e: &dyn std::fmt::Display| ImageError::Decode(e.to_string());
    let src = pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| ImageError::Decode("no appsrc".into()))?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| ImageError::Decode("no appsink".into()))?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| err(&e))?;
    src.push_buffer(gst::Buffer::from_mut_slice(file))
        .map_err(|e| err(&e))?;
    src.end_of_stream().map_err(|e| err(&e))?;
    let mut frames = Vec::new();
    let timeout = gst::ClockTime::from_seconds(DECODE_TIMEOUT_S);
    while let Some(sample) = sink.try_pull_sample(timeout) {
        frames.push(frame_of(&sample)?);
    }
    if let Some(bus) = pipeline.bus() {
        if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(e) = msg.view() {
                return Err(ImageError::Decode(e.error().to_string()));
            }
        }
    }
    Ok(frames)
}

fn frame_of(sample: &gst::Sample) -> Result<(i64, RgbImage), ImageError> {
    let bad = || ImageError::Decode("a decoded frame has no usable caps or buffer".into());
    let caps = sample.caps().ok_or_else(bad)?;
    let info = gstreamer_video_info(caps).ok_or_else(bad)?;
    let buffer = sample.buffer().ok_or_else(bad)?;
    let pts_us = buffer.pts().map_or(0, |t| t.useconds() as i64);
    let map = buffer.map_readable().map_err(|_| bad())?;
    let (width, height, stride) = info;
    let row = width as usize * 3;
    let mut pixels = Vec::with_capacity(row * height as usize);
    for y in 0..height as usize {
        let line = map.get(y * stride..y * stride + row).ok_or_else(bad)?;
        pixels.extend_from_slice(line);
    }
    let image = RgbImage::from_raw(width, height, pixels).ok_or_else(bad)?;
    Ok((pts_us, image))
}

/// Width, height and row stride of RGB caps (rows are padded to 4 bytes).
fn gstreamer_video_info(caps: &gst::CapsRef) -> Option<(u32, u32, usize)> {
    let s = caps.structure(0)?;
    let width = u32::try_from(s.get::<i32>("width").ok()?).ok()?;
    let height = u32::try_from(s.get::<i32>("height").ok()?).ok()?;
    let stride = (width as usize * 3).div_ceil(4) * 4;
    Some((width, height, stride))
}

/// The output size: as asked, keeping the aspect ratio when only one side is given.
fn output_size(width: u32, height: u32, request: &ImagesRequest) -> (u32, u32) {
    match (request.width, request.height) {
        (Some(w), Some(h)) => (w, h),
        (Some(w), None) => (
            w,
            ((u64::from(height) * u64::from(w)) / u64::from(width.max(1))).max(1) as u32,
        ),
        (None, Some(h)) => (
            ((u64::from(width) * u64::from(h)) / u64::from(height.max(1))).max(1) as u32,
            h,
        ),
        (None, None) => (width, height),
    }
}

fn encode(frame: &RgbImage, request: &ImagesRequest) -> Result<Vec<u8>, ImageError> {
    let (w, h) = output_size(frame.width(), frame.height(), request);
    let scaled;
    let image = if (w, h) == frame.dimensions() {
        frame
    } else {
        scaled = image::imageops::resize(frame, w, h, FilterType::Triangle);
        &scaled
    };
    let mut out = Cursor::new(Vec::new());
    let encoded = if request.png {
        image.write_to(&mut out, ImageFormat::Png)
    } else {
        image.write_with_encoder(JpegEncoder::new_with_quality(
            &mut out,
            request.jpeg_quality,
        ))
    };
    encoded.map_err(|e| ImageError::Encode(e.to_string()))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> Result<ImagesRequest, ApiError> {
        parse_request(&Members::parse(body.as_bytes()).expect("json"))
    }

    const BASE: &str = r#""ImageSelectorType":"PRODUCER_TIMESTAMP","StartTimestamp":10,"EndTimestamp":12,"Format":"PNG""#;

    #[test]
    fn requests_are_validated() {
        let ok = request(&format!(
            "{{{BASE},\"SamplingInterval\":500,\"WidthPixels\":320}}"
        ))
        .expect("valid");
        assert_eq!((ok.interval_ms, ok.width, ok.png), (500, Some(320), true));
        assert!(request(&format!("{{{BASE},\"SamplingInterval\":199}}")).is_err());
        assert!(request(&format!("{{{BASE},\"WidthPixels\":3841}}")).is_err());
        assert!(
            request(
                r#"{"ImageSelectorType":"PRODUCER_TIMESTAMP","StartTimestamp":1,"EndTimestamp":2}"#
            )
            .is_err()
        );
        let q = request(&format!(
            "{{{BASE},\"FormatConfig\":{{\"JPEGQuality\":\"40\"}}}}"
        ))
        .expect("valid");
        assert_eq!(q.jpeg_quality, 40);
    }

    #[test]
    fn samples_cover_the_range_in_pages() {
        let mut r = request(&format!(
            "{{{BASE},\"SamplingInterval\":500,\"MaxResults\":3}}"
        ))
        .expect("valid");
        let (times, next) = sample_times(&r);
        assert_eq!(
            times,
            [UnixMillis(10_000), UnixMillis(10_500), UnixMillis(11_000)]
        );
        assert_eq!(next, Some(UnixMillis(11_500)));
        r.from = UnixMillis(11_500);
        assert_eq!(sample_times(&r), (vec![UnixMillis(11_500)], None));
    }

    #[test]
    fn one_given_side_keeps_the_aspect_ratio() {
        let mut r = request(&format!("{{{BASE},\"WidthPixels\":320}}")).expect("valid");
        assert_eq!(output_size(1280, 720, &r), (320, 180));
        r.width = None;
        r.height = Some(90);
        assert_eq!(output_size(1280, 720, &r), (160, 90));
    }
}
