//! The agent core: holds every fragment until the server says it is persisted.
//!
//! Life of a connection: the core emits [`UplinkEvent::Connect`]; the shell connects and calls
//! [`Uplink::handle_connected`]; the core sends `Hello` and waits for `Welcome` (at most
//! `ack_timeout`, else it reconnects). `Welcome` says where each stream resumes: pending
//! fragments below that point are already stored and are reported persisted without a number.
//! Then fragments go out oldest first, at most `in_flight_max` at a time. A `Connect` event
//! while connected means: drop the current connection and open a new one.
//!
//! Priorities (`priority`): every fragment is pushed as [`Priority::Live`] or
//! [`Priority::Backfill`]. Live fragments go first; backfill fragments go oldest first while
//! the bandwidth cap (`backfill_bytes_per_s`) has tokens, with at most `backfill_in_flight_max`
//! on the wire and `backfill_pending_max` held, so that live fragments always find room. A live
//! fragment with a spooled copy that is not persisted within `live_stale_after` is abandoned
//! ([`UplinkEvent::Abandoned`]): the core forgets it (the shell resets its QUIC stream) and the
//! owner sends the spooled copy later as backfill. A late Persisted for an abandoned fragment
//! is still reported, so its spool copy is released.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::fragment::{Fragment, FragmentId, StreamName};

use super::priority::{Priority, TokenBucket, is_stale};
use super::{
    AckKind, ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage, SplitMix64, StreamOpen,
    StreamResume,
};

/// Limits and timings of the agent core.
#[derive(Clone, Debug)]
pub struct UplinkConfig {
    /// Name the agent gives in `Hello`.
    pub agent: String,
    /// Most fragments held (pending, in flight or waiting for Persisted).
    pub pending_fragments_max: usize,
    /// Most payload bytes held.
    pub pending_bytes_max: u64,
    /// Most fragments sent and not yet persisted.
    pub in_flight_max: usize,
    /// No Persisted within this time after sending (or no Welcome after connecting): resend.
    pub ack_timeout: Duration,
    /// First reconnect (and transient error) backoff ceiling; it doubles per attempt.
    pub backoff_initial: Duration,
    /// Highest backoff ceiling.
    pub backoff_max: Duration,
    /// Upload cap for backfill fragments, bytes per second; 0: no cap.
    pub backfill_bytes_per_s: u64,
    /// Backfill bytes that may go at once after an idle spell.
    pub backfill_burst_bytes: u64,
    /// Most backfill fragments held; the rest of `pending_fragments_max` stays for live ones.
    pub backfill_pending_max: usize,
    /// Most backfill fragments on the wire; the rest of `in_flight_max` stays for live ones.
    pub backfill_in_flight_max: usize,
    /// A spooled live fragment not persisted within this time is abandoned on the wire;
    /// zero: never.
    pub live_stale_after: Duration,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            agent: "hydrant-agent".to_owned(),
            pending_fragments_max: 256,
            pending_bytes_max: 512 * 1024 * 1024,
            in_flight_max: 16,
            ack_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            backfill_bytes_per_s: 0,
            backfill_burst_bytes: 1024 * 1024,
            backfill_pending_max: 8,
            backfill_in_flight_max: 8,
            live_stale_after: Duration::from_secs(10),
        }
    }
}

/// What the core asks of its shell, or reports to its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UplinkEvent {
    /// Open a new connection (dropping the current one, if any).
    Connect,
    /// Write this message on the control stream.
    SendControl(ClientMessage),
    /// Open a unidirectional stream and send this fragment ([`Uplink::fragment`]).
    SendFragment(FragmentId),
    /// The server has the fragment durably; `None` when known from a resume point.
    Persisted {
        id: FragmentId,
        fragment_number: Option<String>,
    },
    /// The server refused the fragment for good; it is dropped.
    Refused {
        id: FragmentId,
        code: ErrorCode,
        message: String,
    },
    /// The server refused a whole stream.
    StreamRefused {
        stream: StreamName,
        code: ErrorCode,
        message: String,
    },
    /// A stale live fragment was dropped from the wire; its spooled copy is still there.
    Abandoned(FragmentId),
}

/// Why [`Uplink::push`] did not take a fragment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink is full: holding {fragments} fragments and {bytes} bytes")]
    Full { fragments: usize, bytes: u64 },
    #[error("fragment of {bytes} bytes can never fit within pending_bytes_max {max}")]
    FragmentTooLarge { bytes: u64, max: u64 },
    #[error("stream {0} was not announced to the uplink")]
    UnknownStream(StreamName),
    #[error("stream {stream} was refused by the server with {code}")]
    StreamRefused { stream: StreamName, code: ErrorCode },
    #[error("fragment {0} is already held")]
    Duplicate(FragmentId),
    #[error("backfill is full: holding {0} backfill fragments")]
    BackfillFull(usize),
}

#[derive(Debug, Clone, Copy)]
enum Link {
    /// Reconnect at this time.
    Down {
        reconnect_at: Instant,
    },
    /// `Connect` emitted, waiting for the shell.
    Connecting,
    /// `Hello` sent; give up at `deadline`.
    AwaitingWelcome {
        deadline: Instant,
    },
    Up,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Pending {
        not_before: Instant,
    },
    /// Sent (or Received acknowledged); resend at `deadline` without Persisted.
    InFlight {
        deadline: Instant,
    },
}

#[derive(Debug)]
struct Entry {
    fragment: Fragment,
    state: State,
    /// Transient errors so far, for this fragment's retry backoff.
    failures: u32,
    priority: Priority,
    /// Whether a durable copy exists elsewhere (the spool), which allows abandoning it.
    spooled: bool,
    pushed_at: Instant,
}

/// Abandoned fragments remembered, so that a late Persisted still releases their spool copy.
const ABANDONED_REMEMBERED_MAX: usize = 1024;

/// The agent core. See the module documentation.
#[derive(Debug)]
pub struct Uplink {
    config: UplinkConfig,
    streams: Vec<StreamOpen>,
    /// Per (stream, epoch), the server's last resume point: every sequence below it is stored.
    /// Fragments pushed later with such a sequence (a restarted replay) are never sent.
    resume_points: HashMap<(StreamName, u64), u64>,
    refused: HashMap<StreamName, ErrorCode>,
    link: Link,
    /// Failed connection attempts since the last Welcome.
    reconnects: u32,
    rng: SplitMix64,
    /// Held fragments by push order, so the oldest goes first.
    entries: BTreeMap<u64, Entry>,
    index: HashMap<FragmentId, u64>,
    next_key: u64,
    bytes: u64,
    in_flight: usize,
    backfill_held: usize,
    backfill_in_flight: usize,
    bucket: TokenBucket,
    abandoned: VecDeque<FragmentId>,
    events: VecDeque<UplinkEvent>,
    /// Latest time seen; the core reads no clock, so `push` stamps with this.
    last_now: Instant,
}

impl Uplink {
    pub fn new(
        config: UplinkConfig,
        streams: Vec<StreamOpen>,
        rng_seed: u64,
        now: Instant,
    ) -> Self {
        let bucket = TokenBucket::new(
            config.backfill_bytes_per_s,
            config.backfill_burst_bytes,
            now,
        );
        let mut uplink = Self {
            config,
            backfill_held: 0,
            backfill_in_flight: 0,
            bucket,
            abandoned: VecDeque::new(),
            streams,
            refused: HashMap::new(),
            resume_points: HashMap::new(),
            link: Link::Down { reconnect_at: now },
            reconnects: 0,
            rng: SplitMix64::new(rng_seed),
            entries: BTreeMap::new(),
            index: HashMap::new(),
            next_key: 0,
            bytes: 0,
            in_flight: 0,
            events: VecDeque::new(),
            last_now: now,
        };
        uplink.handle_timeout(now);
        uplink
    }

    /// Whether a fragment with `payload_bytes` of payload would be taken now.
    pub fn has_room(&self, payload_bytes: usize) -> bool {
        self.entries.len() < self.config.pending_fragments_max
            && self.bytes.saturating_add(payload_bytes as u64) <= self.config.pending_bytes_max
    }

    /// Whether a backfill fragment with `payload_bytes` of payload would be taken now.
    pub fn has_backfill_room(&self, payload_bytes: usize) -> bool {
        self.backfill_held < self.config.backfill_pending_max && self.has_room(payload_bytes)
    }

    /// Takes a live fragment without a durable copy; it stays held until Persisted or Refused.
    pub fn push(&mut self, fragment: Fragment) -> Result<(), UplinkError> {
        self.push_with(fragment, Priority::Live, false)
    }

    /// Takes a fragment at `priority`; `spooled` says a durable copy exists elsewhere, which
    /// lets a stale live fragment be abandoned.
    pub fn push_with(
        &mut self,
        fragment: Fragment,
        priority: Priority,
        spooled: bool,
    ) -> Result<(), UplinkError> {
        let id = fragment.meta.id.clone();
        self.check_push(&fragment)?;
        if priority == Priority::Backfill && self.backfill_held >= self.config.backfill_pending_max
        {
            return Err(UplinkError::BackfillFull(self.backfill_held));
        }
        let resume = self.resume_points.get(&(id.stream.clone(), id.epoch));
        if resume.is_some_and(|&next| id.sequence < next) {
            self.events.push_back(UplinkEvent::Persisted {
                id,
                fragment_number: None,
            });
            return Ok(());
        }
        let key = self.next_key;
        self.next_key += 1;
        self.bytes += fragment.payload.len() as u64;
        self.backfill_held += usize::from(priority == Priority::Backfill);
        let state = State::Pending {
            not_before: self.last_now,
        };
        self.entries.insert(
            key,
            Entry {
                fragment,
                state,
                failures: 0,
                priority,
                spooled,
                pushed_at: self.last_now,
            },
        );
        self.index.insert(id, key);
        self.pump(None);
        Ok(())
    }

    fn check_push(&self, fragment: &Fragment) -> Result<(), UplinkError> {
        let id = &fragment.meta.id;
        if !self.streams.iter().any(|s| s.stream == id.stream) {
            return Err(UplinkError::UnknownStream(id.stream.clone()));
        }
        if let Some(code) = self.refused.get(&id.stream) {
            return Err(UplinkError::StreamRefused {
                stream: id.stream.clone(),
                code: *code,
            });
        }
        if self.index.contains_key(id) {
            return Err(UplinkError::Duplicate(id.clone()));
        }
        let bytes = fragment.payload.len() as u64;
        if bytes > self.config.pending_bytes_max {
            return Err(UplinkError::FragmentTooLarge {
                bytes,
                max: self.config.pending_bytes_max,
            });
        }
        if !self.has_room(fragment.payload.len()) {
            return Err(UplinkError::Full {
                fragments: self.entries.len(),
                bytes: self.bytes,
            });
        }
        Ok(())
    }

    /// The priority of a held fragment.
    pub fn priority(&self, id: &FragmentId) -> Option<Priority> {
        self.index
            .get(id)
            .and_then(|key| self.entries.get(key))
            .map(|e| e.priority)
    }

    /// The fragment behind a [`UplinkEvent::SendFragment`].
    pub fn fragment(&self, id: &FragmentId) -> Option<&Fragment> {
        self.index
            .get(id)
            .and_then(|key| self.entries.get(key))
            .map(|e| &e.fragment)
    }

    /// The shell has a connection and an open control stream.
    pub fn handle_connected(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        self.link = Link::AwaitingWelcome {
            deadline: now + self.config.ack_timeout,
        };
        self.events
            .push_back(UplinkEvent::SendControl(ClientMessage::Hello {
                version: PROTOCOL_VERSION,
                agent: self.config.agent.clone(),
                streams: self.open_streams(),
            }));
    }

    fn open_streams(&self) -> Vec<StreamOpen> {
        self.streams
            .iter()
            .filter(|s| !self.refused.contains_key(&s.stream))
            .cloned()
            .collect()
    }

    /// The connection (or the attempt to make one) is gone: everything sent goes back to
    /// pending and a reconnect is scheduled after backoff.
    pub fn handle_connection_lost(&mut self, now: Instant) {
        if matches!(self.link, Link::Down { .. }) {
            return;
        }
        for entry in self.entries.values_mut() {
            if let State::InFlight { .. } = entry.state {
                entry.state = State::Pending { not_before: now };
            }
        }
        self.in_flight = 0;
        self.backfill_in_flight = 0;
        let delay = self.backoff(self.reconnects);
        self.reconnects = self.reconnects.saturating_add(1);
        self.link = Link::Down {
            reconnect_at: now + delay,
        };
    }

    /// A message arrived on the control stream.
    pub fn handle_message(&mut self, msg: ServerMessage, now: Instant) {
        self.last_now = self.last_now.max(now);
        match msg {
            ServerMessage::Welcome { resumes } => self.on_welcome(resumes, now),
            ServerMessage::StreamRefused {
                stream,
                code,
                message,
            } => self.on_stream_refused(stream, code, message, now),
            ServerMessage::Ack {
                id,
                kind,
                fragment_number,
            } => self.on_ack(id, kind, fragment_number, now),
            ServerMessage::Error {
                id: Some(id),
                code,
                message,
            } => self.on_fragment_error(id, code, message, now),
            // An error about the connection or an unreadable stream: when the server gives up
            // on the connection it closes it, and the shell reports that as a lost connection.
            ServerMessage::Error { id: None, .. } => {}
        }
        self.pump(Some(now));
    }

    /// Opening or writing the fragment's stream failed: retry it after a short pause.
    pub fn handle_send_failed(&mut self, id: &FragmentId, now: Instant) {
        let not_before = now + self.config.backoff_initial;
        if matches!(
            self.entry_mut(id).map(|e| e.state),
            Some(State::InFlight { .. })
        ) {
            self.back_to_pending(id, not_before);
        }
        self.pump(Some(now));
    }

    /// Time has passed: reconnect, resend timed-out fragments, send what may go.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        match self.link {
            Link::Down { reconnect_at } if reconnect_at <= now => {
                self.link = Link::Connecting;
                self.events.push_back(UplinkEvent::Connect);
            }
            Link::AwaitingWelcome { deadline } if deadline <= now => {
                self.handle_connection_lost(now);
            }
            _ => {}
        }
        for entry in self.entries.values_mut() {
            if let State::InFlight { deadline } = entry.state {
                if deadline <= now {
                    entry.state = State::Pending { not_before: now };
                    self.in_flight -= 1;
                    if entry.priority == Priority::Backfill {
                        self.backfill_in_flight -= 1;
                    }
                }
            }
        }
        self.abandon_stale(now);
        self.pump(Some(now));
    }

    /// Drops every stale live fragment from the wire (see [`is_stale`]).
    fn abandon_stale(&mut self, now: Instant) {
        let stale_after = self.config.live_stale_after;
        let stale: Vec<FragmentId> = self
            .entries
            .values()
            .filter(|e| is_stale(e.priority, e.spooled, e.pushed_at, stale_after, now))
            .map(|e| e.fragment.meta.id.clone())
            .collect();
        for id in stale {
            if self.abandoned.len() >= ABANDONED_REMEMBERED_MAX {
                self.abandoned.pop_front();
            }
            self.abandoned.push_back(id.clone());
            self.release(&id, UplinkEvent::Abandoned(id.clone()));
        }
    }

    pub fn poll_event(&mut self) -> Option<UplinkEvent> {
        self.events.pop_front()
    }

    /// When the shell should call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let link = match self.link {
            Link::Down { reconnect_at } => Some(reconnect_at),
            Link::AwaitingWelcome { deadline } => Some(deadline),
            Link::Connecting | Link::Up => None,
        };
        let up = matches!(self.link, Link::Up);
        let window_open = self.in_flight < self.config.in_flight_max;
        let backfill_open =
            window_open && self.backfill_in_flight < self.config.backfill_in_flight_max && up;
        let bucket_at = self.bucket.ready_at(self.last_now);
        let entries = self.entries.values().filter_map(|e| match e.state {
            State::InFlight { deadline } => Some(deadline),
            State::Pending { not_before } if e.priority == Priority::Backfill => {
                backfill_open.then_some(not_before.max(bucket_at))
            }
            State::Pending { not_before } if up && window_open => Some(not_before),
            State::Pending { .. } => None,
        });
        let stale_after = self.config.live_stale_after;
        let stale = self
            .entries
            .values()
            .filter(|e| e.priority == Priority::Live && e.spooled && !stale_after.is_zero())
            .map(|e| e.pushed_at + stale_after)
            .min();
        link.into_iter().chain(entries).chain(stale).min()
    }

    /// Fragments held: pending, in flight, or waiting for Persisted.
    pub fn pending_fragments(&self) -> usize {
        self.entries.len()
    }

    /// Payload bytes held.
    pub fn pending_bytes(&self) -> u64 {
        self.bytes
    }

    /// Nothing is held any more.
    pub fn is_drained(&self) -> bool {
        self.entries.is_empty()
    }

    fn on_welcome(&mut self, resumes: Vec<StreamResume>, now: Instant) {
        if !matches!(self.link, Link::AwaitingWelcome { .. }) {
            return;
        }
        self.link = Link::Up;
        self.reconnects = 0;
        for resume in resumes {
            self.skip_persisted(&resume);
            let point = self
                .resume_points
                .entry((resume.stream, resume.epoch))
                .or_insert(0);
            *point = (*point).max(resume.next_sequence);
        }
        self.last_now = self.last_now.max(now);
    }

    /// Reports as persisted every held fragment the server already has.
    fn skip_persisted(&mut self, resume: &StreamResume) {
        let stored: Vec<FragmentId> = self
            .index
            .keys()
            .filter(|id| {
                id.stream == resume.stream
                    && id.epoch == resume.epoch
                    && id.sequence < resume.next_sequence
            })
            .cloned()
            .collect();
        for id in stored {
            self.release(
                &id,
                UplinkEvent::Persisted {
                    id: id.clone(),
                    fragment_number: None,
                },
            );
        }
    }

    fn on_stream_refused(
        &mut self,
        stream: StreamName,
        code: ErrorCode,
        message: String,
        now: Instant,
    ) {
        self.events.push_back(UplinkEvent::StreamRefused {
            stream: stream.clone(),
            code,
            message: message.clone(),
        });
        if !code.is_permanent() {
            // The stream cannot be used on this connection; a new one may succeed.
            self.handle_connection_lost(now);
            return;
        }
        self.refused.insert(stream.clone(), code);
        let ids: Vec<FragmentId> = self
            .index
            .keys()
            .filter(|id| id.stream == stream)
            .cloned()
            .collect();
        for id in ids {
            self.release(
                &id,
                UplinkEvent::Refused {
                    id: id.clone(),
                    code,
                    message: message.clone(),
                },
            );
        }
    }

    fn on_ack(&mut self, id: FragmentId, kind: AckKind, number: Option<String>, now: Instant) {
        let deadline = now + self.config.ack_timeout;
        let Some(entry) = self.entry_mut(&id) else {
            self.on_abandoned_ack(id, kind, number);
            return; // otherwise a duplicate ack for a fragment already released
        };
        match kind {
            AckKind::Received => {
                if let State::InFlight { .. } = entry.state {
                    // Persisting may take a while after the bytes arrived: restart the clock.
                    entry.state = State::InFlight { deadline };
                }
            }
            AckKind::Persisted => self.release(
                &id,
                UplinkEvent::Persisted {
                    id: id.clone(),
                    fragment_number: number,
                },
            ),
        }
    }

    /// An abandoned fragment may still have been persisted: say so once, so that its spooled
    /// copy is released instead of sent again.
    fn on_abandoned_ack(&mut self, id: FragmentId, kind: AckKind, number: Option<String>) {
        if kind != AckKind::Persisted {
            return;
        }
        if let Some(i) = self.abandoned.iter().position(|a| *a == id) {
            self.abandoned.remove(i);
            self.events.push_back(UplinkEvent::Persisted {
                id,
                fragment_number: number,
            });
        }
    }

    fn on_fragment_error(
        &mut self,
        id: FragmentId,
        code: ErrorCode,
        message: String,
        now: Instant,
    ) {
        if !self.index.contains_key(&id) {
            return;
        }
        if code.is_permanent() {
            self.release(
                &id,
                UplinkEvent::Refused {
                    id: id.clone(),
                    code,
                    message,
                },
            );
            return;
        }
        let failures = self.entry_mut(&id).map(|e| e.failures).unwrap_or(0);
        let not_before = now + self.backoff(failures);
        if let Some(entry) = self.entry_mut(&id) {
            entry.failures = entry.failures.saturating_add(1);
        }
        self.back_to_pending(&id, not_before);
    }

    /// Moves a fragment back to pending (wherever it was) and frees its window slot.
    fn back_to_pending(&mut self, id: &FragmentId, not_before: Instant) {
        let Some(entry) = self.entry_mut(id) else {
            return;
        };
        let was_in_flight = matches!(entry.state, State::InFlight { .. });
        let backfill = entry.priority == Priority::Backfill;
        entry.state = State::Pending { not_before };
        if was_in_flight {
            self.in_flight -= 1;
            self.backfill_in_flight -= usize::from(backfill);
        }
    }

    fn entry_mut(&mut self, id: &FragmentId) -> Option<&mut Entry> {
        let key = self.index.get(id)?;
        self.entries.get_mut(key)
    }

    /// Frees a fragment and reports `event` for it.
    fn release(&mut self, id: &FragmentId, event: UplinkEvent) {
        let Some(key) = self.index.remove(id) else {
            return;
        };
        if let Some(entry) = self.entries.remove(&key) {
            self.bytes -= entry.fragment.payload.len() as u64;
            let backfill = entry.priority == Priority::Backfill;
            self.backfill_held -= usize::from(backfill);
            if let State::InFlight { .. } = entry.state {
                self.in_flight -= 1;
                self.backfill_in_flight -= usize::from(backfill);
            }
        }
        self.events.push_back(event);
    }

    /// Sends pending fragments while the window has room: live ones oldest first, then
    /// backfill ones oldest first within their window share and the bandwidth cap.
    fn pump(&mut self, now: Option<Instant>) {
        if !matches!(self.link, Link::Up) {
            return;
        }
        let now = now.unwrap_or(self.last_now).max(self.last_now);
        self.last_now = now;
        let deadline = now + self.config.ack_timeout;
        for pass in [Priority::Live, Priority::Backfill] {
            for entry in self.entries.values_mut() {
                if self.in_flight >= self.config.in_flight_max {
                    return;
                }
                let ready =
                    matches!(entry.state, State::Pending { not_before } if not_before <= now);
                if entry.priority != pass || !ready {
                    continue;
                }
                if pass == Priority::Backfill {
                    if self.backfill_in_flight >= self.config.backfill_in_flight_max {
                        return;
                    }
                    if !self
                        .bucket
                        .try_take(entry.fragment.payload.len() as u64, now)
                    {
                        return;
                    }
                    self.backfill_in_flight += 1;
                }
                entry.state = State::InFlight { deadline };
                self.in_flight += 1;
                self.events
                    .push_back(UplinkEvent::SendFragment(entry.fragment.meta.id.clone()));
            }
        }
    }

    /// Full jitter: uniform in `0..=min(backoff_max, backoff_initial * 2^attempt)`.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let ceiling = backoff_ceiling(&self.config, attempt);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.rng.below_or_eq(ms))
    }
}

/// The backoff ceiling for the `attempt`-th retry (0-based): doubles, capped at `backoff_max`.
pub(crate) fn backoff_ceiling(config: &UplinkConfig, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    config
        .backoff_initial
        .saturating_mul(factor)
        .min(config.backoff_max)
}
