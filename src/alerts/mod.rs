//! Alerts: detection events pushed out to an MQTT broker and to webhooks.
//!
//! The detection consumer calls [`Alerts::publish`] for each event (start and end updates share
//! the event id). Publishing never waits and never fails: each sink (the MQTT broker, each
//! webhook URL) has its own bounded queue of `queue_events_max` events; when a sink falls behind
//! (broker down, receiver slow) its oldest queued event is dropped, counted in
//! [`AlertStats::dropped`] and logged, so one slow receiver never delays detection or the other
//! sinks. Delivery is at least once: MQTT uses QoS 1; webhooks retry with exponential backoff up
//! to `attempts_max` and send the same `X-Hydrant-Delivery-Id` on every attempt so receivers can
//! drop duplicates.
//!
//! MQTT (Home Assistant friendly): events go to `<prefix>/<stream>/events` as JSON (the
//! [`AlertEvent`] fields plus `"type": "person"`); `<prefix>/status` is retained `online` while
//! connected, with a last will of `offline` for when the connection dies; optional Home
//! Assistant discovery announces a `binary_sensor` per stream the first time the stream has an
//! event. The connection is plain TCP (TLS is not implemented yet); it reconnects with backoff.
//!
//! [`Alerts::shutdown`] closes the queues, lets the sinks flush until `shutdown_timeout_ms`, then
//! abandons what is left. This module imports nothing else from the crate (the detection
//! consumer calls it); `crate::config` resolves `[alerts]` into [`AlertSettings`].

mod backoff;
mod mqtt;
pub mod payload;
mod queue;
mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use queue::DropOldestQueue;

/// One detection event, as the detection consumer reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertEvent {
    pub id: String,
    pub stream: String,
    pub label: String,
    pub score: f32,
    pub zone: Option<String>,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
    pub snapshot_url: Option<String>,
    pub clip_url: Option<String>,
}

/// Resolved `[alerts]` settings (see `configs/server.toml`).
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// Events queued per sink before the oldest is dropped.
    pub queue_events_max: usize,
    /// How long [`Alerts::shutdown`] lets the sinks flush.
    pub shutdown_timeout_ms: u64,
    pub mqtt: Option<MqttSettings>,
    pub webhooks: Vec<WebhookSettings>,
}

/// Resolved `[alerts.mqtt]`.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub topic_prefix: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive_s: u64,
    pub reconnect_backoff_initial_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    /// Publish Home Assistant discovery config for each stream (retained).
    pub home_assistant_discovery: bool,
    pub discovery_prefix: String,
}

/// Resolved `[[alerts.webhooks]]`.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    /// Extra request headers (name, value), e.g. an `Authorization` token.
    pub headers: Vec<(String, String)>,
    /// Attempts per event, the first included.
    pub attempts_max: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Per attempt, connecting included.
    pub timeout_ms: u64,
}

/// Alerts cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("alerts must start inside a tokio runtime")]
    NoRuntime,
    #[error("webhook {url}: header {name:?} is not a valid HTTP header")]
    Header { url: String, name: String },
    #[error("webhook {url}: cannot build the HTTP client: {source}")]
    HttpClient { url: String, source: reqwest::Error },
}

/// Delivery counters, summed over all sinks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertStats {
    /// Events dropped because a sink's queue was full.
    pub dropped: u64,
    /// Events handed to the MQTT connection.
    pub mqtt_sent: u64,
    /// Webhook requests made, retries included.
    pub webhook_attempts: u64,
    /// Events a webhook receiver accepted (2xx).
    pub webhook_delivered: u64,
    /// Events given up on after `attempts_max` or a non-retryable answer.
    pub webhook_given_up: u64,
}

/// Log a full-queue warning on the first drop and then once per this many, not on each.
const DROP_WARN_EVERY: u64 = 100;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    dropped: AtomicU64,
    mqtt_sent: AtomicU64,
    webhook_attempts: AtomicU64,
    webhook_delivered: AtomicU64,
    webhook_given_up: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// An event as queued for the sinks: shared, with the delivery id retries keep.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) event: AlertEvent,
    /// Unique per [`Alerts::publish`] call: receivers dedup retries on it.
    pub(crate) delivery_id: String,
}

#[derive(Debug)]
struct Sink {
    name: String,
    queue: Arc<DropOldestQueue<Arc<Queued>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Reads the delivery counters of an [`Alerts`].
#[derive(Debug, Clone)]
pub struct AlertStatsReader(Arc<Counters>);

impl AlertStatsReader {
    pub fn read(&self) -> AlertStats {
        let c = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AlertStats {
            dropped: get(&c.dropped),
            mqtt_sent: get(&c.mqtt_sent),
            webhook_attempts: get(&c.webhook_attempts),
            webhook_delivered: get(&c.webhook_delivered),
            webhook_given_up: get(&c.webhook_given_up),
        }
    }
}

/// The running alert sinks; [`Alerts::disabled`] has none.
#[derive(Debug)]
pub struct Alerts {
    sinks: Vec<Sink>,
    counters: Arc<Counters>,
    shutdown_timeout_ms: u64,
}

impl Alerts {
    /// No sinks: publishing does nothing.
    pub fn disabled() -> Alerts {
        Alerts {
            sinks: Vec::new(),
            counters: Arc::default(),
            shutdown_timeout_ms: 0,
        }
    }

    /// Starts one task set per sink on the current tokio runtime.
    pub fn start(settings: AlertSettings) -> Result<Alerts, AlertError> {
        tokio::runtime::Handle::try_current().map_err(|_| AlertError::NoRuntime)?;
        let counters = Arc::new(Counters::default());
        let new_queue = || Arc::new(DropOldestQueue::new(settings.queue_events_max));
        let mut sinks = Vec::new();
        for hook in settings.webhooks {
            let queue = new_queue();
            let name = format!("webhook {}", hook.url);
            let task = webhook::spawn(hook, queue.clone(), counters.clone())?;
            sinks.push(Sink {
                name,
                queue,
                tasks: vec![task],
            });
        }
        if let Some(mqtt) = settings.mqtt {
            let queue = new_queue();
            let name = format!("MQTT {}:{}", mqtt.host, mqtt.port);
            let tasks = mqtt::spawn(mqtt, queue.clone(), counters.clone());
            sinks.push(Sink { name, queue, tasks });
        }
        Ok(Alerts {
            sinks,
            counters,
            shutdown_timeout_ms: settings.shutdown_timeout_ms,
        })
    }

    /// Queues the event for every sink; never waits. A full queue drops its oldest event.
    pub fn publish(&self, event: &AlertEvent) {
        if self.sinks.is_empty() {
            return;
        }
        let queued = Arc::new(Queued {
            event: event.clone(),
            delivery_id: uuid::Uuid::new_v4().to_string(),
        });
        for sink in &self.sinks {
            if let Some(old) = sink.queue.push(queued.clone()) {
                let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped % DROP_WARN_EVERY == 1 {
                    tracing::warn!(sink = %sink.name, event = %old.event.id, dropped,
                        "alert queue full; dropped the oldest event");
                }
            }
        }
    }

    /// Current delivery counters.
    pub fn stats(&self) -> AlertStats {
        self.stats_reader().read()
    }

    /// A handle that reads the counters, also after [`Alerts::shutdown`].
    pub fn stats_reader(&self) -> AlertStatsReader {
        AlertStatsReader(self.counters.clone())
    }

    /// Stops accepting events, lets the sinks flush for up to `shutdown_timeout_ms`, then
    /// abandons what is left (logged).
    pub async fn shutdown(self) {
        for sink in &self.sinks {
            sink.queue.close();
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.shutdown_timeout_ms);
        for sink in self.sinks {
            for mut task in sink.tasks {
                if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                    task.abort();
                    tracing::warn!(sink = %sink.name, unsent = sink.queue.len(),
                        "alert sink did not flush before the shutdown deadline");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn event(id: &str) -> AlertEvent {
        AlertEvent {
            id: id.into(),
            stream: "cam".into(),
            label: "person".into(),
            score: 0.9,
            zone: None,
            start_ms: 1,
            end_ms: None,
            snapshot_url: None,
            clip_url: None,
        }
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        let settings = AlertSettings {
            queue_events_max: 4,
            shutdown_timeout_ms: 10,
            mqtt: None,
            webhooks: Vec::new(),
        };
        assert!(matches!(
            Alerts::start(settings),
            Err(AlertError::NoRuntime)
        ));
    }

    #[tokio::test]
    async fn disabled_alerts_accept_and_ignore_events() {
        let alerts = Alerts::disabled();
        alerts.publish(&event("a"));
        assert_eq!(alerts.stats(), AlertStats::default());
        alerts.shutdown().await;
    }
}
