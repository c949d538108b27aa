//! Alert sinks for detection events (MQTT and webhooks). This placeholder only fixes the seam the
//! detection consumer calls: [`Alerts::publish`] hands over one [`AlertEvent`]; it publishes
//! nothing.

use serde::Serialize;

/// What an alert carries about one detection event.
#[derive(Debug, Clone, Serialize)]
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

/// The configured alert sinks.
#[derive(Debug)]
pub struct Alerts;

impl Alerts {
    /// Alerts with no sink.
    pub fn disabled() -> Alerts {
        Alerts
    }

    /// Hands one event to every sink.
    pub fn publish(&self, _event: &AlertEvent) {}
}
