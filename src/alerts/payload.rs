//! What goes on the wire: the JSON body shared by MQTT and webhooks, MQTT topic names and the
//! Home Assistant discovery message. Pure functions, no I/O.

use serde::Serialize;
use serde_json::json;

use super::AlertEvent;

/// The `type` field of every payload: what was detected, for receivers that route on it.
pub const EVENT_TYPE: &str = "person";
/// Payload of the retained availability topic while the server is connected.
pub const STATUS_ONLINE: &str = "online";
/// Payload of the availability topic after a clean shutdown, and of the last will.
pub const STATUS_OFFLINE: &str = "offline";
/// Home Assistant turns the binary sensor off after this long if no end update arrives.
const DISCOVERY_OFF_DELAY_S: u64 = 60;

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    event: &'a AlertEvent,
}

/// The JSON body: the event's fields plus `type`.
pub fn event_json(event: &AlertEvent) -> Vec<u8> {
    // Serialising a struct of plain fields into memory cannot fail; an empty object would still
    // be valid JSON should it ever do so.
    serde_json::to_vec(&Payload {
        kind: EVENT_TYPE,
        event,
    })
    .unwrap_or_else(|_| b"{}".to_vec())
}

/// One MQTT topic level: `/`, `+` and `#` would change the topic's meaning, so they become `_`.
fn topic_level(name: &str) -> String {
    name.chars()
        .map(|c| if matches!(c, '/' | '+' | '#') { '_' } else { c })
        .collect()
}

/// `<prefix>/<stream>/events`.
pub fn events_topic(prefix: &str, stream: &str) -> String {
    format!("{prefix}/{}/events", topic_level(stream))
}

/// `<prefix>/status`, retained `online`/`offline`.
pub fn status_topic(prefix: &str) -> String {
    format!("{prefix}/status")
}

/// An identifier Home Assistant accepts in object ids: `[A-Za-z0-9_-]`.
fn object_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The retained discovery message announcing one stream's person sensor to Home Assistant:
/// (topic, body). The sensor is on while an event has no `end_ms`.
pub fn discovery(
    discovery_prefix: &str,
    topic_prefix: &str,
    client_id: &str,
    stream: &str,
) -> (String, Vec<u8>) {
    let node = object_id(client_id);
    let object = format!("{}_person", object_id(stream));
    let topic = format!("{discovery_prefix}/binary_sensor/{node}/{object}/config");
    let state_topic = events_topic(topic_prefix, stream);
    let body = json!({
        "name": format!("{stream} person"),
        "unique_id": format!("{node}_{object}"),
        "device_class": "occupancy",
        "state_topic": state_topic,
        "json_attributes_topic": state_topic,
        "value_template": "{{ 'ON' if value_json.end_ms is none else 'OFF' }}",
        "off_delay": DISCOVERY_OFF_DELAY_S,
        "availability_topic": status_topic(topic_prefix),
        "payload_available": STATUS_ONLINE,
        "payload_not_available": STATUS_OFFLINE,
        "device": { "identifiers": [node], "name": "Hydrant", "manufacturer": "Hydrant" },
    });
    (topic, body.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn event() -> AlertEvent {
        AlertEvent {
            id: "ev-1".into(),
            stream: "front-door".into(),
            label: "person".into(),
            score: 0.5,
            zone: Some("porch".into()),
            start_ms: 1_700_000_000_000,
            end_ms: None,
            snapshot_url: Some("http://h/snap.jpg".into()),
            clip_url: None,
        }
    }

    #[test]
    fn payload_is_the_event_plus_type() {
        let v: Value = serde_json::from_slice(&event_json(&event())).expect("json");
        assert_eq!(
            v,
            json!({
                "type": "person", "id": "ev-1", "stream": "front-door", "label": "person",
                "score": 0.5, "zone": "porch", "start_ms": 1_700_000_000_000u64, "end_ms": null,
                "snapshot_url": "http://h/snap.jpg", "clip_url": null,
            })
        );
    }

    #[test]
    fn topics_cannot_be_widened_by_stream_names() {
        assert_eq!(events_topic("hydrant", "cam"), "hydrant/cam/events");
        assert_eq!(events_topic("hydrant", "a/+#"), "hydrant/a___/events");
        assert_eq!(status_topic("hydrant"), "hydrant/status");
    }

    #[test]
    fn discovery_points_home_assistant_at_the_event_and_status_topics() {
        let (topic, body) = discovery("homeassistant", "hydrant", "hydrant", "front.door");
        assert_eq!(
            topic,
            "homeassistant/binary_sensor/hydrant/front_door_person/config"
        );
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["state_topic"], "hydrant/front.door/events");
        assert_eq!(v["availability_topic"], "hydrant/status");
        assert_eq!(v["unique_id"], "hydrant_front_door_person");
    }
}
