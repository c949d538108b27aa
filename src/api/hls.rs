//! HLS playback: GetHLSStreamingSessionURL, and the playlists and fragmented MP4 segments a
//! player fetches with the session URL (`GET /hls/v1/...`).
//!
//! A session is a self-contained token: the stream, playback mode, time range, limits and expiry,
//! signed with HMAC-SHA256 under a key kept in `<data-dir>/hls/session.key`. Players cannot sign
//! requests, so the auth layer lets `/hls/` through and every route here verifies the token
//! instead; an expired or altered token is `NotAuthorizedException` (401), as AWS answers it.
//! Token checks take the time as an argument.
//!
//! Bounds: at most [`HLS_SESSIONS_PER_STREAM_MAX`] unexpired sessions per stream (more is
//! `ClientLimitExceededException`), at most [`HLS_PLAYLIST_FRAGMENTS_MAX`] fragments per media
//! playlist, and a LIVE playlist looks back at most [`LIVE_LOOKBACK_MS`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, body::Body};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::fragment::{StreamName, UnixMillis};
use crate::media::{MediaFragment, fmp4};
use crate::store::{FragmentNumber, FragmentSummary, Store, TimestampKind};

use super::json::Members;
use super::kvs::{request_host, resolve_authorized};
use super::{ApiError, AppState, JsonBody, Principal, blocking};

/// Unexpired sessions one stream may have (AWS's quota is 10; a self-hosted server can afford
/// more, but never an unbounded number).
pub const HLS_SESSIONS_PER_STREAM_MAX: usize = 50;
/// Most fragments one media playlist lists (the model's bound on
/// MaxMediaPlaylistFragmentResults).
pub const HLS_PLAYLIST_FRAGMENTS_MAX: i64 = 5000;
/// Playlist length when the request gives none: LIVE and LIVE_REPLAY, ON_DEMAND.
const LIVE_FRAGMENTS_DEFAULT: i64 = 5;
const ON_DEMAND_FRAGMENTS_DEFAULT: i64 = 1000;
/// Session lifetime bounds and default, seconds.
pub const SESSION_EXPIRES_S_MIN: i64 = 300;
pub const SESSION_EXPIRES_S_MAX: i64 = 43_200;
const SESSION_EXPIRES_S_DEFAULT: i64 = 300;
/// How far back a LIVE playlist looks for the newest fragments, in milliseconds.
pub const LIVE_LOOKBACK_MS: u64 = 120_000;
/// Longest ON_DEMAND range, in milliseconds (24 hours).
pub const ON_DEMAND_RANGE_MS_MAX: u64 = 24 * 3600 * 1000;
/// A gap between consecutive fragments above this is a discontinuity (ON_DISCONTINUITY mode).
const DISCONTINUITY_GAP_MS: u64 = 500;
/// Bytes of the session key.
const KEY_BYTES: usize = 32;
/// Bytes of the HMAC kept in a token: 128 bits is plenty against forgery and keeps URLs short.
const TOKEN_MAC_BYTES: usize = 16;
/// Longest token accepted, in characters, before any decoding.
const TOKEN_CHARS_MAX: usize = 1024;
const TOKEN_VERSION: &str = "h1";

const KEY_DIR: &str = "hls";
const KEY_FILE: &str = "session.key";
const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";

type HmacSha256 = Hmac<Sha256>;

/// Why an HLS session could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum HlsError {
    #[error("The session token has expired.")]
    Expired,
    #[error("The session token is not valid.")]
    BadToken,
    #[error("could not keep the session key in {path}: {source}")]
    Key {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<HlsError> for ApiError {
    fn from(error: HlsError) -> Self {
        match error {
            e @ (HlsError::Expired | HlsError::BadToken) => ApiError::NotAuthorized(e.to_string()),
            e @ HlsError::Key { .. } => {
                tracing::error!(error = %e, "The HLS session key is unavailable.");
                ApiError::Internal
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaybackMode {
    Live,
    LiveReplay,
    OnDemand,
}

impl PlaybackMode {
    const NAMES: &[&str] = &["LIVE", "LIVE_REPLAY", "ON_DEMAND"];

    fn parse(name: &str) -> Option<Self> {
        match name {
            "LIVE" => Some(Self::Live),
            "LIVE_REPLAY" => Some(Self::LiveReplay),
            "ON_DEMAND" => Some(Self::OnDemand),
            _ => None,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Live => "L",
            Self::LiveReplay => "R",
            Self::OnDemand => "D",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "L" => Some(Self::Live),
            "R" => Some(Self::LiveReplay),
            "D" => Some(Self::OnDemand),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discontinuity {
    Always,
    Never,
    OnGap,
}

impl Discontinuity {
    const NAMES: &[&str] = &["ALWAYS", "NEVER", "ON_DISCONTINUITY"];
    const TAGS: &[(Self, &str)] = &[(Self::Always, "A"), (Self::Never, "N"), (Self::OnGap, "O")];

    fn tag(self) -> &'static str {
        Self::TAGS
            .iter()
            .find(|(d, _)| *d == self)
            .map_or("N", |(_, t)| t)
    }

    fn from_tag(tag: &str) -> Option<Self> {
        Self::TAGS.iter().find(|(_, t)| *t == tag).map(|(d, _)| *d)
    }
}

/// What a session token carries; everything a playlist or segment request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    pub stream: StreamName,
    pub mode: PlaybackMode,
    pub producer_timestamps: bool,
    pub start: UnixMillis,
    /// `u64::MAX` when open-ended.
    pub end: UnixMillis,
    pub expires_s: u64,
    pub fragments_max: u32,
    pub discontinuity: Discontinuity,
    pub display_timestamps: bool,
}

impl SessionClaims {
    fn kind(&self) -> TimestampKind {
        if self.producer_timestamps {
            TimestampKind::Producer
        } else {
            TimestampKind::Server
        }
    }

    fn encode(&self) -> String {
        format!(
            "{TOKEN_VERSION}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.stream,
            self.mode.tag(),
            u8::from(self.producer_timestamps),
            self.start.0,
            self.end.0,
            self.expires_s,
            self.fragments_max,
            self.discontinuity.tag(),
            u8::from(self.display_timestamps),
        )
    }

    fn decode(text: &str) -> Option<Self> {
        let parts: Vec<&str> = text.split('|').collect();
        let [
            version,
            stream,
            mode,
            producer,
            start,
            end,
            expires,
            max,
            disc,
            display,
        ] = parts.as_slice()
        else {
            return None;
        };
        if *version != TOKEN_VERSION {
            return None;
        }
        Some(Self {
            stream: StreamName::new(*stream).ok()?,
            mode: PlaybackMode::from_tag(mode)?,
            producer_timestamps: flag(producer)?,
            start: UnixMillis(start.parse().ok()?),
            end: UnixMillis(end.parse().ok()?),
            expires_s: expires.parse().ok()?,
            fragments_max: max.parse().ok()?,
            discontinuity: Discontinuity::from_tag(disc)?,
            display_timestamps: flag(display)?,
        })
    }
}

fn flag(text: &str) -> Option<bool> {
    match text {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// The key session tokens are signed with.
#[derive(Clone)]
pub struct SessionKey([u8; KEY_BYTES]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    #[cfg(test)]
    fn new(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    fn mac(&self, text: &[u8]) -> [u8; TOKEN_MAC_BYTES] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(text);
        let full = mac.finalize().into_bytes();
        let mut out = [0; TOKEN_MAC_BYTES];
        out.copy_from_slice(&full[..TOKEN_MAC_BYTES]);
        out
    }

    /// The token for `claims`: `base64url(claims) "." base64url(mac)`.
    pub fn issue(&self, claims: &SessionClaims) -> String {
        let text = claims.encode();
        let mac = self.mac(text.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(text),
            URL_SAFE_NO_PAD.encode(mac)
        )
    }

    /// The claims of a token this key issued that has not expired at `now_s`.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<SessionClaims, HlsError> {
        if token.len() > TOKEN_CHARS_MAX {
            return Err(HlsError::BadToken);
        }
        let (text, mac) = token.split_once('.').ok_or(HlsError::BadToken)?;
        let text = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| HlsError::BadToken)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| HlsError::BadToken)?;
        let mut check = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        check.update(&text);
        // Constant-time comparison of the truncated MAC.
        check
            .verify_truncated_left(&mac)
            .map_err(|_| HlsError::BadToken)?;
        if mac.len() != TOKEN_MAC_BYTES {
            return Err(HlsError::BadToken);
        }
        let text = String::from_utf8(text).map_err(|_| HlsError::BadToken)?;
        let claims = SessionClaims::decode(&text).ok_or(HlsError::BadToken)?;
        if now_s >= claims.expires_s {
            return Err(HlsError::Expired);
        }
        Ok(claims)
    }
}

/// Reads the key, or creates it durably (temporary file, fsync, rename) on first use.
pub fn load_or_create_key(dir: &Path) -> Result<SessionKey, HlsError> {
    let path = dir.join(KEY_FILE);
    let io = |source| HlsError::Key {
        path: path.clone(),
        source,
    };
    match fs::read(&path) {
        Ok(bytes) => {
            let key: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| {
                io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the key file has the wrong length",
                ))
            })?;
            Ok(SessionKey(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io)?;
            let key: [u8; KEY_BYTES] = rand::random();
            let tmp = dir.join("session.key.tmp");
            fs::write(&tmp, key).map_err(io)?;
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)?;
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            Ok(SessionKey(key))
        }
        Err(e) => Err(io(e)),
    }
}

/// The HLS state the API keeps: the key (loaded on first use) and the session counts.
#[derive(Debug)]
pub struct HlsState {
    key_dir: PathBuf,
    key: OnceLock<SessionKey>,
    key_init: Mutex<()>,
    /// Expiry times (Unix seconds) of the unexpired sessions, per stream.
    sessions: Mutex<HashMap<StreamName, Vec<u64>>>,
}

impl HlsState {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            key_dir: data_dir.join(KEY_DIR),
            key: OnceLock::new(),
            key_init: Mutex::new(()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self) -> Result<&SessionKey, HlsError> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let _guard = self.key_init.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let key = load_or_create_key(&self.key_dir)?;
        Ok(self.key.get_or_init(|| key))
    }

    /// Counts a new session on `stream`, or refuses it when the stream has too many.
    fn admit(&self, stream: &StreamName, now_s: u64, expires_s: u64) -> bool {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, expiries| {
            expiries.retain(|e| *e > now_s);
            !expiries.is_empty()
        });
        let expiries = sessions.entry(stream.clone()).or_default();
        if expiries.len() >= HLS_SESSIONS_PER_STREAM_MAX {
            return false;
        }
        expiries.push(expires_s);
        true
    }
}

fn now_s() -> u64 {
    UnixMillis::now().0 / 1000
}

/// The validated request, less the stream.
fn parse_session_request(body: &Members, now: UnixMillis) -> Result<SessionClaimsDraft, ApiError> {
    let mode = body
        .enumeration("PlaybackMode", PlaybackMode::NAMES)?
        .and_then(PlaybackMode::parse)
        .unwrap_or(PlaybackMode::Live);
    if body.enumeration("ContainerFormat", &["FRAGMENTED_MP4", "MPEG_TS"])? == Some("MPEG_TS") {
        return Err(ApiError::invalid(
            "ContainerFormat MPEG_TS is not supported by this server; use FRAGMENTED_MP4.",
        ));
    }
    let display_timestamps =
        body.enumeration("DisplayFragmentTimestamp", &["ALWAYS", "NEVER"])? == Some("ALWAYS");
    let expires = body
        .integer("Expires", SESSION_EXPIRES_S_MIN, SESSION_EXPIRES_S_MAX)?
        .unwrap_or(SESSION_EXPIRES_S_DEFAULT);
    let default_max = if mode == PlaybackMode::OnDemand {
        ON_DEMAND_FRAGMENTS_DEFAULT
    } else {
        LIVE_FRAGMENTS_DEFAULT
    };
    let fragments_max = body
        .integer(
            "MaxMediaPlaylistFragmentResults",
            1,
            HLS_PLAYLIST_FRAGMENTS_MAX,
        )?
        .unwrap_or(default_max);
    let (producer_timestamps, start, end) = parse_range(body, mode, now)?;
    // AWS: ALWAYS by default for server timestamps, NEVER for producer timestamps.
    let discontinuity = match body.enumeration("DiscontinuityMode", Discontinuity::NAMES)? {
        Some("ALWAYS") => Discontinuity::Always,
        Some("NEVER") => Discontinuity::Never,
        Some(_) => Discontinuity::OnGap,
        None if producer_timestamps => Discontinuity::Never,
        None => Discontinuity::Always,
    };
    Ok(SessionClaimsDraft {
        mode,
        producer_timestamps,
        start,
        end,
        expires_s: now.0 / 1000 + expires as u64,
        fragments_max: fragments_max as u32,
        discontinuity,
        display_timestamps,
    })
}

/// The selector type and time range for the mode: none for LIVE, a start for LIVE_REPLAY, a
/// bounded range for ON_DEMAND.
fn parse_range(
    body: &Members,
    mode: PlaybackMode,
    now: UnixMillis,
) -> Result<(bool, UnixMillis, UnixMillis), ApiError> {
    let selector = body.object("HLSFragmentSelector")?.unwrap_or_default();
    let producer = selector.enumeration(
        "FragmentSelectorType",
        &["PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"],
    )? == Some("PRODUCER_TIMESTAMP");
    let range = selector.object("TimestampRange")?;
    let (start, end) = match &range {
        Some(r) => (r.timestamp("StartTimestamp")?, r.timestamp("EndTimestamp")?),
        None => (None, None),
    };
    match mode {
        PlaybackMode::Live if range.is_some() => Err(ApiError::invalid(
            "TimestampRange must not be set when PlaybackMode is LIVE.",
        )),
        PlaybackMode::Live => Ok((
            producer,
            UnixMillis(now.0.saturating_sub(LIVE_LOOKBACK_MS)),
            UnixMillis(u64::MAX),
        )),
        PlaybackMode::LiveReplay => {
            let start = start.ok_or_else(|| {
                ApiError::invalid("StartTimestamp is required when PlaybackMode is LIVE_REPLAY.")
            })?;
            let end = end.unwrap_or(UnixMillis(u64::MAX));
            ordered(producer, start, end)
        }
        PlaybackMode::OnDemand => {
            let (Some(start), Some(end)) = (start, end) else {
                return Err(ApiError::invalid(
                    "StartTimestamp and EndTimestamp are required when PlaybackMode is ON_DEMAND.",
                ));
            };
            if end.0.saturating_sub(start.0) > ON_DEMAND_RANGE_MS_MAX {
                return Err(ApiError::invalid(
                    "The ON_DEMAND time range must be at most 24 hours.",
                ));
            }
            ordered(producer, start, end)
        }
    }
}

fn ordered(
    producer: bool,
    start: UnixMillis,
    end: UnixMillis,
) -> Result<(bool, UnixMillis, UnixMillis), ApiError> {
    if end <= start {
        return Err(ApiError::invalid(
            "EndTimestamp must be later than StartTimestamp.",
        ));
    }
    Ok((producer, start, end))
}

/// A session's claims before the stream is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SessionClaimsDraft {
    mode: PlaybackMode,
    producer_timestamps: bool,
    start: UnixMillis,
    end: UnixMillis,
    expires_s: u64,
    fragments_max: u32,
    discontinuity: Discontinuity,
    display_timestamps: bool,
}

impl SessionClaimsDraft {
    fn for_stream(self, stream: StreamName) -> SessionClaims {
        SessionClaims {
            stream,
            mode: self.mode,
            producer_timestamps: self.producer_timestamps,
            start: self.start,
            end: self.end,
            expires_s: self.expires_s,
            fragments_max: self.fragments_max,
            discontinuity: self.discontinuity,
            display_timestamps: self.display_timestamps,
        }
    }
}

/// `POST /getHLSStreamingSessionURL`.
pub async fn get_session_url(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let now = UnixMillis::now();
    let draft = parse_session_request(&body, now)?;
    let store = s.api.store.clone();
    let claims = blocking(move || {
        let info = resolve_authorized(&store, &principal, &body)?;
        let claims = draft.for_stream(info.name);
        if claims.mode != PlaybackMode::Live && first_page(&store, &claims, 1)?.is_empty() {
            return Err(ApiError::ResourceNotFound(
                "No fragments found in the stream for the requested time range.".into(),
            ));
        }
        Ok(claims)
    })
    .await?;
    if !s.hls.admit(&claims.stream, now.0 / 1000, claims.expires_s) {
        return Err(ApiError::ClientLimitExceeded(format!(
            "The stream {} has {HLS_SESSIONS_PER_STREAM_MAX} open HLS sessions.",
            claims.stream
        )));
    }
    let token = s.hls.key()?.issue(&claims);
    let endpoint = match &s.api.data_endpoint {
        Some(endpoint) => endpoint.trim_end_matches('/').to_owned(),
        None => format!("http://{}", request_host(&headers)?),
    };
    tracing::info!(stream = %claims.stream, mode = ?claims.mode, "Opened an HLS session.");
    Ok(Json(json!({
        "HLSStreamingSessionURL":
            format!("{endpoint}/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken={token}")
    })))
}

/// Up to `limit` fragments of the session in timestamp order, from its start.
fn first_page(
    store: &Store,
    claims: &SessionClaims,
    limit: usize,
) -> Result<Vec<FragmentSummary>, ApiError> {
    let mut out: Vec<FragmentSummary> = Vec::new();
    // Each store call returns at most its own page limit; the playlist bound caps the loop.
    while out.len() < limit {
        let after = out.last().map(|f| f.number);
        let page = store.list_fragments(
            &claims.stream,
            claims.kind(),
            claims.start,
            claims.end,
            after,
            limit - out.len(),
        )?;
        if page.is_empty() {
            break;
        }
        out.extend(page);
    }
    Ok(out)
}

/// The fragments a media playlist lists now (the newest ones for LIVE, the first ones of the
/// range otherwise), in producer order: a segment's `tfdt` is its producer decoding time, and
/// fragments sent in parallel may be stored out of that order, so the selector picks the
/// fragments and the producer clock orders them into one rising timeline.
fn playlist_fragments(
    store: &Store,
    claims: &SessionClaims,
    now: UnixMillis,
) -> Result<Vec<FragmentSummary>, ApiError> {
    let mut fragments = selected_fragments(store, claims, now)?;
    fragments.sort_by_key(|f| (f.producer_timestamp, f.number));
    Ok(fragments)
}

fn selected_fragments(
    store: &Store,
    claims: &SessionClaims,
    now: UnixMillis,
) -> Result<Vec<FragmentSummary>, ApiError> {
    let limit = claims.fragments_max as usize;
    if claims.mode != PlaybackMode::Live {
        return first_page(store, claims, limit);
    }
    let recent = SessionClaims {
        start: UnixMillis(now.0.saturating_sub(LIVE_LOOKBACK_MS)),
        fragments_max: HLS_PLAYLIST_FRAGMENTS_MAX as u32,
        ..claims.clone()
    };
    let mut all = first_page(store, &recent, HLS_PLAYLIST_FRAGMENTS_MAX as usize)?;
    let skip = all.len().saturating_sub(limit);
    Ok(all.split_off(skip))
}

/// The query string of every `/hls/v1/` request.
#[derive(Debug, serde::Deserialize)]
pub struct HlsQuery {
    #[serde(rename = "SessionToken")]
    session_token: Option<String>,
    #[serde(rename = "FragmentNumber")]
    fragment_number: Option<String>,
}

fn claims_of(s: &AppState, query: &HlsQuery) -> Result<SessionClaims, ApiError> {
    let token = query
        .session_token
        .as_deref()
        .ok_or_else(|| ApiError::invalid("The SessionToken parameter is missing."))?;
    Ok(s.hls.key()?.verify(token, now_s())?)
}

fn with_type(body: impl IntoResponse, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `GET /hls/v1/getHLSMasterPlaylist.m3u8`.
pub async fn master_playlist(
    State(s): State<AppState>,
    Query(query): Query<HlsQuery>,
) -> Result<Response, ApiError> {
    let claims = claims_of(&s, &query)?;
    let token = query.session_token.unwrap_or_default();
    let store = s.api.store.clone();
    let variant = blocking(move || {
        let fragments = playlist_fragments(&store, &claims, UnixMillis::now())?;
        variant_of(&store, &claims.stream, &fragments)
    })
    .await?;
    Ok(with_type(master_text(&token, &variant), PLAYLIST_TYPE))
}

/// What the master playlist says about the one rendition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    pub bandwidth_bps: u64,
    /// RFC 6381 codec string, when a fragment could be read.
    pub codecs: Option<String>,
    pub resolution: Option<(u32, u32)>,
}

fn variant_of(
    store: &Store,
    stream: &StreamName,
    fragments: &[FragmentSummary],
) -> Result<Variant, ApiError> {
    let bandwidth_bps = fragments
        .iter()
        .map(|f| f.size_bytes * 8 * 1000 / u64::from(f.duration_ms.max(1)))
        .max()
        .unwrap_or(1_000_000);
    let Some(first) = fragments.first() else {
        return Ok(Variant {
            bandwidth_bps,
            codecs: None,
            resolution: None,
        });
    };
    let (_, payload) = store.read_fragment(stream, first.number)?;
    let media = MediaFragment::decode(&payload)?;
    let codecs = media
        .codec_config
        .get(1..4)
        .map(|p| format!("avc1.{:02x}{:02x}{:02x}", p[0], p[1], p[2]));
    Ok(Variant {
        bandwidth_bps,
        codecs,
        resolution: Some((media.width, media.height)).filter(|(w, h)| *w > 0 && *h > 0),
    })
}

/// The master playlist: one variant pointing at the media playlist of the same session.
pub fn master_text(token: &str, variant: &Variant) -> String {
    let mut attributes = format!("BANDWIDTH={}", variant.bandwidth_bps.max(1));
    if let Some(codecs) = &variant.codecs {
        let _ = write!(attributes, ",CODECS=\"{codecs}\"");
    }
    if let Some((w, h)) = variant.resolution {
        let _ = write!(attributes, ",RESOLUTION={w}x{h}");
    }
    format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:{attributes}\n\
         getHLSMediaPlaylist.m3u8?SessionToken={token}\n"
    )
}

/// `GET /hls/v1/getHLSMediaPlaylist.m3u8`.
pub async fn media_playlist(
    State(s): State<AppState>,
    Query(query): Query<HlsQuery>,
) -> Result<Response, ApiError> {
    let claims = claims_of(&s, &query)?;
    let token = query.session_token.unwrap_or_default();
    let store = s.api.store.clone();
    let text = blocking(move || {
        let fragments = playlist_fragments(&store, &claims, UnixMillis::now())?;
        Ok(media_text(&claims, &token, &fragments))
    })
    .await?;
    Ok(with_type(text, PLAYLIST_TYPE))
}

/// The media playlist over `fragments`. ON_DEMAND ends with ENDLIST; LIVE and LIVE_REPLAY do not
/// until a LIVE_REPLAY range is closed and fully listed.
pub fn media_text(claims: &SessionClaims, token: &str, fragments: &[FragmentSummary]) -> String {
    let target_s = fragments
        .iter()
        .map(|f| u64::from(f.duration_ms).div_ceil(1000))
        .max()
        .unwrap_or(1)
        .max(1);
    // Rises as a LIVE window slides; fragment numbers rise with ingest.
    let sequence = fragments.iter().map(|f| f.number.0).min().unwrap_or(0);
    let mut out = format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target_s}\n#EXT-X-MEDIA-SEQUENCE:{sequence}\n"
    );
    if claims.mode == PlaybackMode::OnDemand {
        out.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
    }
    let _ = writeln!(
        out,
        "#EXT-X-MAP:URI=\"getMP4InitFragment.mp4?SessionToken={token}\""
    );
    let mut previous: Option<&FragmentSummary> = None;
    for f in fragments {
        if breaks_after(claims, previous, f) {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if claims.display_timestamps {
            let _ = writeln!(
                out,
                "#EXT-X-PROGRAM-DATE-TIME:{}",
                stamp(claims, f).to_rfc3339()
            );
        }
        let _ = writeln!(
            out,
            "#EXTINF:{}.{:03},\ngetMP4MediaFragment.mp4?FragmentNumber={}&SessionToken={token}",
            f.duration_ms / 1000,
            f.duration_ms % 1000,
            f.number
        );
        previous = Some(f);
    }
    let closed_replay = claims.mode == PlaybackMode::LiveReplay
        && claims.end.0 != u64::MAX
        && UnixMillis::now() > claims.end
        && fragments.len() < claims.fragments_max as usize;
    if claims.mode == PlaybackMode::OnDemand || closed_replay {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

fn stamp(claims: &SessionClaims, f: &FragmentSummary) -> UnixMillis {
    if claims.producer_timestamps {
        f.producer_timestamp
    } else {
        f.server_timestamp
    }
}

/// Whether a discontinuity tag goes before `next`.
fn breaks_after(
    claims: &SessionClaims,
    previous: Option<&FragmentSummary>,
    next: &FragmentSummary,
) -> bool {
    match claims.discontinuity {
        Discontinuity::Never => false,
        // The first segment needs no tag: nothing precedes it in this playlist.
        Discontinuity::Always => previous.is_some(),
        Discontinuity::OnGap => previous.is_some_and(|p| {
            let expected = p.producer_timestamp.0 + u64::from(p.duration_ms);
            p.epoch != next.epoch
                || next.producer_timestamp.0.abs_diff(expected) > DISCONTINUITY_GAP_MS
        }),
    }
}

/// `GET /hls/v1/getMP4InitFragment.mp4`: built from the session's first fragment.
pub async fn init_fragment(
    State(s): State<AppState>,
    Query(query): Query<HlsQuery>,
) -> Result<Response, ApiError> {
    let claims = claims_of(&s, &query)?;
    let store = s.api.store.clone();
    let bytes = blocking(move || {
        let fragments = playlist_fragments(&store, &claims, UnixMillis::now())?;
        let first = fragments.first().ok_or_else(|| {
            ApiError::ResourceNotFound("No fragments found for this session yet.".into())
        })?;
        let (_, payload) = store.read_fragment(&claims.stream, first.number)?;
        Ok(fmp4::init_segment(&MediaFragment::decode(&payload)?)?)
    })
    .await?;
    Ok(with_type(Body::from(bytes), "video/mp4"))
}

/// `GET /hls/v1/getMP4MediaFragment.mp4?FragmentNumber=...`.
pub async fn media_fragment(
    State(s): State<AppState>,
    Query(query): Query<HlsQuery>,
) -> Result<Response, ApiError> {
    let claims = claims_of(&s, &query)?;
    let number: FragmentNumber = query
        .fragment_number
        .as_deref()
        .ok_or_else(|| ApiError::invalid("The FragmentNumber parameter is missing."))?
        .parse()
        .map_err(|e: crate::store::FragmentNumberError| ApiError::invalid(e.to_string()))?;
    let store = s.api.store.clone();
    let bytes = blocking(move || {
        let (summary, payload) = store.read_fragment(&claims.stream, number)?;
        let at = stamp(&claims, &summary);
        if claims.mode != PlaybackMode::Live && (at < claims.start || at > claims.end) {
            return Err(ApiError::ResourceNotFound(format!(
                "Fragment {number} is outside this session's time range."
            )));
        }
        // The mfhd sequence only has to rise; the low bits of the fragment number do.
        Ok(fmp4::media_segment(
            &MediaFragment::decode(&payload)?,
            number.0 as u32,
        )?)
    })
    .await?;
    Ok(with_type(Body::from(bytes), "video/mp4"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(mode: PlaybackMode) -> SessionClaims {
        SessionClaims {
            stream: StreamName::new("cam").expect("valid"),
            mode,
            producer_timestamps: true,
            start: UnixMillis(1_000),
            end: UnixMillis(9_000),
            expires_s: 2_000,
            fragments_max: 10,
            discontinuity: Discontinuity::Never,
            display_timestamps: false,
        }
    }

    fn summary(number: u64, at_ms: u64, duration_ms: u32) -> FragmentSummary {
        FragmentSummary {
            number: FragmentNumber(number),
            size_bytes: 1000,
            producer_timestamp: UnixMillis(at_ms),
            server_timestamp: UnixMillis(at_ms),
            duration_ms,
            epoch: 0,
            sequence: number,
        }
    }

    #[test]
    fn tokens_round_trip_until_they_expire() {
        let key = SessionKey::new([7; KEY_BYTES]);
        let c = claims(PlaybackMode::OnDemand);
        let token = key.issue(&c);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        );
        assert_eq!(key.verify(&token, 1_999).expect("valid"), c);
        assert!(matches!(key.verify(&token, 2_000), Err(HlsError::Expired)));
    }

    #[test]
    fn altered_or_foreign_tokens_are_refused() {
        let key = SessionKey::new([7; KEY_BYTES]);
        let token = key.issue(&claims(PlaybackMode::Live));
        let (text, mac) = token.split_once('.').expect("two parts");
        // Extend the expiry in the claims while keeping the MAC.
        let mut forged = claims(PlaybackMode::Live);
        forged.expires_s = u64::MAX;
        let forged_text = URL_SAFE_NO_PAD.encode(forged.encode());
        for bad in [
            format!("{forged_text}.{mac}"),
            format!("{text}.{}", URL_SAFE_NO_PAD.encode([0u8; TOKEN_MAC_BYTES])),
            format!("{text}.{}", &mac[..4]),
            text.to_owned(),
            "x".repeat(TOKEN_CHARS_MAX + 1),
        ] {
            assert!(
                matches!(key.verify(&bad, 0), Err(HlsError::BadToken)),
                "{bad}"
            );
        }
        let other = SessionKey::new([8; KEY_BYTES]);
        assert!(matches!(other.verify(&token, 0), Err(HlsError::BadToken)));
    }

    #[test]
    fn key_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create_key(dir.path()).expect("created");
        let b = load_or_create_key(dir.path()).expect("read back");
        assert_eq!(a.0, b.0);
    }

    #[test]
    fn on_demand_playlist_lists_every_fragment_and_ends() {
        let c = claims(PlaybackMode::OnDemand);
        let text = media_text(
            &c,
            "T",
            &[summary(5, 1_000, 2_000), summary(6, 3_000, 2_500)],
        );
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:3\n#EXT-X-MEDIA-SEQUENCE:5\n\
             #EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MAP:URI=\"getMP4InitFragment.mp4?SessionToken=T\"\n\
             #EXTINF:2.000,\ngetMP4MediaFragment.mp4?FragmentNumber=10000000000000000005&SessionToken=T\n\
             #EXTINF:2.500,\ngetMP4MediaFragment.mp4?FragmentNumber=10000000000000000006&SessionToken=T\n\
             #EXT-X-ENDLIST\n"
        );
    }

    #[test]
    fn live_playlists_stay_open_and_mark_gaps_on_request() {
        let mut c = claims(PlaybackMode::Live);
        c.discontinuity = Discontinuity::OnGap;
        c.display_timestamps = true;
        let text = media_text(
            &c,
            "T",
            &[
                summary(1, 0, 2_000),
                summary(2, 2_000, 2_000),
                summary(3, 9_000, 2_000),
            ],
        );
        assert!(!text.contains("ENDLIST"));
        assert!(!text.contains("PLAYLIST-TYPE"));
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1);
        assert!(
            text.contains(
                "#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:09.000Z"
            )
        );
    }

    #[test]
    fn master_playlist_names_the_rendition() {
        let v = Variant {
            bandwidth_bps: 800_000,
            codecs: Some("avc1.64001f".into()),
            resolution: Some((640, 360)),
        };
        assert_eq!(
            master_text("T", &v),
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS=\"avc1.64001f\",RESOLUTION=640x360\n\
             getHLSMediaPlaylist.m3u8?SessionToken=T\n"
        );
    }

    #[test]
    fn requests_are_validated_per_mode() {
        let now = UnixMillis(100_000_000);
        let parse =
            |s: &str| parse_session_request(&Members::parse(s.as_bytes()).expect("json"), now);
        let live = parse("{}").expect("LIVE by default");
        assert_eq!(
            (live.mode, live.fragments_max, live.expires_s),
            (PlaybackMode::Live, 5, 100_300)
        );
        assert_eq!(live.discontinuity, Discontinuity::Always);
        let on_demand = parse(
            r#"{"PlaybackMode":"ON_DEMAND","HLSFragmentSelector":{"FragmentSelectorType":"PRODUCER_TIMESTAMP","TimestampRange":{"StartTimestamp":10,"EndTimestamp":20}}}"#,
        )
        .expect("valid");
        assert_eq!(
            (on_demand.start, on_demand.end, on_demand.fragments_max),
            (UnixMillis(10_000), UnixMillis(20_000), 1000)
        );
        assert_eq!(on_demand.discontinuity, Discontinuity::Never);
        for bad in [
            r#"{"PlaybackMode":"ON_DEMAND"}"#,
            r#"{"PlaybackMode":"LIVE_REPLAY"}"#,
            r#"{"HLSFragmentSelector":{"TimestampRange":{"StartTimestamp":1}}}"#,
            r#"{"ContainerFormat":"MPEG_TS"}"#,
            r#"{"Expires":299}"#,
            r#"{"Expires":43201}"#,
            r#"{"MaxMediaPlaylistFragmentResults":5001}"#,
            r#"{"PlaybackMode":"SOMETIMES"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sessions_per_stream_are_bounded_and_expire() {
        let state = HlsState::new(Path::new("unused"));
        let cam = StreamName::new("cam").expect("valid");
        for _ in 0..HLS_SESSIONS_PER_STREAM_MAX {
            assert!(state.admit(&cam, 0, 300));
        }
        assert!(!state.admit(&cam, 0, 300));
        assert!(state.admit(&StreamName::new("other").expect("valid"), 0, 300));
        assert!(
            state.admit(&cam, 300, 600),
            "expired sessions free their places"
        );
    }
}
