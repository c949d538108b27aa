//! The server core for one connection: validates `Hello`, builds `Welcome`, and admits or
//! refuses each fragment header. Pure: the shell resolves streams against storage.

use std::collections::HashMap;

use crate::fragment::StreamName;

use super::{
    ClientMessage, ErrorCode, FragmentHeader, PROTOCOL_VERSION, ServerMessage, StreamOpen,
    StreamResume, WireError,
};

/// Limits the server enforces per connection and per fragment.
#[derive(Clone, Debug)]
pub struct IngestLimits {
    pub fragment_bytes_max: u32,
    pub fragment_duration_ms_max: u32,
    pub streams_per_connection_max: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            fragment_bytes_max: 64 * 1024 * 1024,
            fragment_duration_ms_max: 20_000,
            streams_per_connection_max: 64,
        }
    }
}

#[derive(Debug)]
enum Phase {
    AwaitingHello,
    /// Hello validated, Welcome not yet built.
    Resolving,
    /// Streams opened on this connection, with their epochs.
    Open(HashMap<StreamName, u64>),
}

/// Server core per connection. See the module documentation.
#[derive(Debug)]
pub struct IngestSession {
    limits: IngestLimits,
    phase: Phase,
    agent: Option<String>,
}

impl IngestSession {
    pub fn new(limits: IngestLimits) -> Self {
        Self {
            limits,
            phase: Phase::AwaitingHello,
            agent: None,
        }
    }

    /// The agent name from `Hello`, once received.
    pub fn agent(&self) -> Option<&str> {
        self.agent.as_deref()
    }

    /// Validates `Hello`; returns the streams for the shell to resolve, then call
    /// [`Self::welcome`].
    pub fn handle_hello(&mut self, msg: &ClientMessage) -> Result<Vec<StreamOpen>, WireError> {
        let ClientMessage::Hello {
            version,
            agent,
            streams,
        } = msg;
        if !matches!(self.phase, Phase::AwaitingHello) {
            return Err(WireError::rejected(
                ErrorCode::ProtocolViolation,
                "hello sent twice on one connection",
            ));
        }
        if *version != PROTOCOL_VERSION {
            return Err(WireError::rejected(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                ),
            ));
        }
        if streams.len() > self.limits.streams_per_connection_max {
            return Err(WireError::rejected(
                ErrorCode::LimitExceeded,
                format!(
                    "hello names {} streams; the limit is {}",
                    streams.len(),
                    self.limits.streams_per_connection_max
                ),
            ));
        }
        check_distinct(streams)?;
        self.agent = Some(agent.clone());
        self.phase = Phase::Resolving;
        Ok(streams.clone())
    }

    /// Builds the reply to `Hello`: one `StreamRefused` per refusal, then `Welcome`. Only the
    /// resumed streams accept fragments on this connection.
    pub fn welcome(
        &mut self,
        resumes: Vec<StreamResume>,
        refusals: Vec<(StreamName, ErrorCode, String)>,
    ) -> Vec<ServerMessage> {
        let open = resumes
            .iter()
            .map(|r| (r.stream.clone(), r.epoch))
            .collect();
        self.phase = Phase::Open(open);
        let mut out: Vec<ServerMessage> = refusals
            .into_iter()
            .map(|(stream, code, message)| ServerMessage::StreamRefused {
                stream,
                code,
                message,
            })
            .collect();
        out.push(ServerMessage::Welcome { resumes });
        out
    }

    /// Admits a fragment whose header arrived, or says why not.
    pub fn handle_fragment_header(&self, header: &FragmentHeader) -> Result<(), WireError> {
        let Phase::Open(open) = &self.phase else {
            return Err(WireError::rejected(
                ErrorCode::ProtocolViolation,
                "fragment sent before the welcome",
            ));
        };
        let id = &header.id;
        if open.get(&id.stream) != Some(&id.epoch) {
            return Err(WireError::rejected(
                ErrorCode::ProtocolViolation,
                format!(
                    "stream {} epoch {} was not opened on this connection",
                    id.stream, id.epoch
                ),
            ));
        }
        if header.payload_len > self.limits.fragment_bytes_max {
            return Err(WireError::rejected(
                ErrorCode::FragmentTooLarge,
                format!(
                    "fragment of {} bytes exceeds fragment_bytes_max {}",
                    header.payload_len, self.limits.fragment_bytes_max
                ),
            ));
        }
        if header.duration_ms > self.limits.fragment_duration_ms_max {
            return Err(WireError::rejected(
                ErrorCode::FragmentTooLong,
                format!(
                    "fragment of {} ms exceeds fragment_duration_ms_max {}",
                    header.duration_ms, self.limits.fragment_duration_ms_max
                ),
            ));
        }
        Ok(())
    }
}

fn check_distinct(streams: &[StreamOpen]) -> Result<(), WireError> {
    let mut seen = std::collections::HashSet::new();
    for open in streams {
        if !seen.insert(&open.stream) {
            return Err(WireError::rejected(
                ErrorCode::ProtocolViolation,
                format!("stream {} is named twice in hello", open.stream),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragment::{FragmentId, UnixMillis};

    fn name(s: &str) -> StreamName {
        StreamName::new(s).unwrap()
    }

    fn hello(version: u16, streams: &[&str]) -> ClientMessage {
        ClientMessage::Hello {
            version,
            agent: "cam".into(),
            streams: streams
                .iter()
                .map(|s| StreamOpen {
                    stream: name(s),
                    epoch: 7,
                })
                .collect(),
        }
    }

    fn header(stream: &str, epoch: u64, len: u32, duration_ms: u32) -> FragmentHeader {
        FragmentHeader {
            id: FragmentId {
                stream: name(stream),
                epoch,
                sequence: 0,
            },
            producer_timestamp: UnixMillis(1),
            duration_ms,
            payload_len: len,
            checksum: 0,
        }
    }

    fn opened() -> IngestSession {
        let mut s = IngestSession::new(IngestLimits {
            fragment_bytes_max: 1000,
            fragment_duration_ms_max: 10_000,
            streams_per_connection_max: 2,
        });
        s.handle_hello(&hello(PROTOCOL_VERSION, &["a", "b"]))
            .unwrap();
        let resumes = vec![StreamResume {
            stream: name("a"),
            epoch: 7,
            next_sequence: 3,
        }];
        let out = s.welcome(
            resumes,
            vec![(name("b"), ErrorCode::UnknownStream, "no".into())],
        );
        assert!(matches!(
            out[0],
            ServerMessage::StreamRefused {
                code: ErrorCode::UnknownStream,
                ..
            }
        ));
        assert!(matches!(out[1], ServerMessage::Welcome { .. }));
        s
    }

    fn code(r: Result<impl std::fmt::Debug, WireError>) -> ErrorCode {
        r.unwrap_err().code()
    }

    #[test]
    fn hello_is_validated() {
        let mut s = IngestSession::new(IngestLimits {
            streams_per_connection_max: 2,
            ..Default::default()
        });
        assert_eq!(
            code(s.handle_hello(&hello(9, &["a"]))),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            code(s.handle_hello(&hello(1, &["a", "b", "c"]))),
            ErrorCode::LimitExceeded
        );
        assert_eq!(
            code(s.handle_hello(&hello(1, &["a", "a"]))),
            ErrorCode::ProtocolViolation
        );
        assert_eq!(s.handle_hello(&hello(1, &["a", "b"])).unwrap().len(), 2);
        assert_eq!(s.agent(), Some("cam"));
        assert_eq!(
            code(s.handle_hello(&hello(1, &["a"]))),
            ErrorCode::ProtocolViolation
        );
    }

    #[test]
    fn fragments_are_admitted_only_on_opened_streams_within_limits() {
        let fresh = IngestSession::new(IngestLimits::default());
        assert_eq!(
            code(fresh.handle_fragment_header(&header("a", 7, 1, 1))),
            ErrorCode::ProtocolViolation
        );
        let s = opened();
        assert!(
            s.handle_fragment_header(&header("a", 7, 1000, 10_000))
                .is_ok()
        );
        assert_eq!(
            code(s.handle_fragment_header(&header("b", 7, 1, 1))),
            ErrorCode::ProtocolViolation
        );
        assert_eq!(
            code(s.handle_fragment_header(&header("a", 8, 1, 1))),
            ErrorCode::ProtocolViolation
        );
        assert_eq!(
            code(s.handle_fragment_header(&header("a", 7, 1001, 1))),
            ErrorCode::FragmentTooLarge
        );
        assert_eq!(
            code(s.handle_fragment_header(&header("a", 7, 1, 10_001))),
            ErrorCode::FragmentTooLong
        );
    }
}
