//! Configuration files: serde structs with defaults, and validation into resolved settings that
//! name the offending key.
//!
//! Two files: the server's (`configs/server.toml`) and the agent's (`configs/agent.toml` and the
//! per-board profiles). Every key has a default, so an empty file (or no file) is a working
//! configuration; unknown keys are refused so that a typo never silently falls back to a default.
//! Command-line flags are applied on top by the binary, then [`ServerConfig::resolve`] /
//! [`AgentConfig::resolve`] check every value. This module may use every module's config types;
//! nothing here opens sockets or starts work.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::alerts::{AlertSettings, MqttSettings, WebhookSettings};
use crate::fragment::StreamName;
use crate::spool::FullPolicy;

/// Largest fragment accepted, in bytes (the Kinesis Video limit).
pub const FRAGMENT_BYTES_LIMIT: u64 = 50 * 1024 * 1024;
/// Longest fragment accepted, in milliseconds (the Kinesis Video limit).
pub const FRAGMENT_DURATION_MS_LIMIT: u32 = 10_000;
/// Retention bounds for video streams, in hours (1 hour to 10 years).
pub const RETENTION_HOURS_MIN: u32 = 1;
pub const RETENTION_HOURS_MAX: u32 = 87_600;
/// Agent spool defaults and bounds: 2 GiB and one week by default; 16 MiB to 16 TiB, one
/// minute to one year.
const SPOOL_BYTES_MAX_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;
const SPOOL_AGE_MAX_S_DEFAULT: u64 = 7 * 24 * 3600;
const SPOOL_BYTES_MIN: u64 = 16 * 1024 * 1024;
const SPOOL_BYTES_LIMIT: u64 = 16 * 1024 * 1024 * 1024 * 1024;
const SPOOL_AGE_S_LIMIT: u64 = 365 * 24 * 3600;
/// Config files larger than this are refused before parsing.
const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// A configuration that cannot be used, naming the key (dotted path) or the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is {bytes} bytes; the limit is {CONFIG_FILE_BYTES_MAX}")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Reads and parses a TOML config file, refusing unknown keys.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = std::fs::metadata(path).map_err(read_err)?.len();
    if bytes > CONFIG_FILE_BYTES_MAX {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
            bytes,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address like 0.0.0.0:7070"),
        )
    })
}

fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(invalid(key, format!("{value} is outside {min}..={max}")));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Server

/// The server's config file (`configs/server.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where streams, TLS identity and state live. `HYDRANT_DATA_DIR` overrides it.
    pub data_dir: PathBuf,
    /// Region written into ARNs.
    pub region: String,
    pub http: HttpSection,
    pub quic: QuicSection,
    pub ingest: IngestSection,
    pub storage: StorageSection,
    pub streams: StreamsSection,
    pub auth: AuthSection,
    pub alerts: AlertsSection,
    pub detect: DetectSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub listen: String,
    /// The URL GetDataEndpoint returns; empty means "the Host the client used".
    pub public_endpoint: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicSection {
    pub listen: String,
    /// Extra DNS names or IP addresses for the server certificate (besides localhost).
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSection {
    pub fragment_bytes_max: u64,
    pub fragment_duration_ms_max: u32,
    pub connections_max: u32,
    pub streams_per_connection_max: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Retention of a stream created without one, in hours (1 to 87,600).
    pub default_retention_hours: u32,
    /// Create a stream when an agent first sends to it, instead of refusing the agent.
    pub create_streams_on_first_use: bool,
    /// Size at which a stream's log rolls to a new segment; retention deletes whole segments.
    pub segment_bytes_max: u64,
    /// How often retention runs, in seconds.
    pub retention_interval_s: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Labelled development mode: any AWS credentials, no client certificates.
    pub open: bool,
    pub keys: Vec<AccessKey>,
}

/// An AWS-style access key accepted by the HTTP APIs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub access_key_id: String,
    /// May be given as `env:NAME` to read it from the environment.
    pub secret_access_key: String,
    /// Streams this key may use; empty means all.
    #[serde(default)]
    pub streams: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("hydrant-data"),
            region: "us-east-1".to_owned(),
            http: HttpSection::default(),
            quic: QuicSection::default(),
            ingest: IngestSection::default(),
            storage: StorageSection::default(),
            streams: StreamsSection::default(),
            auth: AuthSection::default(),
            alerts: AlertsSection::default(),
            detect: DetectSection::default(),
        }
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:7070".to_owned(),
            public_endpoint: String::new(),
        }
    }
}

impl Default for QuicSection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:7071".to_owned(),
            server_names: Vec::new(),
        }
    }
}

impl Default for IngestSection {
    fn default() -> Self {
        Self {
            fragment_bytes_max: FRAGMENT_BYTES_LIMIT,
            fragment_duration_ms_max: FRAGMENT_DURATION_MS_LIMIT,
            connections_max: 256,
            streams_per_connection_max: 64,
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            default_retention_hours: 24,
            create_streams_on_first_use: false,
            segment_bytes_max: 256 * 1024 * 1024,
            retention_interval_s: 60,
        }
    }
}

/// `[streams]`: data streams (the Kinesis Data Streams API).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsSection {
    /// Enforce the per-shard throughput limits; `--no-throttle` turns them off.
    pub throttle: bool,
}

impl Default for StreamsSection {
    fn default() -> Self {
        Self { throttle: true }
    }
}

/// `[detect]`: live detection consumers, one per `[[detect.cameras]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectSection {
    /// `yolox_nano_416`, `light_person_detector_192` or a sidecar path.
    pub model: String,
    /// Intra-op threads per consumer.
    pub threads: usize,
    /// `cpu`, `cuda`, `tensorrt` or `openvino`.
    pub execution_provider: String,
    /// Frames per second sampled for inference.
    pub sample_fps: f64,
    /// How often a consumer looks for new fragments.
    pub poll_ms: u64,
    /// Fragments a consumer may fall behind before it skips ahead to the newest.
    pub backlog_fragments_max: usize,
    pub cameras: Vec<DetectCamera>,
}

impl Default for DetectSection {
    fn default() -> Self {
        Self {
            model: "yolox_nano_416".into(),
            threads: 1,
            execution_provider: "cpu".into(),
            sample_fps: 5.0,
            poll_ms: 250,
            backlog_fragments_max: 30,
            cameras: Vec::new(),
        }
    }
}

/// `[[detect.cameras]]`: the rules of one camera stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectCamera {
    pub stream: String,
    /// Model labels that raise events (empty: every label the model reports).
    pub labels: Vec<String>,
    /// Least best score of a track to raise an event (0: the model's threshold).
    pub score_min: f32,
    /// A track must be seen this long before it raises an event.
    pub min_dwell_ms: u64,
    /// Events of one label this close together merge; a track raises at most one event per
    /// cooldown.
    pub cooldown_ms: u64,
    /// Polygons in normalised coordinates; empty means the whole frame.
    pub zones: Vec<crate::detect::rules::Zone>,
    /// Weekly armed ranges such as `mon 22:00-06:00` or `daily 08:00-18:00`; empty: always.
    pub schedule: Vec<String>,
    /// The fixed offset the schedule's times are in (daylight saving is not followed).
    pub utc_offset_minutes: i32,
}

impl Default for DetectCamera {
    fn default() -> Self {
        Self {
            stream: String::new(),
            labels: Vec::new(),
            score_min: 0.0,
            min_dwell_ms: 1_000,
            cooldown_ms: 2_000,
            zones: Vec::new(),
            schedule: Vec::new(),
            utc_offset_minutes: 0,
        }
    }
}

/// Server settings after validation: every value is in range and every address parsed.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub data_dir: PathBuf,
    pub region: String,
    pub http_listen: SocketAddr,
    pub public_endpoint: Option<String>,
    pub quic_listen: SocketAddr,
    pub server_names: Vec<String>,
    pub fragment_bytes_max: u32,
    pub fragment_duration_ms_max: u32,
    pub connections_max: u32,
    pub streams_per_connection_max: u32,
    pub default_retention_hours: u32,
    pub create_streams_on_first_use: bool,
    pub segment_bytes_max: u64,
    pub retention_interval_s: u64,
    /// Whether data streams enforce per-shard throughput limits.
    pub streams_throttle: bool,
    pub open: bool,
    pub keys: Vec<AccessKey>,
    /// Where detection events are pushed (MQTT, webhooks).
    pub alerts: AlertSettings,
    pub detect: DetectSection,
}

impl ServerConfig {
    pub fn resolve(self) -> Result<ServerSettings, ConfigError> {
        let fragment_bytes_max = check_range(
            "ingest.fragment_bytes_max",
            self.ingest.fragment_bytes_max,
            1024,
            FRAGMENT_BYTES_LIMIT,
        )?;
        let public_endpoint = match self.http.public_endpoint.trim() {
            "" => None,
            url if url.starts_with("http://") || url.starts_with("https://") => {
                Some(url.trim_end_matches('/').to_owned())
            }
            url => {
                return Err(invalid(
                    "http.public_endpoint",
                    format!("{url:?} must start with http:// or https://"),
                ));
            }
        };
        if self.region.is_empty()
            || !self
                .region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(invalid(
                "region",
                format!("{:?} is not a region name like us-east-1", self.region),
            ));
        }
        let mut keys = Vec::with_capacity(self.auth.keys.len());
        for (i, key) in self.auth.keys.into_iter().enumerate() {
            keys.push(resolve_key(i, key)?);
        }
        Ok(ServerSettings {
            data_dir: self.data_dir,
            region: self.region,
            http_listen: parse_addr("http.listen", &self.http.listen)?,
            public_endpoint,
            quic_listen: parse_addr("quic.listen", &self.quic.listen)?,
            server_names: self.quic.server_names,
            fragment_bytes_max: u32::try_from(fragment_bytes_max).unwrap_or(u32::MAX),
            fragment_duration_ms_max: check_range(
                "ingest.fragment_duration_ms_max",
                self.ingest.fragment_duration_ms_max,
                100,
                FRAGMENT_DURATION_MS_LIMIT,
            )?,
            connections_max: check_range(
                "ingest.connections_max",
                self.ingest.connections_max,
                1,
                65_536,
            )?,
            streams_per_connection_max: check_range(
                "ingest.streams_per_connection_max",
                self.ingest.streams_per_connection_max,
                1,
                1024,
            )?,
            default_retention_hours: check_range(
                "storage.default_retention_hours",
                self.storage.default_retention_hours,
                RETENTION_HOURS_MIN,
                RETENTION_HOURS_MAX,
            )?,
            create_streams_on_first_use: self.storage.create_streams_on_first_use,
            segment_bytes_max: check_range(
                "storage.segment_bytes_max",
                self.storage.segment_bytes_max,
                64 * 1024,
                16 * 1024 * 1024 * 1024,
            )?,
            retention_interval_s: check_range(
                "storage.retention_interval_s",
                self.storage.retention_interval_s,
                1,
                86_400,
            )?,
            streams_throttle: self.streams.throttle,
            open: self.auth.open,
            keys,
            alerts: self.alerts.resolve()?,
            detect: self.detect,
        })
    }
}

fn resolve_key(index: usize, mut key: AccessKey) -> Result<AccessKey, ConfigError> {
    let at = |field: &str| format!("auth.keys[{index}].{field}");
    if key.access_key_id.is_empty() {
        return Err(invalid(&at("access_key_id"), "is empty"));
    }
    if let Some(var) = key.secret_access_key.strip_prefix("env:") {
        key.secret_access_key = std::env::var(var).map_err(|_| {
            invalid(
                &at("secret_access_key"),
                format!("environment variable {var} is not set"),
            )
        })?;
    }
    if key.secret_access_key.is_empty() {
        return Err(invalid(&at("secret_access_key"), "is empty"));
    }
    for name in &key.streams {
        StreamName::new(name.as_str()).map_err(|e| invalid(&at("streams"), e.to_string()))?;
    }
    Ok(key)
}

// ---------------------------------------------------------------------------------------------
// Alerts

/// Events queued per alert sink, and the longest retry delay, at most.
const ALERT_QUEUE_EVENTS_LIMIT: u32 = 100_000;
const ALERT_BACKOFF_MS_LIMIT: u64 = 600_000;
/// Webhook attempts per event, at most.
const WEBHOOK_ATTEMPTS_LIMIT: u32 = 100;

/// `[alerts]`: where detection events are pushed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// Events queued per sink before the oldest is dropped.
    pub queue_events_max: u32,
    /// How long shutdown lets the sinks flush, in milliseconds.
    pub shutdown_timeout_ms: u64,
    pub mqtt: MqttSection,
    pub webhooks: Vec<WebhookSection>,
}

/// `[alerts.mqtt]`; an empty `broker` turns MQTT off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    /// `host:port` of the broker (plain TCP).
    pub broker: String,
    pub client_id: String,
    pub topic_prefix: String,
    pub username: String,
    /// May be given as `env:NAME`.
    pub password: String,
    pub keep_alive_s: u64,
    pub reconnect_backoff_initial_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    pub home_assistant_discovery: bool,
    pub discovery_prefix: String,
}

/// One `[[alerts.webhooks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSection {
    /// `http://` URL the events are POSTed to.
    pub url: String,
    /// Extra headers; a value may be given as `env:NAME`.
    pub headers: std::collections::BTreeMap<String, String>,
    pub attempts_max: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub timeout_ms: u64,
}

impl Default for AlertsSection {
    fn default() -> Self {
        Self {
            queue_events_max: 1024,
            shutdown_timeout_ms: 5000,
            mqtt: MqttSection::default(),
            webhooks: Vec::new(),
        }
    }
}

impl Default for MqttSection {
    fn default() -> Self {
        Self {
            broker: String::new(),
            client_id: "hydrant".to_owned(),
            topic_prefix: "hydrant".to_owned(),
            username: String::new(),
            password: String::new(),
            keep_alive_s: 30,
            reconnect_backoff_initial_ms: 500,
            reconnect_backoff_max_ms: 30_000,
            home_assistant_discovery: false,
            discovery_prefix: "homeassistant".to_owned(),
        }
    }
}

impl Default for WebhookSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            headers: Default::default(),
            attempts_max: 5,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            timeout_ms: 5000,
        }
    }
}

/// A secret given literally or as `env:NAME`.
fn secret(key: &str, value: &str) -> Result<String, ConfigError> {
    match value.strip_prefix("env:") {
        Some(var) => std::env::var(var)
            .map_err(|_| invalid(key, format!("environment variable {var} is not set"))),
        None => Ok(value.to_owned()),
    }
}

/// An MQTT topic prefix: levels without wildcards, not starting or ending with `/`.
fn topic_prefix(key: &str, value: &str) -> Result<String, ConfigError> {
    let bad = value.is_empty()
        || value.starts_with('/')
        || value.ends_with('/')
        || value.contains(['+', '#']);
    if bad {
        return Err(invalid(
            key,
            format!("{value:?} must be a topic like hydrant or home/cameras, without + or #"),
        ));
    }
    Ok(value.to_owned())
}

impl AlertsSection {
    fn resolve(self) -> Result<AlertSettings, ConfigError> {
        let queue_events_max = check_range(
            "alerts.queue_events_max",
            self.queue_events_max,
            1,
            ALERT_QUEUE_EVENTS_LIMIT,
        )?;
        let mut webhooks = Vec::with_capacity(self.webhooks.len());
        for (i, hook) in self.webhooks.into_iter().enumerate() {
            webhooks.push(hook.resolve(&format!("alerts.webhooks[{i}]"))?);
        }
        Ok(AlertSettings {
            queue_events_max: queue_events_max as usize,
            shutdown_timeout_ms: check_range(
                "alerts.shutdown_timeout_ms",
                self.shutdown_timeout_ms,
                0,
                600_000,
            )?,
            mqtt: self.mqtt.resolve()?,
            webhooks,
        })
    }
}

impl MqttSection {
    fn resolve(self) -> Result<Option<MqttSettings>, ConfigError> {
        let broker = self.broker.trim();
        if broker.is_empty() {
            return Ok(None);
        }
        let (host, port) = broker
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| {
                invalid(
                    "alerts.mqtt.broker",
                    format!("{broker:?} must be host:port, e.g. 127.0.0.1:1883"),
                )
            })?;
        if self.client_id.is_empty() {
            return Err(invalid("alerts.mqtt.client_id", "is empty"));
        }
        let backoff_initial_ms = check_range(
            "alerts.mqtt.reconnect_backoff_initial_ms",
            self.reconnect_backoff_initial_ms,
            1,
            ALERT_BACKOFF_MS_LIMIT,
        )?;
        let password = secret("alerts.mqtt.password", &self.password)?;
        Ok(Some(MqttSettings {
            host: host.to_owned(),
            port,
            client_id: self.client_id,
            topic_prefix: topic_prefix("alerts.mqtt.topic_prefix", &self.topic_prefix)?,
            username: Some(self.username).filter(|u| !u.is_empty()),
            password: Some(password).filter(|p| !p.is_empty()),
            keep_alive_s: check_range("alerts.mqtt.keep_alive_s", self.keep_alive_s, 5, 3600)?,
            reconnect_backoff_initial_ms: backoff_initial_ms,
            reconnect_backoff_max_ms: check_range(
                "alerts.mqtt.reconnect_backoff_max_ms",
                self.reconnect_backoff_max_ms,
                backoff_initial_ms,
                ALERT_BACKOFF_MS_LIMIT,
            )?,
            home_assistant_discovery: self.home_assistant_discovery,
            discovery_prefix: topic_prefix("alerts.mqtt.discovery_prefix", &self.discovery_prefix)?,
        }))
    }
}

impl WebhookSection {
    fn resolve(self, at: &str) -> Result<WebhookSettings, ConfigError> {
        let key = |field: &str| format!("{at}.{field}");
        if !self.url.starts_with("http://") {
            return Err(invalid(
                &key("url"),
                format!(
                    "{:?} must start with http:// (https is not supported yet)",
                    self.url
                ),
            ));
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let header_key = key(&format!("headers.{name}"));
            let value = secret(&header_key, value)?;
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !valid_name || value.bytes().any(|b| b.is_ascii_control()) {
                return Err(invalid(&header_key, "is not a valid HTTP header"));
            }
            headers.push((name.clone(), value));
        }
        let backoff_initial_ms = check_range(
            &key("backoff_initial_ms"),
            self.backoff_initial_ms,
            1,
            ALERT_BACKOFF_MS_LIMIT,
        )?;
        Ok(WebhookSettings {
            url: self.url,
            headers,
            attempts_max: check_range(
                &key("attempts_max"),
                self.attempts_max,
                1,
                WEBHOOK_ATTEMPTS_LIMIT,
            )?,
            backoff_initial_ms,
            backoff_max_ms: check_range(
                &key("backoff_max_ms"),
                self.backoff_max_ms,
                backoff_initial_ms,
                ALERT_BACKOFF_MS_LIMIT,
            )?,
            timeout_ms: check_range(&key("timeout_ms"), self.timeout_ms, 100, 600_000)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Agent

/// The agent's config file (`configs/agent.toml` and the board profiles).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The server's QUIC address, `host:port`.
    pub server: String,
    /// CA certificate that signed the server's certificate (the server's `<data-dir>/tls/ca.pem`).
    pub ca: Option<PathBuf>,
    /// Development mode: trust the first server certificate seen and pin it. Labelled in logs.
    pub trust_first_certificate: bool,
    /// This device's certificate (`NAME.crt` from `hydrant certs issue`); with `key`.
    pub cert: Option<PathBuf>,
    /// This device's private key (`NAME.key`); with `cert`.
    pub key: Option<PathBuf>,
    /// Where the agent keeps its state (session epochs, the pinned certificate, the spool).
    pub spool_dir: PathBuf,
    /// A name for this agent in the server's logs.
    pub agent_name: String,
    /// Most bytes the on-disk spool of unacknowledged fragments may take (live sources).
    pub spool_bytes_max: u64,
    /// Spooled footage older than this (producer time) is deleted unsent, in seconds.
    pub spool_age_max_s: u64,
    /// When the spool is full: `drop-oldest` footage, or `refuse-new` fragments.
    pub spool_full_policy: FullPolicy,
    /// Local HTTP address of the metrics (`/metrics`) and status (`/status`) endpoint; empty
    /// disables it.
    pub status_listen: String,
    /// On SIGTERM, how long to keep sending held fragments before exiting, in milliseconds.
    pub shutdown_flush_ms: u64,
    pub fragments: FragmentSection,
    pub uplink: UplinkSection,
    pub cameras: Vec<CameraSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FragmentSection {
    /// Cut at the first keyframe after this much media, in milliseconds.
    pub target_ms: u32,
    /// Cut even without a keyframe after this much media, in milliseconds.
    pub duration_ms_max: u32,
    pub bytes_max: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkSection {
    /// Fragments kept in memory until the server says they are persisted.
    pub pending_fragments_max: u32,
    pub pending_bytes_max: u64,
    /// Fragments on the wire at once.
    pub in_flight_max: u32,
    /// Resend a fragment not persisted within this time.
    pub ack_timeout_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Upload cap for backfill (spooled fragments sent after an outage), bytes per second;
    /// 0: no cap.
    pub backfill_bytes_per_s: u64,
    /// A live fragment not persisted within this time is abandoned on the wire and sent later
    /// from the spool as backfill, in milliseconds; 0: never.
    pub live_stale_after_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSection {
    pub stream: String,
    /// `test`, `file:PATH`, `rtsp://...`, `v4l2:/dev/videoN`, `libcamera`, `jetson`.
    pub source: String,
    /// Replay a file as fast as possible instead of at real-time pace.
    #[serde(default)]
    pub fast: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            server: "127.0.0.1:7071".to_owned(),
            ca: None,
            trust_first_certificate: false,
            cert: None,
            key: None,
            spool_dir: PathBuf::from("hydrant-spool"),
            agent_name: String::new(),
            spool_bytes_max: SPOOL_BYTES_MAX_DEFAULT,
            spool_age_max_s: SPOOL_AGE_MAX_S_DEFAULT,
            spool_full_policy: FullPolicy::DropOldest,
            status_listen: "127.0.0.1:7072".to_owned(),
            shutdown_flush_ms: 5_000,
            fragments: FragmentSection::default(),
            uplink: UplinkSection::default(),
            cameras: Vec::new(),
        }
    }
}

impl Default for FragmentSection {
    fn default() -> Self {
        Self {
            target_ms: 2_000,
            duration_ms_max: FRAGMENT_DURATION_MS_LIMIT,
            bytes_max: 16 * 1024 * 1024,
        }
    }
}

impl Default for UplinkSection {
    fn default() -> Self {
        Self {
            pending_fragments_max: 256,
            pending_bytes_max: 256 * 1024 * 1024,
            in_flight_max: 16,
            ack_timeout_ms: 15_000,
            backoff_initial_ms: 200,
            backoff_max_ms: 10_000,
            backfill_bytes_per_s: 0,
            live_stale_after_ms: 10_000,
        }
    }
}

/// One camera after validation.
#[derive(Debug, Clone)]
pub struct CameraSettings {
    pub stream: StreamName,
    pub source: String,
    pub fast: bool,
}

/// Agent settings after validation.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub server: String,
    pub ca: Option<PathBuf>,
    pub trust_first_certificate: bool,
    /// The device certificate and key, both or neither (open-mode servers need none).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub spool_dir: PathBuf,
    pub agent_name: String,
    pub spool_bytes_max: u64,
    pub spool_age_max_s: u64,
    pub spool_full_policy: FullPolicy,
    pub fragment_target_ms: u32,
    pub fragment_duration_ms_max: u32,
    pub fragment_bytes_max: u64,
    pub pending_fragments_max: u32,
    pub pending_bytes_max: u64,
    pub in_flight_max: u32,
    pub ack_timeout_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub backfill_bytes_per_s: u64,
    pub live_stale_after_ms: u64,
    /// `None`: the status endpoint is off.
    pub status_listen: Option<std::net::SocketAddr>,
    pub shutdown_flush_ms: u64,
    pub cameras: Vec<CameraSettings>,
}

impl AgentConfig {
    pub fn resolve(self) -> Result<AgentSettings, ConfigError> {
        if !self.server.contains(':') {
            return Err(invalid(
                "server",
                format!("{:?} must be host:port, e.g. 127.0.0.1:7071", self.server),
            ));
        }
        if self.ca.is_none() && !self.trust_first_certificate {
            return Err(invalid(
                "ca",
                "no CA certificate given: pass --ca <data-dir>/tls/ca.pem of the server, or enable the development mode trust_first_certificate",
            ));
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(invalid(
                    "key",
                    "a certificate (cert, --cert) is given without its key: pass --key NAME.key",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "cert",
                    "a key (key, --key) is given without its certificate: pass --cert NAME.crt",
                ));
            }
            _ => {}
        }
        if self.cameras.is_empty() {
            return Err(invalid(
                "cameras",
                "no camera configured: add a [[cameras]] entry or pass --stream and --source",
            ));
        }
        let target = check_range(
            "fragments.target_ms",
            self.fragments.target_ms,
            100,
            FRAGMENT_DURATION_MS_LIMIT,
        )?;
        let cap = check_range(
            "fragments.duration_ms_max",
            self.fragments.duration_ms_max,
            target,
            FRAGMENT_DURATION_MS_LIMIT,
        )?;
        let mut cameras = Vec::with_capacity(self.cameras.len());
        for (i, cam) in self.cameras.into_iter().enumerate() {
            let stream = StreamName::new(cam.stream)
                .map_err(|e| invalid(&format!("cameras[{i}].stream"), e.to_string()))?;
            if cameras.iter().any(|c: &CameraSettings| c.stream == stream) {
                return Err(invalid(
                    &format!("cameras[{i}].stream"),
                    format!("stream {stream} is used by two cameras"),
                ));
            }
            if cam.source.trim().is_empty() {
                return Err(invalid(&format!("cameras[{i}].source"), "is empty"));
            }
            cameras.push(CameraSettings {
                stream,
                source: cam.source,
                fast: cam.fast,
            });
        }
        let u = &self.uplink;
        let status_listen = match self.status_listen.trim() {
            "" => None,
            addr => Some(addr.parse().map_err(|_| {
                invalid(
                    "status_listen",
                    format!("{addr:?} must be ip:port, e.g. 127.0.0.1:7072, or empty"),
                )
            })?),
        };
        Ok(AgentSettings {
            status_listen,
            shutdown_flush_ms: check_range(
                "shutdown_flush_ms",
                self.shutdown_flush_ms,
                0,
                600_000,
            )?,
            backfill_bytes_per_s: u.backfill_bytes_per_s,
            live_stale_after_ms: check_range(
                "uplink.live_stale_after_ms",
                u.live_stale_after_ms,
                0,
                3_600_000,
            )?,
            agent_name: if self.agent_name.is_empty() {
                default_agent_name()
            } else {
                self.agent_name.clone()
            },
            server: self.server,
            ca: self.ca,
            trust_first_certificate: self.trust_first_certificate,
            cert: self.cert,
            key: self.key,
            spool_dir: self.spool_dir,
            spool_bytes_max: check_range(
                "spool_bytes_max",
                self.spool_bytes_max,
                SPOOL_BYTES_MIN,
                SPOOL_BYTES_LIMIT,
            )?,
            spool_age_max_s: check_range(
                "spool_age_max_s",
                self.spool_age_max_s,
                60,
                SPOOL_AGE_S_LIMIT,
            )?,
            spool_full_policy: self.spool_full_policy,
            fragment_target_ms: target,
            fragment_duration_ms_max: cap,
            fragment_bytes_max: check_range(
                "fragments.bytes_max",
                self.fragments.bytes_max,
                64 * 1024,
                FRAGMENT_BYTES_LIMIT,
            )?,
            pending_fragments_max: check_range(
                "uplink.pending_fragments_max",
                u.pending_fragments_max,
                1,
                100_000,
            )?,
            pending_bytes_max: check_range(
                "uplink.pending_bytes_max",
                u.pending_bytes_max,
                1024 * 1024,
                64 * 1024 * 1024 * 1024,
            )?,
            in_flight_max: check_range("uplink.in_flight_max", u.in_flight_max, 1, 1024)?,
            ack_timeout_ms: check_range("uplink.ack_timeout_ms", u.ack_timeout_ms, 100, 600_000)?,
            backoff_initial_ms: check_range(
                "uplink.backoff_initial_ms",
                u.backoff_initial_ms,
                1,
                60_000,
            )?,
            backoff_max_ms: check_range(
                "uplink.backoff_max_ms",
                u.backoff_max_ms,
                u.backoff_initial_ms,
                600_000,
            )?,
            cameras,
        })
    }
}

fn default_agent_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "hydrant-agent".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
    }

    #[test]
    fn every_file_in_configs_loads_and_resolves() {
        let mut checked = 0;
        for entry in std::fs::read_dir(configs_dir()).expect("configs/ exists") {
            let path = entry.expect("readable entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with("server") {
                load::<ServerConfig>(&path)
                    .and_then(ServerConfig::resolve)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            } else {
                load::<AgentConfig>(&path)
                    .and_then(AgentConfig::resolve)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            checked += 1;
        }
        assert!(
            checked >= 2,
            "expected at least the server and agent configs"
        );
    }

    #[test]
    fn errors_name_the_bad_key() {
        let cfg: ServerConfig =
            toml::from_str("[storage]\ndefault_retention_hours = 0\n").expect("parses");
        let err = cfg.resolve().expect_err("0 hours is refused");
        assert!(
            err.to_string().contains("storage.default_retention_hours"),
            "{err}"
        );

        let unknown = toml::from_str::<ServerConfig>("[storage]\nretension_hours = 5\n")
            .expect_err("typo refused");
        assert!(unknown.to_string().contains("retension_hours"), "{unknown}");

        let agent: AgentConfig =
            toml::from_str("ca = \"ca.pem\"\n[[cameras]]\nstream = \"../x\"\nsource = \"test\"\n")
                .expect("parses");
        let err = agent.resolve().expect_err("bad stream refused");
        assert!(err.to_string().contains("cameras[0].stream"), "{err}");
    }

    #[test]
    fn spool_keys_resolve_and_name_themselves_when_bad() {
        let base = "ca = \"ca.pem\"\n[[cameras]]\nstream = \"cam\"\nsource = \"test\"\n";
        let agent: AgentConfig = toml::from_str(&format!(
            "spool_bytes_max = 33554432\nspool_age_max_s = 600\nspool_full_policy = \"refuse-new\"\n{base}"
        ))
        .expect("parses");
        let s = agent.resolve().expect("valid");
        assert_eq!(
            (s.spool_bytes_max, s.spool_age_max_s, s.spool_full_policy),
            (33_554_432, 600, FullPolicy::RefuseNew)
        );
        let defaults: AgentConfig = toml::from_str(base).expect("parses");
        let d = defaults.resolve().expect("valid");
        assert_eq!(d.spool_full_policy, FullPolicy::DropOldest);

        let bad =
            toml::from_str::<AgentConfig>(&format!("spool_full_policy = \"drop-newest\"\n{base}"))
                .expect_err("unknown policy refused");
        assert!(bad.to_string().contains("drop-newest"), "{bad}");
        let small: AgentConfig =
            toml::from_str(&format!("spool_bytes_max = 1024\n{base}")).expect("parses");
        let err = small.resolve().expect_err("too small");
        assert!(err.to_string().contains("spool_bytes_max"), "{err}");
    }

    #[test]
    fn cert_and_key_go_together() {
        let base = "ca = \"ca.pem\"\n[[cameras]]\nstream = \"cam\"\nsource = \"test\"\n";
        let both: AgentConfig =
            toml::from_str(&format!("cert = \"d.crt\"\nkey = \"d.key\"\n{base}")).expect("parses");
        let s = both.resolve().expect("valid");
        assert_eq!(s.cert, Some(PathBuf::from("d.crt")));
        assert_eq!(s.key, Some(PathBuf::from("d.key")));
        let cert_only: AgentConfig =
            toml::from_str(&format!("cert = \"d.crt\"\n{base}")).expect("parses");
        let err = cert_only.resolve().expect_err("key missing");
        assert!(err.to_string().contains("`key`"), "{err}");
        let key_only: AgentConfig =
            toml::from_str(&format!("key = \"d.key\"\n{base}")).expect("parses");
        let err = key_only.resolve().expect_err("cert missing");
        assert!(err.to_string().contains("`cert`"), "{err}");
    }

    #[test]
    fn alerts_resolve_and_name_bad_keys() {
        let cfg: ServerConfig = toml::from_str(
            "[alerts.mqtt]\nbroker = \"127.0.0.1:1883\"\n\
             [[alerts.webhooks]]\nurl = \"http://h/x\"\nheaders = { Authorization = \"t\" }\n",
        )
        .expect("parses");
        let a = cfg.resolve().expect("valid").alerts;
        let mqtt = a.mqtt.expect("broker set");
        assert_eq!((mqtt.host.as_str(), mqtt.port), ("127.0.0.1", 1883));
        assert_eq!(mqtt.topic_prefix, "hydrant");
        assert_eq!(
            a.webhooks[0].headers,
            [("Authorization".into(), "t".into())]
        );
        assert_eq!(a.webhooks[0].attempts_max, 5);

        for (text, key) in [
            ("[alerts.mqtt]\nbroker = \"nohost\"\n", "alerts.mqtt.broker"),
            (
                "[alerts.mqtt]\nbroker = \"h:1\"\ntopic_prefix = \"a/#\"\n",
                "topic_prefix",
            ),
            (
                "[[alerts.webhooks]]\nurl = \"https://h\"\n",
                "alerts.webhooks[0].url",
            ),
            (
                "[[alerts.webhooks]]\nurl = \"http://h\"\nattempts_max = 0\n",
                "attempts_max",
            ),
            (
                "[[alerts.webhooks]]\nurl = \"http://h\"\nheaders = { \"a b\" = \"v\" }\n",
                "headers.a b",
            ),
            (
                "[alerts]\nqueue_events_max = 0\n",
                "alerts.queue_events_max",
            ),
        ] {
            let cfg: ServerConfig = toml::from_str(text).expect("parses");
            let err = cfg.resolve().expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn empty_server_config_gives_the_documented_defaults() {
        let s = ServerConfig::default()
            .resolve()
            .expect("defaults are valid");
        assert_eq!(s.http_listen.port(), 7070);
        assert_eq!(s.quic_listen.port(), 7071);
        assert_eq!(s.default_retention_hours, 24);
        assert!(!s.open);
        assert!(s.alerts.mqtt.is_none() && s.alerts.webhooks.is_empty());
    }
}
