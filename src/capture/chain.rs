//! Capture chains as data: the elements (by factory name, with properties) and caps filters
//! from a source up to, not including, the common tail `h264parse ! avc/au ! appsink`.
//!
//! Keeping the chain as data lets it be checked without the hardware (unit tests for Jetson
//! and Raspberry Pi pipelines on any machine), checked for missing elements before anything
//! is built (a typed error naming the plugin package), and printed in `gst-launch-1.0` syntax
//! for the hardware notes and the benchmark's bare pipeline.

use std::fmt::Write as _;

use gstreamer as gst;

use super::CaptureError;
use super::source::{
    EncodeSettings, JetsonSource, LibcameraEncoder, LibcameraSource, RtspSource, RtspTransport,
    V4l2Format, V4l2Source,
};

/// Keyframe interval of the encoders the agent drives, in seconds: one fragment per interval.
const KEYFRAME_INTERVAL_S: u32 = 2;

/// One element of a chain: its factory and its properties, set from strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementSpec {
    pub factory: &'static str,
    pub properties: Vec<(&'static str, String)>,
}

/// An element or a caps filter between two elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    Element(ElementSpec),
    Caps(String),
}

/// A linear chain. `dynamic_source`: the first element's source pad appears only once the
/// stream is known (rtspsrc), so it is linked when it appears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub stages: Vec<Stage>,
    pub dynamic_source: bool,
}

fn element(factory: &'static str, properties: &[(&'static str, String)]) -> Stage {
    Stage::Element(ElementSpec {
        factory,
        properties: properties.to_vec(),
    })
}

impl Chain {
    fn new(stages: Vec<Stage>) -> Self {
        Self {
            stages,
            dynamic_source: false,
        }
    }

    /// The factories this chain needs, in order.
    pub fn factories(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.stages.iter().filter_map(|s| match s {
            Stage::Element(e) => Some(e.factory),
            Stage::Caps(_) => None,
        })
    }

    /// The first factory this machine lacks, as a typed error naming its package.
    pub fn check_elements(&self) -> Result<(), CaptureError> {
        match self
            .factories()
            .find(|f| gst::ElementFactory::find(f).is_none())
        {
            Some(factory) => Err(element_missing(factory)),
            None => Ok(()),
        }
    }

    /// `gst-launch-1.0` syntax, with values quoted where they need it.
    pub fn to_launch(&self) -> String {
        let mut out = String::new();
        for (index, stage) in self.stages.iter().enumerate() {
            if index > 0 {
                out.push_str(" ! ");
            }
            match stage {
                Stage::Caps(caps) => out.push_str(caps),
                Stage::Element(e) => {
                    out.push_str(e.factory);
                    for (key, value) in &e.properties {
                        let _ = write!(out, " {key}={}", launch_value(value));
                    }
                }
            }
        }
        out
    }
}

fn launch_value(value: &str) -> String {
    let plain = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c));
    if plain {
        value.to_owned()
    } else {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The typed error for an element this machine does not have, naming where it comes from.
pub fn element_missing(factory: &'static str) -> CaptureError {
    CaptureError::ElementMissing {
        element: factory,
        message: format!("install {}", plugin_package(factory)),
    }
}

/// Where an element comes from (Debian package names, or the vendor's for board-only ones).
pub fn plugin_package(factory: &str) -> &'static str {
    match factory {
        "rtspsrc" | "rtph264depay" | "rtph265depay" | "v4l2src" | "jpegdec" | "v4l2h264enc" => {
            "gstreamer1.0-plugins-good"
        }
        "h264parse" | "h265parse" => "gstreamer1.0-plugins-bad",
        "x264enc" => "gstreamer1.0-plugins-ugly",
        "videotestsrc" | "videoconvert" | "videoscale" => "gstreamer1.0-plugins-base",
        "libcamerasrc" => "gstreamer1.0-libcamera",
        "nvarguscamerasrc" | "nvvidconv" | "nvv4l2h264enc" => {
            "nvidia-l4t-gstreamer (NVIDIA JetPack)"
        }
        _ => "the GStreamer plugin that provides it (gst-inspect-1.0 lists what is installed)",
    }
}

/// x264 for live use: no lookahead, a keyframe every [`KEYFRAME_INTERVAL_S`].
fn x264(video: &EncodeSettings) -> Stage {
    element(
        "x264enc",
        &[
            ("tune", "zerolatency".into()),
            ("speed-preset", "ultrafast".into()),
            ("bitrate", video.bitrate_kbps.to_string()),
            ("key-int-max", (video.fps * KEYFRAME_INTERVAL_S).to_string()),
        ],
    )
}

fn raw_caps(media: &str, video: &EncodeSettings) -> Stage {
    Stage::Caps(format!(
        "{media},width={},height={},framerate={}/1",
        video.width, video.height, video.fps
    ))
}

/// `videotestsrc is-live=true ! 640x360@25 ! x264enc`.
pub fn test_chain() -> Chain {
    let video = EncodeSettings {
        width: 640,
        height: 360,
        fps: 25,
        bitrate_kbps: 1_000,
    };
    Chain::new(vec![
        element(
            "videotestsrc",
            &[("is-live", "true".into()), ("pattern", "ball".into())],
        ),
        raw_caps("video/x-raw", &video),
        x264(&video),
    ])
}

/// `rtspsrc ! rtph264depay`: the camera's H.264 as is, never decoded.
pub fn rtsp_chain(rtsp: &RtspSource) -> Chain {
    let protocols = match rtsp.transport {
        RtspTransport::Tcp => "tcp",
        RtspTransport::Udp => "udp",
    };
    Chain {
        stages: vec![
            element(
                "rtspsrc",
                &[
                    ("location", rtsp.url.clone()),
                    ("protocols", protocols.into()),
                    ("latency", rtsp.latency_ms.to_string()),
                ],
            ),
            element("rtph264depay", &[]),
        ],
        dynamic_source: true,
    }
}

/// A V4L2 camera with its format already known (see [`super::pipeline`] for probing).
pub fn v4l2_chain(v4l2: &V4l2Source, format: V4l2Format) -> Chain {
    let video = &v4l2.video;
    let src = element(
        "v4l2src",
        &[("device", v4l2.device.to_string_lossy().into_owned())],
    );
    let stages = match format {
        // Native H.264 passes through; the camera decides size and rate from its own modes.
        V4l2Format::H264 | V4l2Format::Auto => vec![src, Stage::Caps("video/x-h264".into())],
        // MJPEG must be decoded to be re-encoded: H.264 is all the payload carries.
        V4l2Format::Mjpeg => vec![
            src,
            raw_caps("image/jpeg", video),
            element("jpegdec", &[]),
            element("videoconvert", &[]),
            x264(video),
        ],
        V4l2Format::Raw => vec![
            src,
            raw_caps("video/x-raw", video),
            element("videoconvert", &[]),
            x264(video),
        ],
    };
    Chain::new(stages)
}

/// A Raspberry Pi CSI camera. The Pi 4 encodes in hardware (`v4l2h264enc`, settings through
/// `extra-controls`, level 4 so 1080p30 fits); the Pi 5 has no H.264 block: `x264enc`.
pub fn libcamera_chain(cam: &LibcameraSource, encoder: LibcameraEncoder) -> Chain {
    let video = &cam.video;
    let src = element("libcamerasrc", &[]);
    let stages = match encoder {
        LibcameraEncoder::V4l2H264Enc => vec![
            src,
            Stage::Caps(format!(
                "video/x-raw,format=NV12,width={},height={},framerate={}/1",
                video.width, video.height, video.fps
            )),
            element(
                "v4l2h264enc",
                &[(
                    "extra-controls",
                    format!(
                        "controls,video_bitrate={},h264_i_frame_period={},repeat_sequence_header=1",
                        video.bitrate_kbps * 1000,
                        video.fps * KEYFRAME_INTERVAL_S
                    ),
                )],
            ),
            Stage::Caps("video/x-h264,level=(string)4".into()),
        ],
        LibcameraEncoder::X264Enc | LibcameraEncoder::Auto => vec![
            src,
            raw_caps("video/x-raw", video),
            element("videoconvert", &[]),
            x264(video),
        ],
    };
    Chain::new(stages)
}

/// `nvarguscamerasrc ! NVMM caps ! nvvidconv ! nvv4l2h264enc`: capture and encode stay in
/// NVMM memory, the CPU never touches a frame.
pub fn jetson_chain(jetson: &JetsonSource) -> Chain {
    let video = &jetson.video;
    Chain::new(vec![
        element(
            "nvarguscamerasrc",
            &[("sensor-id", jetson.sensor_id.to_string())],
        ),
        Stage::Caps(format!(
            "video/x-raw(memory:NVMM),width={},height={},framerate={}/1,format=NV12",
            video.width, video.height, video.fps
        )),
        element("nvvidconv", &[]),
        Stage::Caps("video/x-raw(memory:NVMM),format=NV12".into()),
        element(
            "nvv4l2h264enc",
            &[
                ("bitrate", (video.bitrate_kbps * 1000).to_string()),
                (
                    "iframeinterval",
                    (video.fps * KEYFRAME_INTERVAL_S).to_string(),
                ),
                ("insert-sps-pps", "true".into()),
            ],
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::SourceSpec;

    fn spec(s: &str) -> SourceSpec {
        s.parse().expect("spec parses")
    }

    #[test]
    fn rtsp_chain_passes_the_stream_through() {
        let SourceSpec::Rtsp(rtsp) = spec("rtsp://u:p@cam/live#transport=udp&latency_ms=300")
        else {
            panic!()
        };
        let chain = rtsp_chain(&rtsp);
        assert!(chain.dynamic_source);
        assert_eq!(
            chain.to_launch(),
            "rtspsrc location=\"rtsp://u:p@cam/live\" protocols=udp latency=300 ! rtph264depay"
        );
        assert!(
            !chain
                .factories()
                .any(|f| f.ends_with("enc") || f.contains("dec"))
        );
    }

    #[test]
    fn v4l2_chains_encode_only_what_is_not_h264() {
        let SourceSpec::V4l2(v4l2) = spec("v4l2:/dev/video4#width=640&height=480&fps=30") else {
            panic!()
        };
        assert_eq!(
            v4l2_chain(&v4l2, V4l2Format::H264).to_launch(),
            "v4l2src device=/dev/video4 ! video/x-h264"
        );
        assert_eq!(
            v4l2_chain(&v4l2, V4l2Format::Mjpeg).to_launch(),
            "v4l2src device=/dev/video4 ! image/jpeg,width=640,height=480,framerate=30/1 ! jpegdec \
             ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=2000 key-int-max=60"
        );
        let raw: Vec<_> = v4l2_chain(&v4l2, V4l2Format::Raw).factories().collect();
        assert_eq!(raw, ["v4l2src", "videoconvert", "x264enc"]);
    }

    #[test]
    fn libcamera_chains_for_pi_4_and_pi_5() {
        let SourceSpec::Libcamera(cam) = spec("libcamera#width=1920&height=1080&fps=30") else {
            panic!()
        };
        assert_eq!(
            libcamera_chain(&cam, LibcameraEncoder::V4l2H264Enc).to_launch(),
            "libcamerasrc ! video/x-raw,format=NV12,width=1920,height=1080,framerate=30/1 ! \
             v4l2h264enc extra-controls=\"controls,video_bitrate=2000000,h264_i_frame_period=60,repeat_sequence_header=1\" \
             ! video/x-h264,level=(string)4"
        );
        let pi5: Vec<_> = libcamera_chain(&cam, LibcameraEncoder::X264Enc)
            .factories()
            .collect();
        assert_eq!(pi5, ["libcamerasrc", "videoconvert", "x264enc"]);
    }

    #[test]
    fn jetson_chain_stays_in_nvmm() {
        let SourceSpec::Jetson(jetson) = spec("jetson#sensor_id=1&bitrate_kbps=4000") else {
            panic!()
        };
        assert_eq!(
            jetson_chain(&jetson).to_launch(),
            "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=25/1,format=NV12 \
             ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc bitrate=4000000 \
             iframeinterval=50 insert-sps-pps=true"
        );
    }

    #[test]
    fn a_missing_element_names_its_package() {
        gst::init().expect("gstreamer");
        let SourceSpec::Jetson(jetson) = spec("jetson") else {
            panic!()
        };
        // No Jetson here: Argus is the first element missing.
        match jetson_chain(&jetson).check_elements() {
            Err(CaptureError::ElementMissing { element, message }) => {
                assert_eq!(element, "nvarguscamerasrc");
                assert!(message.contains("nvidia-l4t-gstreamer"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(test_chain().check_elements().is_ok());
    }
}
