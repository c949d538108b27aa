//! Parsing capture source specifications.
//!
//! A spec is `KIND[:WHERE][#OPTIONS]`, options being `key=value` pairs joined by `&`:
//! - `test`
//! - `file:PATH`
//! - `rtsp://[user:password@]host[:port]/path[#transport=tcp|udp&latency_ms=N&codec=h264|h265]`
//!   (the `#` part is never sent to the camera: it is the URL's fragment)
//! - `v4l2:/dev/videoN[#format=auto|h264|mjpeg|raw&width=W&height=H&fps=F&bitrate_kbps=B]`
//! - `libcamera[#encoder=auto|v4l2h264enc|x264enc&width=W&height=H&fps=F&bitrate_kbps=B]`
//! - `jetson[#sensor_id=N&width=W&height=H&fps=F&bitrate_kbps=B]`

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::CaptureError;

/// Most `key=value` options one spec may carry.
const SOURCE_OPTIONS_MAX: usize = 16;
/// rtspsrc's jitter buffer by default: short, cameras on a LAN deliver in order.
pub const RTSP_LATENCY_MS_DEFAULT: u32 = 200;
/// Largest accepted RTSP jitter buffer.
const RTSP_LATENCY_MS_MAX: u32 = 10_000;
/// Largest accepted picture side, frame rate and encoder bitrate.
const PICTURE_SIDE_MAX: u32 = 8_192;
const FRAME_RATE_FPS_MAX: u32 = 240;
const BITRATE_KBPS_MAX: u32 = 100_000;

/// Where video comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// `test`: a moving test pattern, encoded with x264 (live).
    Test,
    /// `file:PATH`: a recorded MP4, Matroska or raw H.264 (Annex-B) file.
    File(PathBuf),
    /// `rtsp://...`: an IP camera, its H.264 passed through without re-encoding.
    Rtsp(RtspSource),
    /// `v4l2:/dev/videoN`: a USB/UVC camera.
    V4l2(V4l2Source),
    /// `libcamera`: a Raspberry Pi CSI camera.
    Libcamera(LibcameraSource),
    /// `jetson`: a Jetson CSI camera through Argus and the hardware encoder.
    Jetson(JetsonSource),
}

/// RTP over the RTSP TCP connection (interleaved) or over separate UDP ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtspTransport {
    Tcp,
    Udp,
}

/// The video codec a camera announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    /// Refused with [`CaptureError::CodecUnsupported`]: the fragment payload carries H.264 only.
    H265,
}

#[derive(Clone, PartialEq, Eq)]
pub struct RtspSource {
    /// The camera URL without the options; may hold credentials.
    pub url: String,
    pub transport: RtspTransport,
    pub latency_ms: u32,
    pub codec: VideoCodec,
}

impl fmt::Debug for RtspSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtspSource")
            .field("url", &redact_credentials(&self.url))
            .field("transport", &self.transport)
            .field("latency_ms", &self.latency_ms)
            .field("codec", &self.codec)
            .finish()
    }
}

/// What a V4L2 device delivers, chosen by probing its caps (`Auto`) or by the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V4l2Format {
    Auto,
    /// Native H.264: passed through.
    H264,
    /// MJPEG: decoded and re-encoded with x264 (the one place the agent decodes).
    Mjpeg,
    /// Raw frames: encoded with x264.
    Raw,
}

/// Picture settings for sources the agent encodes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
}

impl EncodeSettings {
    pub const DEFAULT: EncodeSettings = EncodeSettings {
        width: 1280,
        height: 720,
        fps: 25,
        bitrate_kbps: 2_000,
    };
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V4l2Source {
    pub device: PathBuf,
    pub format: V4l2Format,
    pub video: EncodeSettings,
}

/// The encoder behind libcamerasrc: the Pi 4's hardware H.264 block or x264 (the Pi 5 has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LibcameraEncoder {
    /// `v4l2h264enc` when this machine has it, else `x264enc`.
    Auto,
    V4l2H264Enc,
    X264Enc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibcameraSource {
    pub encoder: LibcameraEncoder,
    pub video: EncodeSettings,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetsonSource {
    pub sensor_id: u32,
    pub video: EncodeSettings,
}

impl SourceSpec {
    /// A live source runs until stopped and is restarted when it fails; a file ends.
    pub fn is_live(&self) -> bool {
        !matches!(self, SourceSpec::File(_))
    }
}

impl FromStr for SourceSpec {
    type Err = CaptureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CaptureError::BadSource(redact_credentials(s));
        if let Some(path) = s.strip_prefix("file:") {
            return non_empty(path)
                .map(|p| SourceSpec::File(PathBuf::from(p)))
                .ok_or_else(bad);
        }
        let (head, options) = match s.split_once('#') {
            Some((head, options)) => (head, Options::parse(options)?),
            None => (s, Options::default()),
        };
        let spec = match head {
            "test" => SourceSpec::Test,
            "libcamera" => SourceSpec::Libcamera(libcamera_source(&options)?),
            "jetson" => SourceSpec::Jetson(JetsonSource {
                sensor_id: options.number("sensor_id", 0, 0..=15)?,
                video: encode_settings(&options)?,
            }),
            _ if head.starts_with("rtsp://") || head.starts_with("rtsps://") => {
                SourceSpec::Rtsp(rtsp_source(head, &options)?)
            }
            _ => match head.strip_prefix("v4l2:").and_then(non_empty) {
                Some(device) => SourceSpec::V4l2(v4l2_source(device, &options)?),
                None => return Err(bad()),
            },
        };
        options.check_all_used(&spec)?;
        Ok(spec)
    }
}

fn rtsp_source(url: &str, options: &Options) -> Result<RtspSource, CaptureError> {
    let transport = match options.get("transport").unwrap_or("tcp") {
        "tcp" => RtspTransport::Tcp,
        "udp" => RtspTransport::Udp,
        other => return Err(bad_option("transport", other, "tcp or udp")),
    };
    let codec = match options.get("codec").unwrap_or("h264") {
        "h264" => VideoCodec::H264,
        "h265" => VideoCodec::H265,
        other => return Err(bad_option("codec", other, "h264 or h265")),
    };
    Ok(RtspSource {
        url: url.to_owned(),
        transport,
        latency_ms: options.number(
            "latency_ms",
            RTSP_LATENCY_MS_DEFAULT,
            0..=RTSP_LATENCY_MS_MAX,
        )?,
        codec,
    })
}

fn v4l2_source(device: &str, options: &Options) -> Result<V4l2Source, CaptureError> {
    let format = match options.get("format").unwrap_or("auto") {
        "auto" => V4l2Format::Auto,
        "h264" => V4l2Format::H264,
        "mjpeg" => V4l2Format::Mjpeg,
        "raw" => V4l2Format::Raw,
        other => return Err(bad_option("format", other, "auto, h264, mjpeg or raw")),
    };
    Ok(V4l2Source {
        device: PathBuf::from(device),
        format,
        video: encode_settings(options)?,
    })
}

fn libcamera_source(options: &Options) -> Result<LibcameraSource, CaptureError> {
    let encoder = match options.get("encoder").unwrap_or("auto") {
        "auto" => LibcameraEncoder::Auto,
        "v4l2h264enc" => LibcameraEncoder::V4l2H264Enc,
        "x264enc" => LibcameraEncoder::X264Enc,
        other => return Err(bad_option("encoder", other, "auto, v4l2h264enc or x264enc")),
    };
    Ok(LibcameraSource {
        encoder,
        video: encode_settings(options)?,
    })
}

fn encode_settings(options: &Options) -> Result<EncodeSettings, CaptureError> {
    let d = EncodeSettings::DEFAULT;
    Ok(EncodeSettings {
        width: options.number("width", d.width, 16..=PICTURE_SIDE_MAX)?,
        height: options.number("height", d.height, 16..=PICTURE_SIDE_MAX)?,
        fps: options.number("fps", d.fps, 1..=FRAME_RATE_FPS_MAX)?,
        bitrate_kbps: options.number("bitrate_kbps", d.bitrate_kbps, 64..=BITRATE_KBPS_MAX)?,
    })
}

fn bad_option(key: &str, value: &str, expected: &str) -> CaptureError {
    CaptureError::BadSourceOption {
        key: key.to_owned(),
        reason: format!("{value:?} is not {expected}"),
    }
}

/// The `key=value&...` options after `#`.
#[derive(Debug, Default)]
struct Options {
    pairs: Vec<(String, String)>,
}

impl Options {
    fn parse(text: &str) -> Result<Self, CaptureError> {
        let mut pairs = Vec::new();
        for item in text.split('&').filter(|i| !i.is_empty()) {
            if pairs.len() == SOURCE_OPTIONS_MAX {
                return Err(CaptureError::BadSourceOption {
                    key: item.to_owned(),
                    reason: format!("more than {SOURCE_OPTIONS_MAX} options"),
                });
            }
            let Some((key, value)) = item.split_once('=') else {
                return Err(CaptureError::BadSourceOption {
                    key: item.to_owned(),
                    reason: "expected key=value".to_owned(),
                });
            };
            if pairs.iter().any(|(k, _)| k == key) {
                return Err(CaptureError::BadSourceOption {
                    key: key.to_owned(),
                    reason: "given twice".to_owned(),
                });
            }
            pairs.push((key.to_owned(), value.to_owned()));
        }
        Ok(Self { pairs })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn number(
        &self,
        key: &str,
        default: u32,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<u32, CaptureError> {
        let Some(text) = self.get(key) else {
            return Ok(default);
        };
        match text.parse::<u32>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(CaptureError::BadSourceOption {
                key: key.to_owned(),
                reason: format!(
                    "{text:?} is not a number from {} to {}",
                    range.start(),
                    range.end()
                ),
            }),
        }
    }

    /// Every option must belong to the source kind: a typo is an error, not a silent default.
    fn check_all_used(&self, spec: &SourceSpec) -> Result<(), CaptureError> {
        let known: &[&str] = match spec {
            SourceSpec::Test | SourceSpec::File(_) => &[],
            SourceSpec::Rtsp(_) => &["transport", "latency_ms", "codec"],
            SourceSpec::V4l2(_) => &["format", "width", "height", "fps", "bitrate_kbps"],
            SourceSpec::Libcamera(_) => &["encoder", "width", "height", "fps", "bitrate_kbps"],
            SourceSpec::Jetson(_) => &["sensor_id", "width", "height", "fps", "bitrate_kbps"],
        };
        match self
            .pairs
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            Some((key, _)) => Err(CaptureError::BadSourceOption {
                key: key.clone(),
                reason: format!("not an option of this source; known: {}", known.join(", ")),
            }),
            None => Ok(()),
        }
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// `rtsp://user:secret@host/x` as `rtsp://user:***@host/x`, for logs and errors.
pub fn redact_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Test => f.write_str("test"),
            SourceSpec::File(path) => write!(f, "file:{}", path.display()),
            SourceSpec::Rtsp(rtsp) => f.write_str(&redact_credentials(&rtsp.url)),
            SourceSpec::V4l2(v4l2) => write!(f, "v4l2:{}", v4l2.device.display()),
            SourceSpec::Libcamera(_) => f.write_str("libcamera"),
            SourceSpec::Jetson(j) => write!(f, "jetson (sensor {})", j.sensor_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> SourceSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_source_kind() {
        assert_eq!(parse("test"), SourceSpec::Test);
        assert_eq!(
            parse("file:clips/a.mp4"),
            SourceSpec::File(PathBuf::from("clips/a.mp4"))
        );
        let SourceSpec::Rtsp(rtsp) = parse("rtsp://cam.local/stream") else {
            panic!("rtsp")
        };
        assert_eq!(rtsp.url, "rtsp://cam.local/stream");
        assert_eq!(rtsp.transport, RtspTransport::Tcp);
        assert_eq!(rtsp.latency_ms, RTSP_LATENCY_MS_DEFAULT);
        let SourceSpec::V4l2(v4l2) = parse("v4l2:/dev/video0") else {
            panic!("v4l2")
        };
        assert_eq!(v4l2.device, PathBuf::from("/dev/video0"));
        assert_eq!(v4l2.format, V4l2Format::Auto);
        assert!(
            matches!(parse("libcamera"), SourceSpec::Libcamera(l) if l.encoder == LibcameraEncoder::Auto)
        );
        assert!(matches!(parse("jetson"), SourceSpec::Jetson(j) if j.sensor_id == 0));
        for bad in [
            "",
            "file:",
            "v4l2:",
            "http://x",
            "tests",
            "v4l2:#format=h264",
        ] {
            assert!(
                matches!(bad.parse::<SourceSpec>(), Err(CaptureError::BadSource(_))),
                "{bad}"
            );
        }
        assert_eq!(parse("file:a.mkv").to_string(), "file:a.mkv");
    }

    #[test]
    fn options_set_transport_latency_format_and_encoder() {
        let SourceSpec::Rtsp(rtsp) =
            parse("rtsp://admin:pw@10.0.0.5:554/h264?ch=1#transport=udp&latency_ms=500")
        else {
            panic!("rtsp")
        };
        assert_eq!(rtsp.url, "rtsp://admin:pw@10.0.0.5:554/h264?ch=1");
        assert_eq!((rtsp.transport, rtsp.latency_ms), (RtspTransport::Udp, 500));
        let SourceSpec::V4l2(v4l2) =
            parse("v4l2:/dev/video2#format=mjpeg&width=640&height=480&fps=30")
        else {
            panic!("v4l2")
        };
        assert_eq!(v4l2.format, V4l2Format::Mjpeg);
        assert_eq!(
            (v4l2.video.width, v4l2.video.height, v4l2.video.fps),
            (640, 480, 30)
        );
        let SourceSpec::Libcamera(cam) = parse("libcamera#encoder=v4l2h264enc&bitrate_kbps=4000")
        else {
            panic!("libcamera")
        };
        assert_eq!(cam.encoder, LibcameraEncoder::V4l2H264Enc);
        assert_eq!(cam.video.bitrate_kbps, 4000);
        assert!(matches!(parse("jetson#sensor_id=1"), SourceSpec::Jetson(j) if j.sensor_id == 1));
    }

    #[test]
    fn bad_options_name_their_key() {
        for (spec, key) in [
            ("rtsp://cam/x#transport=quic", "transport"),
            ("rtsp://cam/x#latency_ms=99999", "latency_ms"),
            ("rtsp://cam/x#format=h264", "format"),
            ("v4l2:/dev/video0#fps=0", "fps"),
            ("v4l2:/dev/video0#width", "width"),
            ("libcamera#encoder=nvenc", "encoder"),
            ("jetson#sensor_id=1&sensor_id=2", "sensor_id"),
            ("test#fps=5", "fps"),
        ] {
            match spec.parse::<SourceSpec>() {
                Err(CaptureError::BadSourceOption { key: k, .. }) => assert_eq!(k, key, "{spec}"),
                other => panic!("{spec}: {other:?}"),
            }
        }
        let many = format!("jetson#{}", vec!["x=1"; SOURCE_OPTIONS_MAX + 1].join("&"));
        assert!(matches!(
            many.parse::<SourceSpec>(),
            Err(CaptureError::BadSourceOption { .. })
        ));
    }

    #[test]
    fn credentials_never_reach_logs() {
        let spec = parse("rtsp://admin:s3cret@cam:554/live#transport=tcp");
        assert_eq!(spec.to_string(), "rtsp://admin:***@cam:554/live");
        assert!(!format!("{spec:?}").contains("s3cret"));
        assert_eq!(redact_credentials("rtsp://cam/live"), "rtsp://cam/live");
        match "rtsp://admin:s3cret@cam/x#bogus=1".parse::<SourceSpec>() {
            Err(e) => assert!(!e.to_string().contains("s3cret")),
            Ok(_) => panic!("unknown option accepted"),
        }
    }
}
