//! Binary encoding of the protocol messages.
//!
//! Every frame is `u32` big-endian length, then `u8` message type, then the fields. The length
//! counts the type byte and the fields. Strings are `u16` length + UTF-8; integers are big-endian.
//! Decoding never trusts a count from the input to size an allocation.

use crate::fragment::{FragmentId, StreamName, UnixMillis};

use super::{
    AckKind, ClientMessage, ErrorCode, FragmentHeader, ServerMessage, StreamOpen, StreamResume,
    WireError,
};

/// Largest control frame (length prefix included) accepted on the control stream, in bytes.
pub const CONTROL_FRAME_BYTES_MAX: usize = 64 * 1024;

/// Largest fragment header frame (length prefix included), in bytes: a stream name of 256
/// bytes plus the fixed fields fits with room to spare.
pub const FRAGMENT_HEADER_BYTES_MAX: usize = 512;

/// Size of the length prefix in front of every frame, in bytes.
pub const FRAME_PREFIX_BYTES: usize = 4;

const TYPE_HELLO: u8 = 0x01;
const TYPE_WELCOME: u8 = 0x10;
const TYPE_STREAM_REFUSED: u8 = 0x11;
const TYPE_ACK: u8 = 0x12;
const TYPE_ERROR: u8 = 0x13;
const TYPE_FRAGMENT_HEADER: u8 = 0x20;

/// Smallest encoding of one stream entry (empty name is invalid, so at least 1 byte + epoch).
const STREAM_OPEN_BYTES_MIN: usize = 2 + 1 + 8;
const STREAM_RESUME_BYTES_MIN: usize = STREAM_OPEN_BYTES_MIN + 8;

/// Encodes a client message as one length-prefixed frame.
pub fn encode_client(msg: &ClientMessage) -> Vec<u8> {
    let mut w = Writer::frame();
    match msg {
        ClientMessage::Hello {
            version,
            agent,
            streams,
        } => {
            w.u8(TYPE_HELLO);
            w.u16(*version);
            w.str(agent);
            w.u16(len_u16(streams.len()));
            for open in streams.iter().take(usize::from(u16::MAX)) {
                w.str(open.stream.as_str());
                w.u64(open.epoch);
            }
        }
    }
    w.finish()
}

/// Encodes a server message as one length-prefixed frame.
pub fn encode_server(msg: &ServerMessage) -> Vec<u8> {
    let mut w = Writer::frame();
    match msg {
        ServerMessage::Welcome { resumes } => {
            w.u8(TYPE_WELCOME);
            w.u16(len_u16(resumes.len()));
            for r in resumes.iter().take(usize::from(u16::MAX)) {
                w.str(r.stream.as_str());
                w.u64(r.epoch);
                w.u64(r.next_sequence);
            }
        }
        ServerMessage::StreamRefused {
            stream,
            code,
            message,
        } => {
            w.u8(TYPE_STREAM_REFUSED);
            w.str(stream.as_str());
            w.u16(code.as_u16());
            w.str(message);
        }
        ServerMessage::Ack {
            id,
            kind,
            fragment_number,
        } => {
            w.u8(TYPE_ACK);
            w.id(id);
            w.u8(match kind {
                AckKind::Received => 0,
                AckKind::Persisted => 1,
            });
            w.opt_str(fragment_number.as_deref());
        }
        ServerMessage::Error { id, code, message } => {
            w.u8(TYPE_ERROR);
            match id {
                Some(id) => {
                    w.u8(1);
                    w.id(id);
                }
                None => w.u8(0),
            }
            w.u16(code.as_u16());
            w.str(message);
        }
    }
    w.finish()
}

/// Encodes the header frame that opens a fragment stream (the payload follows it).
pub fn encode_fragment_header(header: &FragmentHeader) -> Vec<u8> {
    let mut w = Writer::frame();
    w.u8(TYPE_FRAGMENT_HEADER);
    w.id(&header.id);
    w.u64(header.producer_timestamp.0);
    w.u32(header.duration_ms);
    w.u32(header.payload_len);
    w.u32(header.checksum);
    w.finish()
}

/// Reads the length prefix of a frame: the number of bytes that follow it. Refuses a body
/// longer than `frame_bytes_max - FRAME_PREFIX_BYTES` and an empty body.
pub fn frame_body_len(prefix: [u8; 4], frame_bytes_max: usize) -> Result<usize, WireError> {
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > frame_bytes_max.saturating_sub(FRAME_PREFIX_BYTES) {
        return Err(WireError::FrameTooLarge {
            len,
            max: frame_bytes_max,
        });
    }
    if len == 0 {
        return Err(WireError::Truncated);
    }
    Ok(len)
}

/// Decodes one complete fragment header frame (prefix included) from the start of `bytes`;
/// returns the header and the number of bytes it used. `Truncated` when `bytes` is short.
pub fn decode_fragment_header(bytes: &[u8]) -> Result<(FragmentHeader, usize), WireError> {
    let (body, used) =
        split_frame(bytes, FRAGMENT_HEADER_BYTES_MAX)?.ok_or(WireError::Truncated)?;
    Ok((decode_fragment_header_body(body)?, used))
}

/// Decodes a fragment header frame body (type byte and fields, no prefix).
pub fn decode_fragment_header_body(body: &[u8]) -> Result<FragmentHeader, WireError> {
    let mut r = Reader::new(body);
    expect_type(r.u8()?, TYPE_FRAGMENT_HEADER)?;
    let header = FragmentHeader {
        id: r.id()?,
        producer_timestamp: UnixMillis(r.u64()?),
        duration_ms: r.u32()?,
        payload_len: r.u32()?,
        checksum: r.u32()?,
    };
    r.finish()?;
    Ok(header)
}

/// Decodes a client frame body (type byte and fields, no prefix).
pub fn decode_client_body(body: &[u8]) -> Result<ClientMessage, WireError> {
    let mut r = Reader::new(body);
    let msg = match r.u8()? {
        TYPE_HELLO => {
            let version = r.u16()?;
            let agent = r.string()?;
            let count = usize::from(r.u16()?);
            let mut streams = Vec::with_capacity(count.min(r.remaining() / STREAM_OPEN_BYTES_MIN));
            for _ in 0..count {
                streams.push(StreamOpen {
                    stream: r.stream_name()?,
                    epoch: r.u64()?,
                });
            }
            ClientMessage::Hello {
                version,
                agent,
                streams,
            }
        }
        other => return Err(WireError::UnknownMessageType(other)),
    };
    r.finish()?;
    Ok(msg)
}

/// Decodes a server frame body (type byte and fields, no prefix).
pub fn decode_server_body(body: &[u8]) -> Result<ServerMessage, WireError> {
    let mut r = Reader::new(body);
    let msg = match r.u8()? {
        TYPE_WELCOME => decode_welcome(&mut r)?,
        TYPE_STREAM_REFUSED => ServerMessage::StreamRefused {
            stream: r.stream_name()?,
            code: ErrorCode::from_u16(r.u16()?)?,
            message: r.string()?,
        },
        TYPE_ACK => ServerMessage::Ack {
            id: r.id()?,
            kind: match r.u8()? {
                0 => AckKind::Received,
                1 => AckKind::Persisted,
                other => return Err(WireError::BadAckKind(other)),
            },
            fragment_number: r.opt_string()?,
        },
        TYPE_ERROR => ServerMessage::Error {
            id: match r.u8()? {
                0 => None,
                1 => Some(r.id()?),
                other => return Err(WireError::BadFlag(other)),
            },
            code: ErrorCode::from_u16(r.u16()?)?,
            message: r.string()?,
        },
        other => return Err(WireError::UnknownMessageType(other)),
    };
    r.finish()?;
    Ok(msg)
}

fn decode_welcome(r: &mut Reader<'_>) -> Result<ServerMessage, WireError> {
    let count = usize::from(r.u16()?);
    let mut resumes = Vec::with_capacity(count.min(r.remaining() / STREAM_RESUME_BYTES_MIN));
    for _ in 0..count {
        resumes.push(StreamResume {
            stream: r.stream_name()?,
            epoch: r.u64()?,
            next_sequence: r.u64()?,
        });
    }
    Ok(ServerMessage::Welcome { resumes })
}

fn expect_type(found: u8, wanted: u8) -> Result<(), WireError> {
    if found == wanted {
        Ok(())
    } else {
        Err(WireError::UnknownMessageType(found))
    }
}

/// Splits a complete frame off the start of `bytes`: `Ok(None)` when more bytes are needed.
pub(crate) fn split_frame(
    bytes: &[u8],
    frame_bytes_max: usize,
) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(prefix) = bytes.first_chunk::<FRAME_PREFIX_BYTES>() else {
        return Ok(None);
    };
    let len = frame_body_len(*prefix, frame_bytes_max)?;
    let end = FRAME_PREFIX_BYTES + len;
    Ok(bytes.get(FRAME_PREFIX_BYTES..end).map(|body| (body, end)))
}

/// Accumulates bytes of the control stream and yields whole messages. The buffer never holds
/// more than one largest frame ([`CONTROL_FRAME_BYTES_MAX`]): feed it at most [`Self::space`]
/// bytes at a time and take messages out before feeding more.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many more bytes the buffer accepts now.
    pub fn space(&self) -> usize {
        CONTROL_FRAME_BYTES_MAX.saturating_sub(self.buf.len())
    }

    /// Appends bytes read from the stream; `BufferFull` when they exceed [`Self::space`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        if bytes.len() > self.space() {
            return Err(WireError::BufferFull {
                max: CONTROL_FRAME_BYTES_MAX,
            });
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Bytes held that do not yet form a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next client message, `Ok(None)` when more bytes are needed.
    pub fn next_client(&mut self) -> Result<Option<ClientMessage>, WireError> {
        self.next_with(decode_client_body)
    }

    /// The next server message, `Ok(None)` when more bytes are needed.
    pub fn next_server(&mut self) -> Result<Option<ServerMessage>, WireError> {
        self.next_with(decode_server_body)
    }

    /// Call at the end of the stream: bytes left over mean the last frame was cut short.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Truncated)
        }
    }

    fn next_with<T>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<T, WireError>,
    ) -> Result<Option<T>, WireError> {
        let Some((body, used)) = split_frame(&self.buf, CONTROL_FRAME_BYTES_MAX)? else {
            return Ok(None);
        };
        let msg = decode(body);
        self.buf.drain(..used);
        msg.map(Some)
    }
}

fn len_u16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

/// Builds one frame; the length prefix is patched in by `finish`.
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn frame() -> Self {
        Self {
            buf: vec![0; FRAME_PREFIX_BYTES],
        }
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Writes a string, cut at a character boundary to the `u16` length limit.
    fn str(&mut self, s: &str) {
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(len_u16(end));
        self.buf.extend_from_slice(&s.as_bytes()[..end]);
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }

    fn id(&mut self, id: &FragmentId) {
        self.str(id.stream.as_str());
        self.u64(id.epoch);
        self.u64(id.sequence);
    }

    fn finish(mut self) -> Vec<u8> {
        let body = u32::try_from(self.buf.len() - FRAME_PREFIX_BYTES).unwrap_or(u32::MAX);
        self.buf[..FRAME_PREFIX_BYTES].copy_from_slice(&body.to_be_bytes());
        self.buf
    }
}

/// Reads fields from a frame body; every read checks the remaining length.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, WireError> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::BadUtf8)
    }

    fn opt_string(&mut self) -> Result<Option<String>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            other => Err(WireError::BadFlag(other)),
        }
    }

    fn stream_name(&mut self) -> Result<StreamName, WireError> {
        let name = self.string()?;
        StreamName::new(name).map_err(WireError::BadStreamName)
    }

    fn id(&mut self) -> Result<FragmentId, WireError> {
        Ok(FragmentId {
            stream: self.stream_name()?,
            epoch: self.u64()?,
            sequence: self.u64()?,
        })
    }

    fn finish(&self) -> Result<(), WireError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes(self.bytes.len()))
        }
    }
}
