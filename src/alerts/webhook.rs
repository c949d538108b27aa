//! Webhook sink: one task per URL POSTs each queued event as JSON, one at a time, retrying
//! failures with exponential backoff up to `attempts_max`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::task::JoinHandle;

use super::backoff::Backoff;
use super::queue::DropOldestQueue;
use super::{AlertError, Counters, Queued, WebhookSettings, payload};

/// The event id; start and end updates of one event share it.
pub const EVENT_ID_HEADER: &str = "x-hydrant-event-id";
/// Unique per publish and identical on every retry: receivers dedup on it.
pub const DELIVERY_ID_HEADER: &str = "x-hydrant-delivery-id";
/// Which attempt this request is, starting at 1.
pub const ATTEMPT_HEADER: &str = "x-hydrant-attempt";

/// What to do after one attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    /// Worth another attempt: a server error, throttling or a network failure.
    Retry(String),
    /// Retrying cannot help: the receiver refused the request itself.
    GiveUp(String),
}

/// Decides from an HTTP status: 2xx delivered; 408, 429 and 5xx retried; the rest refused.
pub(crate) fn classify(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Retry(format!("HTTP {status}")),
        _ => Outcome::GiveUp(format!("HTTP {status}")),
    }
}

pub(crate) fn spawn(
    settings: WebhookSettings,
    queue: Arc<DropOldestQueue<Arc<Queued>>>,
    counters: Arc<Counters>,
) -> Result<JoinHandle<()>, AlertError> {
    let headers = header_map(&settings)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.timeout_ms))
        .user_agent(concat!("hydrant/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .build()
        .map_err(|source| AlertError::HttpClient {
            url: settings.url.clone(),
            source,
        })?;
    Ok(tokio::spawn(async move {
        while let Some(item) = queue.pop().await {
            deliver(&settings, &client, &item, &counters).await;
        }
    }))
}

fn header_map(settings: &WebhookSettings) -> Result<HeaderMap, AlertError> {
    let mut map = HeaderMap::new();
    for (name, value) in &settings.headers {
        let bad = || AlertError::Header {
            url: settings.url.clone(),
            name: name.clone(),
        };
        let name_parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let value_parsed = HeaderValue::from_str(value).map_err(|_| bad())?;
        map.insert(name_parsed, value_parsed);
    }
    Ok(map)
}

async fn deliver(
    settings: &WebhookSettings,
    client: &reqwest::Client,
    item: &Queued,
    counters: &Counters,
) {
    let body = payload::event_json(&item.event);
    let mut backoff = Backoff::new(settings.backoff_initial_ms, settings.backoff_max_ms);
    let mut last = String::new();
    for attempt in 1..=settings.attempts_max.max(1) {
        Counters::add(&counters.webhook_attempts);
        match attempt_once(settings, client, item, &body, attempt).await {
            Outcome::Delivered => {
                Counters::add(&counters.webhook_delivered);
                return;
            }
            Outcome::GiveUp(reason) => {
                last = reason;
                break;
            }
            Outcome::Retry(reason) => {
                if attempt < settings.attempts_max {
                    let delay_ms = backoff.next_ms();
                    tracing::debug!(url = %settings.url, event = %item.event.id, attempt,
                        delay_ms, reason = %reason, "webhook attempt failed; retrying");
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                last = reason;
            }
        }
    }
    Counters::add(&counters.webhook_given_up);
    tracing::warn!(url = %settings.url, event = %item.event.id, reason = %last,
        "webhook gave up on an event");
}

async fn attempt_once(
    settings: &WebhookSettings,
    client: &reqwest::Client,
    item: &Queued,
    body: &[u8],
    attempt: u32,
) -> Outcome {
    let sent = client
        .post(&settings.url)
        .header(CONTENT_TYPE, "application/json")
        .header(EVENT_ID_HEADER, item.event.id.as_str())
        .header(DELIVERY_ID_HEADER, item.delivery_id.as_str())
        .header(ATTEMPT_HEADER, attempt)
        .body(body.to_vec())
        .send()
        .await;
    match sent {
        Ok(response) => classify(response.status().as_u16()),
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_for_retry() {
        assert_eq!(classify(200), Outcome::Delivered);
        assert_eq!(classify(204), Outcome::Delivered);
        for s in [408, 429, 500, 502, 503] {
            assert!(matches!(classify(s), Outcome::Retry(_)), "{s}");
        }
        for s in [301, 400, 401, 404] {
            assert!(matches!(classify(s), Outcome::GiveUp(_)), "{s}");
        }
    }

    #[test]
    fn bad_headers_are_refused_by_name() {
        let settings = WebhookSettings {
            url: "http://127.0.0.1:9/".into(),
            headers: vec![("bad header".into(), "v".into())],
            attempts_max: 1,
            backoff_initial_ms: 1,
            backoff_max_ms: 1,
            timeout_ms: 100,
        };
        let err = header_map(&settings).expect_err("space in a header name");
        assert!(err.to_string().contains("bad header"), "{err}");
    }
}
