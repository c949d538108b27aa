//! Parsing capture source specifications.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::CaptureError;

/// Where video comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// `test`: a moving test pattern, encoded with x264 (live).
    Test,
    /// `file:PATH`: a recorded MP4, Matroska or raw H.264 (Annex-B) file.
    File(PathBuf),
    /// `rtsp://...`: an IP camera (not supported in this version).
    Rtsp(String),
    /// `v4l2:/dev/videoN`: a USB/UVC camera (not supported in this version).
    V4l2(PathBuf),
    /// `libcamera`: a Raspberry Pi CSI camera (not supported in this version).
    Libcamera,
    /// `jetson`: the Jetson camera and hardware encoder (not supported in this version).
    Jetson,
}

impl FromStr for SourceSpec {
    type Err = CaptureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CaptureError::BadSource(s.to_owned());
        match s {
            "test" => return Ok(SourceSpec::Test),
            "libcamera" => return Ok(SourceSpec::Libcamera),
            "jetson" => return Ok(SourceSpec::Jetson),
            _ => {}
        }
        if let Some(path) = s.strip_prefix("file:") {
            return non_empty(path)
                .map(|p| SourceSpec::File(PathBuf::from(p)))
                .ok_or_else(bad);
        }
        if let Some(device) = s.strip_prefix("v4l2:") {
            return non_empty(device)
                .map(|d| SourceSpec::V4l2(PathBuf::from(d)))
                .ok_or_else(bad);
        }
        if s.starts_with("rtsp://") || s.starts_with("rtsps://") {
            return Ok(SourceSpec::Rtsp(s.to_owned()));
        }
        Err(bad())
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Test => f.write_str("test"),
            SourceSpec::File(path) => write!(f, "file:{}", path.display()),
            SourceSpec::Rtsp(url) => f.write_str(url),
            SourceSpec::V4l2(device) => write!(f, "v4l2:{}", device.display()),
            SourceSpec::Libcamera => f.write_str("libcamera"),
            SourceSpec::Jetson => f.write_str("jetson"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_source_kind() {
        assert_eq!("test".parse::<SourceSpec>().unwrap(), SourceSpec::Test);
        assert_eq!(
            "file:clips/a.mp4".parse::<SourceSpec>().unwrap(),
            SourceSpec::File(PathBuf::from("clips/a.mp4"))
        );
        assert_eq!(
            "rtsp://cam.local/stream".parse::<SourceSpec>().unwrap(),
            SourceSpec::Rtsp("rtsp://cam.local/stream".into())
        );
        assert_eq!(
            "v4l2:/dev/video0".parse::<SourceSpec>().unwrap(),
            SourceSpec::V4l2(PathBuf::from("/dev/video0"))
        );
        assert_eq!(
            "libcamera".parse::<SourceSpec>().unwrap(),
            SourceSpec::Libcamera
        );
        assert_eq!("jetson".parse::<SourceSpec>().unwrap(), SourceSpec::Jetson);
        for bad in ["", "file:", "v4l2:", "http://x", "tests"] {
            assert!(
                matches!(bad.parse::<SourceSpec>(), Err(CaptureError::BadSource(_))),
                "{bad}"
            );
        }
        let spec = "file:a.mkv".parse::<SourceSpec>().unwrap();
        assert_eq!(spec.to_string(), "file:a.mkv");
    }
}
