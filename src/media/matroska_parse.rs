//! Incremental Matroska (EBML) reading for PutMedia ingest, and turning clusters into
//! [`MediaFragment`]s.
//!
//! [`MkvParser`] is push-based: bytes are fed as they arrive and complete elements come out as
//! [`MkvEvent`]s. It buffers at most one element of interest (a frame, the track list) plus one
//! element header; everything else is skipped by its size without being held. Segments and
//! clusters may have an unknown size (live producers write them that way): such an element ends
//! at the first element that cannot be its child (the next Cluster, a top-level element, a new
//! EBML header). Limits ([`ELEMENT_BYTES_MAX`], [`FRAME_BYTES_MAX`], [`NESTING_DEPTH_MAX`],
//! [`TRACKS_MAX`]) turn hostile input into a typed [`MkvError`], never a panic.
//!
//! [`ClusterAssembler`] follows the events and builds one fragment per cluster from the H.264
//! track (`V_MPEG4/ISO/AVC` or `V_MPEG/ISO/AVC`), with samples timed in microseconds since the
//! epoch: ABSOLUTE cluster timecodes are the time itself, RELATIVE ones are added to the
//! producer's start timestamp.

use bytes::Bytes;

use super::{Codec, FRAGMENT_SAMPLES_MAX, MediaError, MediaFragment, Sample, h264};

/// Largest element read whole (the track list, a block group), in bytes.
pub const ELEMENT_BYTES_MAX: usize = FRAME_BYTES_MAX + 64 * 1024;
/// Largest frame (one block) accepted, in bytes.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Deepest nesting of open master elements followed by the parser.
pub const NESTING_DEPTH_MAX: usize = 8;
/// Most tracks in one segment (the Kinesis Video limit).
pub const TRACKS_MAX: usize = 3;
/// Largest EBML header, Info or Tracks element, in bytes.
const HEADER_ELEMENT_BYTES_MAX: usize = 1024 * 1024;
/// Longest codec id accepted, in bytes.
const CODEC_ID_BYTES_MAX: usize = 64;

const ID_EBML: u32 = 0x1A45_DFA3;
const ID_DOC_TYPE: u32 = 0x4282;
const ID_SEGMENT: u32 = 0x1853_8067;
const ID_SEEK_HEAD: u32 = 0x114D_9B74;
const ID_INFO: u32 = 0x1549_A966;
const ID_TIMECODE_SCALE: u32 = 0x002A_D7B1;
const ID_TRACKS: u32 = 0x1654_AE6B;
const ID_TRACK_ENTRY: u32 = 0xAE;
const ID_TRACK_NUMBER: u32 = 0xD7;
const ID_TRACK_TYPE: u32 = 0x83;
const ID_CODEC_ID: u32 = 0x86;
const ID_CODEC_PRIVATE: u32 = 0x63A2;
const ID_DEFAULT_DURATION: u32 = 0x0023_E383;
const ID_VIDEO: u32 = 0xE0;
const ID_PIXEL_WIDTH: u32 = 0xB0;
const ID_PIXEL_HEIGHT: u32 = 0xBA;
const ID_CLUSTER: u32 = 0x1F43_B675;
const ID_TIMECODE: u32 = 0xE7;
const ID_SIMPLE_BLOCK: u32 = 0xA3;
const ID_BLOCK_GROUP: u32 = 0xA0;
const ID_BLOCK: u32 = 0xA1;
const ID_BLOCK_DURATION: u32 = 0x9B;
const ID_REFERENCE_BLOCK: u32 = 0xFB;
const ID_CUES: u32 = 0x1C53_BB6B;
const ID_ATTACHMENTS: u32 = 0x1941_A469;
const ID_CHAPTERS: u32 = 0x1043_A770;
const ID_TAGS: u32 = 0x1254_C367;

/// Elements that sit directly in a Segment; one of them ends an unknown-size cluster.
const SEGMENT_CHILDREN: [u32; 8] = [
    ID_SEEK_HEAD,
    ID_INFO,
    ID_TRACKS,
    ID_CLUSTER,
    ID_CUES,
    ID_ATTACHMENTS,
    ID_CHAPTERS,
    ID_TAGS,
];

/// Matroska track type of video tracks.
const TRACK_TYPE_VIDEO: u64 = 1;
/// The codec ids of H.264 in Matroska (the second is an older spelling some producers use).
const AVC_CODEC_IDS: [&str; 2] = ["V_MPEG4/ISO/AVC", "V_MPEG/ISO/AVC"];
/// H.265 in Matroska: recognised, refused with its own error for now.
const HEVC_CODEC_ID: &str = "V_MPEGH/ISO/HEVC";
/// Matroska's default timecode scale: one tick is a millisecond.
const DEFAULT_TIMECODE_SCALE_NS: u64 = 1_000_000;

/// Why a Matroska stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MkvError {
    #[error("invalid EBML element id at byte {offset}")]
    InvalidId { offset: u64 },
    #[error("invalid EBML size at byte {offset}")]
    InvalidSize { offset: u64 },
    #[error("element {id:#x} of {size} bytes exceeds the limit of {limit} bytes")]
    ElementTooLarge { id: u32, size: u64, limit: usize },
    #[error("element {id:#x} may not have an unknown size")]
    UnknownSizeNotAllowed { id: u32 },
    #[error("element {id:#x} at byte {offset} overruns its parent")]
    OverrunsParent { id: u32, offset: u64 },
    #[error("element {id:#x} may not appear inside {parent:#x}")]
    Misplaced { id: u32, parent: u32 },
    #[error("elements nest deeper than {NESTING_DEPTH_MAX} levels")]
    TooDeep,
    #[error("document type {0:?} is not Matroska")]
    BadDocType(String),
    #[error("{count} tracks; the limit is {TRACKS_MAX}")]
    TooManyTracks { count: usize },
    #[error("malformed {what}")]
    Malformed { what: &'static str },
    #[error("a block precedes its cluster's timecode")]
    MissingClusterTimecode,
    #[error("laced blocks are not supported for video")]
    LacingUnsupported,
    #[error("the stream ended inside an element")]
    Truncated,
    #[error("codec {0:?} is not supported; send H.264 (V_MPEG4/ISO/AVC)")]
    UnsupportedCodec(String),
    #[error("the segment has no H.264 video track")]
    NoVideoTrack,
    #[error("a frame arrived before the track list")]
    FrameBeforeTracks,
    #[error("the H.264 codec private data is unusable: {0}")]
    Media(#[from] MediaError),
    #[error("a timecode does not fit the supported range")]
    TimecodeOutOfRange,
    #[error("the fragment exceeds {limit} bytes or {FRAGMENT_SAMPLES_MAX} frames")]
    FragmentTooLarge { limit: usize },
    #[error("the fragment lasts {duration_ms} ms; the limit is {limit_ms} ms")]
    FragmentTooLong { duration_ms: u64, limit_ms: u64 },
    #[error("the cluster starts before the previous one")]
    TimecodeNotMonotonic,
    #[error("a frame names track {0}, which the track list does not hold")]
    TrackMismatch(u64),
    #[error("the cluster holds no video frames")]
    EmptyCluster,
}

/// One track of the segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MkvTrack {
    pub number: u64,
    pub track_type: u64,
    pub codec_id: String,
    pub codec_private: Bytes,
    pub default_duration_ns: Option<u64>,
    pub pixel_width: Option<u32>,
    pub pixel_height: Option<u32>,
}

/// One frame from a SimpleBlock or a BlockGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkvFrame {
    pub track: u64,
    /// Timecode relative to the cluster's, in timecode-scale ticks.
    pub relative_timecode: i16,
    pub keyframe: bool,
    /// BlockDuration of a BlockGroup, in ticks.
    pub duration: Option<u64>,
    pub data: Bytes,
}

/// What the parser found, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MkvEvent {
    /// An EBML header: a new Matroska document starts.
    Header {
        doc_type: String,
    },
    /// Segment info: nanoseconds per timecode tick.
    Info {
        timecode_scale_ns: u64,
    },
    Tracks(Vec<MkvTrack>),
    /// A cluster's timecode was read (ticks).
    ClusterStart {
        timecode: u64,
    },
    Frame(MkvFrame),
    /// The cluster that started last is complete.
    ClusterEnd,
}

/// An open master element.
#[derive(Debug, Clone, Copy)]
struct Open {
    id: u32,
    /// Absolute offset of its end; `None` for an unknown size.
    end: Option<u64>,
}

/// What the parser does with the bytes of the current element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Reading the next element header.
    Header,
    /// Skipping this many bytes.
    Skip(u64),
    /// Reading an element of this id and size whole.
    Whole { id: u32, size: usize },
}

/// A push-based Matroska reader: see the module documentation.
#[derive(Debug)]
pub struct MkvParser {
    buf: Vec<u8>,
    /// Absolute stream offset of `buf[0]`.
    offset: u64,
    stack: Vec<Open>,
    pending: Pending,
    /// Whether the innermost cluster has read its timecode.
    cluster_started: bool,
    failed: bool,
}

impl Default for MkvParser {
    fn default() -> Self {
        Self::new()
    }
}

impl MkvParser {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            offset: 0,
            stack: Vec::new(),
            pending: Pending::Header,
            cluster_started: false,
            failed: false,
        }
    }

    /// Bytes held between calls (a partial element of interest or header).
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Consumes `input` and returns the events it completes. After an error the parser stays
    /// failed: a byte stream cannot be resynchronised reliably.
    pub fn feed(&mut self, input: &[u8]) -> Result<Vec<MkvEvent>, MkvError> {
        if self.failed {
            return Err(MkvError::Malformed {
                what: "stream after an earlier error",
            });
        }
        self.buf.extend_from_slice(input);
        let mut events = Vec::new();
        let result = self.run(&mut events);
        if result.is_err() {
            self.failed = true;
            self.buf = Vec::new();
        }
        result.map(|()| events)
    }

    /// The input has ended: closes unknown-size elements. Fails when an element is incomplete.
    pub fn finish(&mut self) -> Result<Vec<MkvEvent>, MkvError> {
        if self.failed {
            return Err(MkvError::Truncated);
        }
        let mut events = Vec::new();
        if !self.buf.is_empty() || self.pending != Pending::Header {
            return Err(MkvError::Truncated);
        }
        while let Some(open) = self.stack.pop() {
            if open.end.is_some_and(|end| end > self.offset) {
                return Err(MkvError::Truncated);
            }
            self.closed(open, &mut events);
        }
        Ok(events)
    }

    fn run(&mut self, events: &mut Vec<MkvEvent>) -> Result<(), MkvError> {
        let mut pos = 0usize;
        loop {
            let progressed = match self.pending {
                Pending::Skip(n) => {
                    let take = n.min((self.buf.len() - pos) as u64);
                    pos += take as usize;
                    self.pending = if take == n {
                        Pending::Header
                    } else {
                        Pending::Skip(n - take)
                    };
                    take > 0
                }
                Pending::Whole { id, size } => match self.buf.get(pos..pos + size) {
                    Some(body) => {
                        let body = body.to_vec();
                        pos += size;
                        self.pending = Pending::Header;
                        self.whole(id, &body, events)?;
                        true
                    }
                    None => false,
                },
                Pending::Header => {
                    let at = self.offset + pos as u64;
                    self.close_ended(at, events)?;
                    match read_header(&self.buf[pos..], at)? {
                        Some((id, size, len)) => {
                            pos += len;
                            self.element(id, size, at + len as u64, events)?;
                            true
                        }
                        None => false,
                    }
                }
            };
            if !progressed {
                break;
            }
        }
        if self.pending == Pending::Header {
            // A known-size cluster that ends with this input is complete now, not at the next
            // element.
            self.close_ended(self.offset + pos as u64, events)?;
        }
        self.buf.drain(..pos);
        self.offset += pos as u64;
        Ok(())
    }

    /// Pops known-size masters that end at `at`.
    fn close_ended(&mut self, at: u64, events: &mut Vec<MkvEvent>) -> Result<(), MkvError> {
        while let Some(open) = self.stack.last().copied() {
            match open.end {
                Some(end) if end == at => {
                    self.stack.pop();
                    self.closed(open, events);
                }
                Some(end) if end < at => {
                    return Err(MkvError::OverrunsParent {
                        id: open.id,
                        offset: at,
                    });
                }
                _ => break,
            }
        }
        Ok(())
    }

    fn closed(&mut self, open: Open, events: &mut Vec<MkvEvent>) {
        if open.id == ID_CLUSTER && self.cluster_started {
            self.cluster_started = false;
            events.push(MkvEvent::ClusterEnd);
        }
    }

    /// Handles an element header (its payload starts at `start`): closes unknown-size parents
    /// it cannot belong to, then descends, reads whole, or skips.
    fn element(
        &mut self,
        id: u32,
        size: Option<u64>,
        start: u64,
        events: &mut Vec<MkvEvent>,
    ) -> Result<(), MkvError> {
        self.close_unknown_parents(id, events)?;
        let parent = self.stack.last().copied();
        if let (Some(size), Some(Open { end: Some(end), .. })) = (size, parent) {
            if start.saturating_add(size) > end {
                return Err(MkvError::OverrunsParent { id, offset: start });
            }
        }
        match id {
            ID_SEGMENT | ID_CLUSTER => self.open(id, size, start),
            ID_EBML | ID_INFO | ID_TRACKS => self.read_whole(id, size, HEADER_ELEMENT_BYTES_MAX),
            ID_TIMECODE | ID_SIMPLE_BLOCK | ID_BLOCK_GROUP if parent_is(parent, ID_CLUSTER) => {
                self.read_whole(id, size, ELEMENT_BYTES_MAX)
            }
            _ => {
                let size = size.ok_or(MkvError::UnknownSizeNotAllowed { id })?;
                self.pending = Pending::Skip(size);
                Ok(())
            }
        }
    }

    fn close_unknown_parents(
        &mut self,
        id: u32,
        events: &mut Vec<MkvEvent>,
    ) -> Result<(), MkvError> {
        while let Some(open) = self.stack.last().copied() {
            if may_contain(open.id, id) {
                return Ok(());
            }
            if open.end.is_some() {
                return Err(MkvError::Misplaced {
                    id,
                    parent: open.id,
                });
            }
            self.stack.pop();
            self.closed(open, events);
        }
        Ok(())
    }

    fn open(&mut self, id: u32, size: Option<u64>, start: u64) -> Result<(), MkvError> {
        if self.stack.len() >= NESTING_DEPTH_MAX {
            return Err(MkvError::TooDeep);
        }
        let end = size.map(|s| start.saturating_add(s));
        if id == ID_CLUSTER {
            self.cluster_started = false;
        }
        self.stack.push(Open { id, end });
        Ok(())
    }

    fn read_whole(&mut self, id: u32, size: Option<u64>, limit: usize) -> Result<(), MkvError> {
        let size = size.ok_or(MkvError::UnknownSizeNotAllowed { id })?;
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s <= limit)
            .ok_or(MkvError::ElementTooLarge { id, size, limit })?;
        self.pending = Pending::Whole { id, size };
        Ok(())
    }

    /// An element read whole.
    fn whole(&mut self, id: u32, body: &[u8], events: &mut Vec<MkvEvent>) -> Result<(), MkvError> {
        match id {
            ID_EBML => events.push(MkvEvent::Header {
                doc_type: parse_doc_type(body)?,
            }),
            ID_INFO => events.push(MkvEvent::Info {
                timecode_scale_ns: parse_timecode_scale(body)?,
            }),
            ID_TRACKS => events.push(MkvEvent::Tracks(parse_tracks(body)?)),
            ID_TIMECODE => {
                let timecode = read_uint(body)?;
                if !self.cluster_started {
                    self.cluster_started = true;
                    events.push(MkvEvent::ClusterStart { timecode });
                }
            }
            ID_SIMPLE_BLOCK => events.push(MkvEvent::Frame(self.simple_block(body)?)),
            _ => events.push(MkvEvent::Frame(self.block_group(body)?)),
        }
        Ok(())
    }

    fn simple_block(&self, body: &[u8]) -> Result<MkvFrame, MkvError> {
        if !self.cluster_started {
            return Err(MkvError::MissingClusterTimecode);
        }
        let (frame, flags) = parse_block(body)?;
        Ok(MkvFrame {
            keyframe: flags & 0x80 != 0,
            ..frame
        })
    }

    fn block_group(&self, body: &[u8]) -> Result<MkvFrame, MkvError> {
        if !self.cluster_started {
            return Err(MkvError::MissingClusterTimecode);
        }
        let mut block = None;
        let mut referenced = false;
        let mut duration = None;
        for child in children(body) {
            let (id, data) = child?;
            match id {
                ID_BLOCK => block = Some(parse_block(data)?.0),
                ID_REFERENCE_BLOCK => referenced = true,
                ID_BLOCK_DURATION => duration = Some(read_uint(data)?),
                _ => {}
            }
        }
        let frame = block.ok_or(MkvError::Malformed {
            what: "block group without a block",
        })?;
        Ok(MkvFrame {
            keyframe: !referenced,
            duration,
            ..frame
        })
    }
}

fn parent_is(parent: Option<Open>, id: u32) -> bool {
    parent.is_some_and(|p| p.id == id)
}

/// Whether an element with id `child` can sit inside an open `parent`.
fn may_contain(parent: u32, child: u32) -> bool {
    match parent {
        ID_SEGMENT => child != ID_EBML && child != ID_SEGMENT,
        ID_CLUSTER => child != ID_EBML && child != ID_SEGMENT && !SEGMENT_CHILDREN.contains(&child),
        _ => true,
    }
}

/// Reads an element header: `(id, size or None when unknown, header bytes)`, or `None` when
/// more input is needed.
fn read_header(buf: &[u8], at: u64) -> Result<Option<(u32, Option<u64>, usize)>, MkvError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let id_len = first.leading_zeros() as usize + 1;
    if id_len > 4 {
        return Err(MkvError::InvalidId { offset: at });
    }
    let Some(id_bytes) = buf.get(..id_len) else {
        return Ok(None);
    };
    let id = id_bytes
        .iter()
        .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    let Some(&size_first) = buf.get(id_len) else {
        return Ok(None);
    };
    if size_first == 0 {
        return Err(MkvError::InvalidSize { offset: at });
    }
    let size_len = size_first.leading_zeros() as usize + 1;
    let Some(size_bytes) = buf.get(id_len..id_len + size_len) else {
        return Ok(None);
    };
    let size = vint_value(size_bytes);
    let unknown = size == (1u64 << (7 * size_len)) - 1;
    Ok(Some((id, (!unknown).then_some(size), id_len + size_len)))
}

/// The value of a complete EBML variable-size integer (its length marker removed).
fn vint_value(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    let first = u64::from(bytes[0]) & (0xFF >> len);
    bytes[1..]
        .iter()
        .fold(first, |acc, b| (acc << 8) | u64::from(*b))
}

/// Reads a vint from the front of `bytes`: `(value, length)`.
fn read_vint(bytes: &[u8]) -> Result<(u64, usize), MkvError> {
    let bad = MkvError::Malformed { what: "vint" };
    let first = *bytes.first().ok_or(bad.clone())?;
    if first == 0 {
        return Err(bad);
    }
    let len = first.leading_zeros() as usize + 1;
    let all = bytes.get(..len).ok_or(bad)?;
    Ok((vint_value(all), len))
}

/// An unsigned integer element of 0 to 8 bytes.
fn read_uint(body: &[u8]) -> Result<u64, MkvError> {
    if body.len() > 8 {
        return Err(MkvError::Malformed {
            what: "unsigned integer",
        });
    }
    Ok(body.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// The child elements of a master element held whole, each `(id, payload)`.
fn children(body: &[u8]) -> impl Iterator<Item = Result<(u32, &[u8]), MkvError>> {
    let mut rest = body;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        let item = next_child(rest);
        match &item {
            Ok((_, _, len)) => rest = &rest[*len..],
            Err(_) => failed = true,
        }
        Some(item.map(|(id, data, _)| (id, data)))
    })
}

fn next_child(buf: &[u8]) -> Result<(u32, &[u8], usize), MkvError> {
    let truncated = MkvError::Malformed {
        what: "child element",
    };
    let (id, size, header) = read_header(buf, 0)?.ok_or(truncated.clone())?;
    let size = size.ok_or(MkvError::UnknownSizeNotAllowed { id })?;
    let end = usize::try_from(size)
        .ok()
        .and_then(|s| s.checked_add(header))
        .filter(|end| *end <= buf.len())
        .ok_or(truncated)?;
    Ok((id, &buf[header..end], end))
}

fn parse_doc_type(body: &[u8]) -> Result<String, MkvError> {
    let mut doc_type = String::from("matroska");
    for child in children(body) {
        let (id, data) = child?;
        if id == ID_DOC_TYPE {
            doc_type = text(data)?;
        }
    }
    if doc_type != "matroska" && doc_type != "webm" {
        return Err(MkvError::BadDocType(doc_type));
    }
    Ok(doc_type)
}

fn parse_timecode_scale(body: &[u8]) -> Result<u64, MkvError> {
    let mut scale = DEFAULT_TIMECODE_SCALE_NS;
    for child in children(body) {
        let (id, data) = child?;
        if id == ID_TIMECODE_SCALE {
            scale = read_uint(data)?;
        }
    }
    if scale == 0 {
        return Err(MkvError::Malformed {
            what: "zero timecode scale",
        });
    }
    Ok(scale)
}

fn parse_tracks(body: &[u8]) -> Result<Vec<MkvTrack>, MkvError> {
    let mut tracks = Vec::new();
    for child in children(body) {
        let (id, data) = child?;
        if id != ID_TRACK_ENTRY {
            continue;
        }
        if tracks.len() == TRACKS_MAX {
            return Err(MkvError::TooManyTracks {
                count: TRACKS_MAX + 1,
            });
        }
        tracks.push(parse_track(data)?);
    }
    Ok(tracks)
}

fn parse_track(body: &[u8]) -> Result<MkvTrack, MkvError> {
    let mut track = MkvTrack::default();
    for child in children(body) {
        let (id, data) = child?;
        match id {
            ID_TRACK_NUMBER => track.number = read_uint(data)?,
            ID_TRACK_TYPE => track.track_type = read_uint(data)?,
            ID_CODEC_ID if data.len() <= CODEC_ID_BYTES_MAX => track.codec_id = text(data)?,
            ID_CODEC_ID => return Err(MkvError::Malformed { what: "codec id" }),
            ID_CODEC_PRIVATE => track.codec_private = Bytes::copy_from_slice(data),
            ID_DEFAULT_DURATION => track.default_duration_ns = Some(read_uint(data)?),
            ID_VIDEO => read_video(data, &mut track)?,
            _ => {}
        }
    }
    if track.number == 0 {
        return Err(MkvError::Malformed {
            what: "track without a number",
        });
    }
    Ok(track)
}

fn read_video(body: &[u8], track: &mut MkvTrack) -> Result<(), MkvError> {
    for child in children(body) {
        let (id, data) = child?;
        let value = || {
            u32::try_from(read_uint(data)?).map_err(|_| MkvError::Malformed { what: "pixel size" })
        };
        match id {
            ID_PIXEL_WIDTH => track.pixel_width = Some(value()?),
            ID_PIXEL_HEIGHT => track.pixel_height = Some(value()?),
            _ => {}
        }
    }
    Ok(())
}

/// A string element: UTF-8, trailing NULs allowed as padding.
fn text(data: &[u8]) -> Result<String, MkvError> {
    let trimmed = data.split(|b| *b == 0).next().unwrap_or_default();
    std::str::from_utf8(trimmed)
        .map(str::to_owned)
        .map_err(|_| MkvError::Malformed { what: "string" })
}

/// A Block or SimpleBlock payload: the frame (keyframe unset) and the flags byte.
fn parse_block(body: &[u8]) -> Result<(MkvFrame, u8), MkvError> {
    let (track, len) = read_vint(body)?;
    let head = body.get(len..len + 3).ok_or(MkvError::Malformed {
        what: "block header",
    })?;
    let relative_timecode = i16::from_be_bytes([head[0], head[1]]);
    let flags = head[2];
    if flags & 0x06 != 0 {
        return Err(MkvError::LacingUnsupported);
    }
    let data = &body[len + 3..];
    if data.len() > FRAME_BYTES_MAX {
        return Err(MkvError::ElementTooLarge {
            id: ID_BLOCK,
            size: data.len() as u64,
            limit: FRAME_BYTES_MAX,
        });
    }
    let frame = MkvFrame {
        track,
        relative_timecode,
        keyframe: false,
        duration: None,
        data: Bytes::copy_from_slice(data),
    };
    Ok((frame, flags))
}

/// How cluster timecodes relate to wall-clock time (`x-amzn-fragment-timecode-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimecodeType {
    /// Cluster timecodes are milliseconds (after scaling) since the Unix epoch.
    Absolute,
    /// Cluster timecodes count from the producer's start timestamp.
    Relative,
}

/// Bounds and timing of a [`ClusterAssembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerConfig {
    pub timecode_type: TimecodeType,
    /// The producer's start, milliseconds since the Unix epoch (RELATIVE timecodes add to it).
    pub producer_start_ms: u64,
    /// Most frame bytes in one fragment.
    pub fragment_bytes_max: usize,
    /// Longest fragment accepted, in milliseconds.
    pub fragment_duration_ms_max: u64,
}

/// What a cluster produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembled {
    /// A cluster with this timecode (milliseconds, as sent) began.
    Started { timecode_ms: u64 },
    /// A cluster is complete and became this fragment.
    Fragment {
        timecode_ms: u64,
        fragment: MediaFragment,
    },
    /// A cluster was refused; the stream continues with the next one.
    Refused { timecode_ms: u64, error: MkvError },
}

/// The H.264 track fragments are built from.
#[derive(Debug, Clone)]
struct VideoTrack {
    number: u64,
    avcc: Bytes,
    nal_length_size: u8,
    width: u32,
    height: u32,
    default_duration_ns: Option<u64>,
}

/// One frame of the cluster being built.
#[derive(Debug, Clone)]
struct PendingFrame {
    pts_us: i64,
    keyframe: bool,
    duration_us: Option<i64>,
    data: Bytes,
}

/// The cluster being built.
#[derive(Debug, Default)]
struct Building {
    /// The cluster's timecode in ticks, and in milliseconds as acknowledged.
    ticks: u64,
    timecode_ms: u64,
    frames: Vec<PendingFrame>,
    bytes: usize,
    refused: Option<MkvError>,
}

/// Turns parser events into one [`MediaFragment`] per cluster: see the module documentation.
#[derive(Debug)]
pub struct ClusterAssembler {
    config: AssemblerConfig,
    timecode_scale_ns: u64,
    tracks: Vec<u64>,
    video: Option<VideoTrack>,
    building: Option<Building>,
    /// Start of the previous cluster, microseconds since the epoch.
    last_start_us: Option<i64>,
}

impl ClusterAssembler {
    pub fn new(config: AssemblerConfig) -> Self {
        Self {
            config,
            timecode_scale_ns: DEFAULT_TIMECODE_SCALE_NS,
            tracks: Vec::new(),
            video: None,
            building: None,
            last_start_us: None,
        }
    }

    /// Follows one event. `Err` is an error of the whole stream (it cannot go on).
    pub fn on_event(&mut self, event: MkvEvent) -> Result<Option<Assembled>, MkvError> {
        match event {
            MkvEvent::Header { .. } => {
                self.timecode_scale_ns = DEFAULT_TIMECODE_SCALE_NS;
                Ok(None)
            }
            MkvEvent::Info { timecode_scale_ns } => {
                self.timecode_scale_ns = timecode_scale_ns;
                Ok(None)
            }
            MkvEvent::Tracks(tracks) => self.on_tracks(&tracks).map(|()| None),
            MkvEvent::ClusterStart { timecode } => self.on_cluster_start(timecode).map(Some),
            MkvEvent::Frame(frame) => self.on_frame(frame).map(|()| None),
            MkvEvent::ClusterEnd => Ok(self.on_cluster_end()),
        }
    }

    fn on_tracks(&mut self, tracks: &[MkvTrack]) -> Result<(), MkvError> {
        self.tracks = tracks.iter().map(|t| t.number).collect();
        let avc = tracks
            .iter()
            .find(|t| AVC_CODEC_IDS.contains(&t.codec_id.as_str()));
        let Some(track) = avc else {
            return Err(
                match tracks.iter().find(|t| t.track_type == TRACK_TYPE_VIDEO) {
                    Some(t) if t.codec_id == HEVC_CODEC_ID => {
                        MkvError::UnsupportedCodec(t.codec_id.clone())
                    }
                    Some(t) => MkvError::UnsupportedCodec(t.codec_id.clone()),
                    None => MkvError::NoVideoTrack,
                },
            );
        };
        self.video = Some(video_track(track)?);
        Ok(())
    }

    fn on_cluster_start(&mut self, timecode: u64) -> Result<Assembled, MkvError> {
        let timecode_ms = self.ticks_to_us(timecode, 0)? / 1000;
        let timecode_ms = u64::try_from(timecode_ms).map_err(|_| MkvError::TimecodeOutOfRange)?;
        let mut building = Building {
            ticks: timecode,
            timecode_ms,
            ..Building::default()
        };
        let start_us = self.pts_us(timecode, 0)?;
        if self.last_start_us.is_some_and(|last| start_us < last) {
            building.refused = Some(MkvError::TimecodeNotMonotonic);
        } else {
            self.last_start_us = Some(start_us);
        }
        self.building = Some(building);
        Ok(Assembled::Started { timecode_ms })
    }

    fn on_frame(&mut self, frame: MkvFrame) -> Result<(), MkvError> {
        let Some(video) = self.video.clone() else {
            return Err(MkvError::FrameBeforeTracks);
        };
        let cluster_timecode = self.cluster_ticks()?;
        let pts_us = self.pts_us(cluster_timecode, i64::from(frame.relative_timecode))?;
        let duration_us = frame.duration.map(|d| self.ticks_to_us(d, 0)).transpose()?;
        let limit = self.config.fragment_bytes_max;
        let known = self.tracks.contains(&frame.track);
        let Some(building) = self.building.as_mut() else {
            return Err(MkvError::MissingClusterTimecode);
        };
        if building.refused.is_some() || frame.track != video.number {
            if !known && building.refused.is_none() {
                building.refused = Some(MkvError::TrackMismatch(frame.track));
                building.frames = Vec::new();
            }
            return Ok(());
        }
        building.bytes = building.bytes.saturating_add(frame.data.len());
        if building.bytes > limit || building.frames.len() >= FRAGMENT_SAMPLES_MAX {
            building.refused = Some(MkvError::FragmentTooLarge { limit });
            building.frames = Vec::new();
            return Ok(());
        }
        let data = to_four_byte_lengths(frame.data, video.nal_length_size)?;
        building.frames.push(PendingFrame {
            pts_us,
            keyframe: frame.keyframe,
            duration_us,
            data,
        });
        Ok(())
    }

    fn on_cluster_end(&mut self) -> Option<Assembled> {
        let building = self.building.take()?;
        let timecode_ms = building.timecode_ms;
        let result = match building.refused {
            Some(error) => Err(error),
            None => self.fragment(building.frames),
        };
        Some(match result {
            Ok(fragment) => Assembled::Fragment {
                timecode_ms,
                fragment,
            },
            Err(error) => Assembled::Refused { timecode_ms, error },
        })
    }

    fn fragment(&self, frames: Vec<PendingFrame>) -> Result<MediaFragment, MkvError> {
        let video = self.video.as_ref().ok_or(MkvError::FrameBeforeTracks)?;
        if frames.is_empty() {
            return Err(MkvError::EmptyCluster);
        }
        let default_us = video
            .default_duration_ns
            .and_then(|ns| i64::try_from(ns / 1000).ok());
        let samples = timed_samples(frames, default_us);
        let fragment = MediaFragment {
            codec: Codec::H264,
            width: video.width,
            height: video.height,
            codec_config: video.avcc.clone(),
            samples,
        };
        let duration_ms = fragment.duration_us() / 1000;
        if duration_ms > self.config.fragment_duration_ms_max {
            return Err(MkvError::FragmentTooLong {
                duration_ms,
                limit_ms: self.config.fragment_duration_ms_max,
            });
        }
        Ok(fragment)
    }

    fn cluster_ticks(&self) -> Result<u64, MkvError> {
        self.building
            .as_ref()
            .map(|b| b.ticks)
            .ok_or(MkvError::MissingClusterTimecode)
    }

    /// Microseconds for `ticks + relative` ticks, without the producer's start.
    fn ticks_to_us(&self, ticks: u64, relative: i64) -> Result<i64, MkvError> {
        let total = i128::from(ticks) + i128::from(relative);
        let us = total * i128::from(self.timecode_scale_ns) / 1000;
        i64::try_from(us).map_err(|_| MkvError::TimecodeOutOfRange)
    }

    /// Presentation time in microseconds since the epoch.
    fn pts_us(&self, ticks: u64, relative: i64) -> Result<i64, MkvError> {
        let offset = match self.config.timecode_type {
            TimecodeType::Absolute => 0,
            TimecodeType::Relative => i64::try_from(self.config.producer_start_ms)
                .ok()
                .and_then(|ms| ms.checked_mul(1000))
                .ok_or(MkvError::TimecodeOutOfRange)?,
        };
        self.ticks_to_us(ticks, relative)?
            .checked_add(offset)
            .ok_or(MkvError::TimecodeOutOfRange)
    }
}

fn video_track(track: &MkvTrack) -> Result<VideoTrack, MkvError> {
    let config = h264::parse_avcc(&track.codec_private)?;
    let size = h264::picture_size_from_avcc(&track.codec_private).ok();
    let width = size.map(|s| s.width).or(track.pixel_width).unwrap_or(0);
    let height = size.map(|s| s.height).or(track.pixel_height).unwrap_or(0);
    // Samples are stored with 4-byte NAL lengths; say so in the stored record.
    let mut avcc = track.codec_private.to_vec();
    if let Some(byte) = avcc.get_mut(4) {
        *byte |= 0x03;
    }
    Ok(VideoTrack {
        number: track.number,
        avcc: Bytes::from(avcc),
        nal_length_size: config.nal_length_size,
        width,
        height,
        default_duration_ns: track.default_duration_ns,
    })
}

/// Decoding times from presentation times: Matroska stores only the latter, in decoding
/// order. The sorted presentation times, shifted so that no frame decodes after it is shown.
fn timed_samples(frames: Vec<PendingFrame>, default_us: Option<i64>) -> Vec<Sample> {
    let mut sorted: Vec<i64> = frames.iter().map(|f| f.pts_us).collect();
    sorted.sort_unstable();
    let shift = frames
        .iter()
        .zip(&sorted)
        .map(|(f, dts)| dts.saturating_sub(f.pts_us))
        .max()
        .unwrap_or(0)
        .max(0);
    let dts: Vec<i64> = sorted.iter().map(|t| t.saturating_sub(shift)).collect();
    let mut previous = default_us.unwrap_or(0);
    frames
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let duration = match dts.get(i + 1) {
                Some(next) => next.saturating_sub(dts[i]),
                None => f.duration_us.or(default_us).unwrap_or(previous),
            };
            previous = duration;
            Sample {
                pts_us: f.pts_us,
                dts_us: dts[i],
                duration_us: u32::try_from(duration.max(0)).unwrap_or(u32::MAX),
                keyframe: f.keyframe,
                data: f.data,
            }
        })
        .collect()
}

/// An access unit with NAL lengths of `length_size` bytes, rewritten with 4-byte lengths.
fn to_four_byte_lengths(data: Bytes, length_size: u8) -> Result<Bytes, MkvError> {
    let size = usize::from(length_size);
    let bad = MkvError::Malformed {
        what: "NAL unit lengths of a frame",
    };
    let mut out = Vec::with_capacity(if size == 4 {
        0
    } else {
        data.len() + data.len() / 2
    });
    let mut pos = 0;
    while pos < data.len() {
        let prefix = data.get(pos..pos + size).ok_or(bad.clone())?;
        let len = prefix
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        let nal = data.get(pos + size..pos + size + len).ok_or(bad.clone())?;
        if size != 4 {
            out.extend_from_slice(&u32::try_from(len).map_err(|_| bad.clone())?.to_be_bytes());
            out.extend_from_slice(nal);
        }
        pos += size + len;
    }
    Ok(if size == 4 { data } else { Bytes::from(out) })
}

/// Entry point for the fuzz target: parsing and assembling arbitrary bytes, fed in uneven
/// pieces, never panics and never holds more than the limits allow.
pub fn fuzz_decode(bytes: &[u8]) {
    let mut parser = MkvParser::new();
    let mut assembler = ClusterAssembler::new(AssemblerConfig {
        timecode_type: TimecodeType::Relative,
        producer_start_ms: 1_700_000_000_000,
        fragment_bytes_max: 1024 * 1024,
        fragment_duration_ms_max: 10_000,
    });
    let piece = usize::from(bytes.first().copied().unwrap_or(1)).max(1);
    for chunk in bytes.chunks(piece) {
        let Ok(events) = parser.feed(chunk) else {
            return;
        };
        assert!(parser.buffered_bytes() <= ELEMENT_BYTES_MAX + 16 + piece);
        for event in events {
            if assembler.on_event(event).is_err() {
                return;
            }
        }
    }
    if let Ok(events) = parser.finish() {
        for event in events {
            let _ = assembler.on_event(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::media::mp4;

    const START_MS: u64 = 1_700_000_000_000;

    fn config(timecode_type: TimecodeType) -> AssemblerConfig {
        AssemblerConfig {
            timecode_type,
            producer_start_ms: START_MS,
            fragment_bytes_max: 50 * 1024 * 1024,
            fragment_duration_ms_max: 10_000,
        }
    }

    /// A sample clip: `$HYDRANT_ASSETS`, else `../shared/assets` beside the crate.
    fn video(name: &str) -> PathBuf {
        let from_env = std::env::var_os("HYDRANT_ASSETS").map(PathBuf::from);
        let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/assets");
        let dir = from_env.into_iter().chain([beside]).find(|p| p.is_dir());
        let path = dir.expect("assets directory").join("videos").join(name);
        assert!(path.is_file(), "asset {} is missing", path.display());
        path
    }

    /// The clip remuxed by GStreamer's matroskamux in streamable mode (unknown sizes).
    fn gstreamer_mkv(name: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out.mkv");
        let status = Command::new("gst-launch-1.0")
            .arg("-q")
            .arg("filesrc")
            .arg(format!("location={}", video(name).display()))
            .args(["!", "qtdemux", "!", "h264parse", "!", "matroskamux"])
            .args(["streamable=true", "!", "filesink"])
            .arg(format!("location={}", out.display()))
            .status()
            .expect("gst-launch-1.0 runs");
        assert!(status.success());
        std::fs::read(out).expect("mkv written")
    }

    /// Video packets in a file, counted by ffprobe (independently of this parser).
    fn ffprobe_packets(path: &Path) -> usize {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-count_packets"])
            .args(["-show_entries", "stream=nb_read_packets", "-of", "csv=p=0"])
            .arg(path)
            .output()
            .expect("ffprobe runs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a count")
    }

    fn parse_in_chunks(bytes: &[u8], rng: &mut StdRng, chunk_max: usize) -> Vec<MkvEvent> {
        let mut parser = MkvParser::new();
        let mut events = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = rng.random_range(1..=chunk_max).min(rest.len());
            events.extend(parser.feed(&rest[..n]).expect("valid stream"));
            assert!(parser.buffered_bytes() <= ELEMENT_BYTES_MAX + 16 + n);
            rest = &rest[n..];
        }
        events.extend(parser.finish().expect("complete stream"));
        events
    }

    fn assemble(events: Vec<MkvEvent>, config: AssemblerConfig) -> Vec<Assembled> {
        let mut assembler = ClusterAssembler::new(config);
        events
            .into_iter()
            .filter_map(|e| assembler.on_event(e).expect("no stream error"))
            .collect()
    }

    fn fragments(assembled: &[Assembled]) -> Vec<MediaFragment> {
        assembled
            .iter()
            .filter_map(|a| match a {
                Assembled::Fragment { fragment, .. } => Some(fragment.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn gstreamer_streamable_output_parses_the_same_in_any_chunking() {
        let name = "beweging_light-dark.mp4";
        let mkv = gstreamer_mkv(name);
        let mut rng = StdRng::seed_from_u64(7);
        let whole = parse_in_chunks(&mkv, &mut rng, mkv.len());
        let bytewise = parse_in_chunks(&mkv, &mut rng, 1);
        let uneven = parse_in_chunks(&mkv, &mut rng, 5000);
        assert_eq!(whole, bytewise);
        assert_eq!(whole, uneven);
        let frames = whole
            .iter()
            .filter(|e| matches!(e, MkvEvent::Frame(_)))
            .count();
        assert_eq!(frames, ffprobe_packets(&video(name)));
        let starts = whole
            .iter()
            .filter(|e| matches!(e, MkvEvent::ClusterStart { .. }))
            .count();
        let ends = whole.iter().filter(|e| **e == MkvEvent::ClusterEnd).count();
        assert!(starts > 1, "matroskamux cuts clusters at keyframes");
        assert_eq!(starts, ends, "every unknown-size cluster is closed");
    }

    #[test]
    fn clusters_become_playable_fragments_with_relative_time() {
        let mkv = gstreamer_mkv("beweging_light-dark.mp4");
        let mut rng = StdRng::seed_from_u64(8);
        let assembled = assemble(
            parse_in_chunks(&mkv, &mut rng, 3000),
            config(TimecodeType::Relative),
        );
        let fragments = fragments(&assembled);
        assert_eq!(
            fragments.len() * 2,
            assembled.len(),
            "Started + Fragment each"
        );
        let mut previous = 0;
        for f in &fragments {
            assert!(f.starts_with_keyframe());
            assert!((f.width, f.height) != (0, 0));
            assert!(f.start_us() >= (START_MS * 1000) as i64);
            assert!(f.start_us() > previous);
            previous = f.start_us();
            for s in &f.samples {
                assert!(s.dts_us <= s.pts_us);
                h264::parse_avcc(&f.codec_config).expect("avcC");
            }
            let encoded = f.encode();
            assert_eq!(MediaFragment::decode(&encoded).as_ref(), Ok(f));
        }
        let file = mp4::write_mp4(&fragments).expect("muxes");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clip.mp4");
        std::fs::write(&path, file).expect("written");
        assert_eq!(
            ffprobe_packets(&path),
            fragments.iter().map(|f| f.samples.len()).sum::<usize>()
        );
    }

    // Hand-built streams for the cases GStreamer does not produce.

    fn el(id: u32, body: &[u8]) -> Vec<u8> {
        let mut out = id_bytes(id);
        out.push(0x01);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    }

    fn unknown(id: u32) -> Vec<u8> {
        let mut out = id_bytes(id);
        out.extend_from_slice(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        out
    }

    fn id_bytes(id: u32) -> Vec<u8> {
        id.to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect()
    }

    /// avcC of a 320x240 baseline SPS.
    fn avcc() -> Vec<u8> {
        let sps = [0x67, 0x42, 0xC0, 0x0D, 0xDA, 0x05, 0x07, 0xEC, 0x04, 0x40];
        let pps = [0x68, 0xCE, 0x3C, 0x80];
        let mut out = vec![1, 0x42, 0xC0, 0x0D, 0xFF, 0xE1, 0, sps.len() as u8];
        out.extend_from_slice(&sps);
        out.extend_from_slice(&[1, 0, pps.len() as u8]);
        out.extend_from_slice(&pps);
        out
    }

    fn track(number: u8, codec: &str) -> Vec<u8> {
        let mut body = el(ID_TRACK_NUMBER, &[number]);
        body.extend(el(ID_TRACK_TYPE, &[1]));
        body.extend(el(ID_CODEC_ID, codec.as_bytes()));
        body.extend(el(ID_CODEC_PRIVATE, &avcc()));
        el(ID_TRACK_ENTRY, &body)
    }

    fn header_and_tracks(tracks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = el(ID_EBML, &el(ID_DOC_TYPE, b"matroska"));
        out.extend(unknown(ID_SEGMENT));
        out.extend(el(ID_INFO, &el(ID_TIMECODE_SCALE, &[0x0F, 0x42, 0x40])));
        out.extend(el(ID_TRACKS, &tracks.concat()));
        out
    }

    fn block(track: u8, relative: i16, flags: u8) -> Vec<u8> {
        let mut body = vec![0x80 | track];
        body.extend_from_slice(&relative.to_be_bytes());
        body.push(flags);
        body.extend_from_slice(&[0, 0, 0, 2, 0x65, 0x88]);
        body
    }

    fn cluster_body(timecode: u16, frames: u16) -> Vec<u8> {
        let mut body = el(ID_TIMECODE, &timecode.to_be_bytes());
        body.extend(el(0xEC, &[0; 5])); // Void: skipped
        body.extend(el(ID_SIMPLE_BLOCK, &block(1, 0, 0x80)));
        for i in 1..frames {
            body.extend(el(ID_SIMPLE_BLOCK, &block(1, i as i16 * 40, 0)));
        }
        body
    }

    fn run(bytes: &[u8], kind: TimecodeType) -> Result<Vec<Assembled>, MkvError> {
        let mut parser = MkvParser::new();
        let mut assembler = ClusterAssembler::new(config(kind));
        let mut events = parser.feed(bytes)?;
        events.extend(parser.finish()?);
        let mut out = Vec::new();
        for event in events {
            out.extend(assembler.on_event(event)?);
        }
        Ok(out)
    }

    #[test]
    fn known_and_unknown_size_clusters_and_block_groups() {
        let mut stream = header_and_tracks(&[track(1, "V_MPEG/ISO/AVC")]);
        stream.extend(el(ID_CLUSTER, &cluster_body(0, 3)));
        stream.extend(unknown(ID_CLUSTER));
        stream.extend(cluster_body(1000, 2));
        let mut group = el(ID_BLOCK, &block(1, 80, 0));
        group.extend(el(ID_REFERENCE_BLOCK, &[0x81]));
        group.extend(el(ID_BLOCK_DURATION, &[40]));
        stream.extend(el(ID_BLOCK_GROUP, &group));
        stream.extend(el(ID_CUES, &[0; 3])); // ends the unknown-size cluster
        let out = run(&stream, TimecodeType::Absolute).expect("valid");
        let fragments = fragments(&out);
        assert_eq!(fragments.len(), 2);
        assert_eq!((fragments[0].width, fragments[0].height), (320, 240));
        assert_eq!(fragments[1].samples.len(), 3);
        assert!(!fragments[1].samples[2].keyframe);
        assert_eq!(fragments[1].start_us(), 1_000_000);
        assert_eq!(fragments[1].duration_us(), 120_000);
        assert_eq!(out[2], Assembled::Started { timecode_ms: 1000 });
    }

    #[test]
    fn fragment_errors_spoil_one_cluster_only() {
        let mut stream = header_and_tracks(&[track(1, "V_MPEG4/ISO/AVC")]);
        stream.extend(el(ID_CLUSTER, &cluster_body(2000, 1)));
        stream.extend(el(ID_CLUSTER, &cluster_body(1000, 1)));
        let mut wrong_track = el(ID_TIMECODE, &[0x0B, 0xB8]);
        wrong_track.extend(el(ID_SIMPLE_BLOCK, &block(2, 0, 0x80)));
        stream.extend(el(ID_CLUSTER, &wrong_track));
        stream.extend(el(ID_CLUSTER, &cluster_body(4000, 300)));
        stream.extend(el(ID_CLUSTER, &cluster_body(20000, 1)));
        let out = run(&stream, TimecodeType::Relative).expect("stream goes on");
        let refused: Vec<&MkvError> = out
            .iter()
            .filter_map(|a| match a {
                Assembled::Refused { error, .. } => Some(error),
                _ => None,
            })
            .collect();
        assert_eq!(
            refused,
            [
                &MkvError::TimecodeNotMonotonic,
                &MkvError::TrackMismatch(2),
                &MkvError::FragmentTooLong {
                    duration_ms: 12_000,
                    limit_ms: 10_000
                }
            ]
        );
        let ok = fragments(&out);
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].start_us(), (START_MS as i64 + 20_000) * 1000);
    }

    #[test]
    fn stream_errors_are_typed() {
        let hevc = header_and_tracks(&[track(1, "V_MPEGH/ISO/HEVC")]);
        assert_eq!(
            run(&hevc, TimecodeType::Absolute),
            Err(MkvError::UnsupportedCodec("V_MPEGH/ISO/HEVC".into()))
        );
        let four: Vec<Vec<u8>> = (1..=4).map(|n| track(n, "V_MPEG4/ISO/AVC")).collect();
        assert_eq!(
            run(&header_and_tracks(&four), TimecodeType::Absolute),
            Err(MkvError::TooManyTracks { count: 4 })
        );
        let mut huge = header_and_tracks(&[track(1, "V_MPEG4/ISO/AVC")]);
        huge.extend(unknown(ID_CLUSTER));
        huge.extend(el(ID_TIMECODE, &[0]));
        huge.extend_from_slice(&[0xA3, 0x08, 0x02, 0, 0, 0]);
        assert!(matches!(
            run(&huge, TimecodeType::Absolute),
            Err(MkvError::ElementTooLarge {
                id: ID_SIMPLE_BLOCK,
                ..
            })
        ));
        let mut no_timecode = header_and_tracks(&[track(1, "V_MPEG4/ISO/AVC")]);
        no_timecode.extend(el(ID_CLUSTER, &el(ID_SIMPLE_BLOCK, &block(1, 0, 0x80))));
        assert_eq!(
            run(&no_timecode, TimecodeType::Absolute),
            Err(MkvError::MissingClusterTimecode)
        );
        assert_eq!(
            run(&[0x00, 0x81, 0x00], TimecodeType::Absolute),
            Err(MkvError::InvalidId { offset: 0 })
        );
        let mut unknown_leaf = header_and_tracks(&[]);
        unknown_leaf.extend(unknown(0xEC));
        assert!(matches!(
            run(&unknown_leaf, TimecodeType::Absolute),
            Err(MkvError::UnknownSizeNotAllowed { id: 0xEC })
        ));
        let mut cut = header_and_tracks(&[track(1, "V_MPEG4/ISO/AVC")]);
        cut.extend(el(ID_CLUSTER, &cluster_body(0, 2)));
        cut.truncate(cut.len() - 3);
        assert_eq!(run(&cut, TimecodeType::Absolute), Err(MkvError::Truncated));
        let mut nested = Vec::new();
        for _ in 0..=NESTING_DEPTH_MAX {
            nested.extend(unknown(ID_SEGMENT));
            nested.extend(unknown(ID_CLUSTER));
        }
        // Unknown-size siblings close each other, so depth stays small: no error.
        assert!(run(&nested, TimecodeType::Absolute).is_ok());
    }

    #[test]
    fn random_and_mutated_streams_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x6d6b76);
        let mkv = gstreamer_mkv("beweging_light-dark.mp4");
        let head = &mkv[..mkv.len().min(64 * 1024)];
        for _ in 0..3_000 {
            let mut bytes = head.to_vec();
            for _ in 0..rng.random_range(1..16) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            bytes.truncate(rng.random_range(0..=bytes.len()));
            fuzz_decode(&bytes);
        }
        let mut synthetic = header_and_tracks(&[track(1, "V_MPEG4/ISO/AVC")]);
        synthetic.extend(el(ID_CLUSTER, &cluster_body(0, 5)));
        for _ in 0..3_000 {
            let mut bytes = synthetic.clone();
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            fuzz_decode(&bytes);
        }
        for _ in 0..3_000 {
            let len = rng.random_range(0..512);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            fuzz_decode(&bytes);
        }
    }
}
