//! The agent's local status endpoint: Prometheus text at `GET /metrics` and a JSON summary at
//! `GET /status`, on `status_listen` (loopback by default; no authentication, so keep it
//! local). Everything is read from counters the parts already keep (the spool's statistics,
//! the uplinks' shared atomics, the agent's own counters); a scrape takes the spool lock once.
//! A port that cannot be bound is logged and the agent runs on without the endpoint.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::fragment::UnixMillis;
use crate::transport::UplinkMetrics;

use super::{SharedSpool, lock, stopped};

/// Counters of the agent itself, next to those of the spool and the uplinks.
#[derive(Debug, Default)]
pub struct AgentCounters {
    pub capture_errors: AtomicU64,
    pub persisted: AtomicU64,
    pub refused: AtomicU64,
}

/// What a scrape reads.
#[derive(Clone, Debug)]
pub(super) struct StatusSources {
    pub spool: SharedSpool,
    pub uplink: Arc<UplinkMetrics>,
    pub agent: Arc<AgentCounters>,
}

/// One reading of every metric.
#[derive(Debug, Clone, serde::Serialize)]
struct Reading {
    spool_disk_bytes: u64,
    spool_unreleased_fragments: u64,
    spool_unreleased_bytes: u64,
    spool_oldest_age_seconds: f64,
    fragments_pending_ack: u64,
    pending_bytes: u64,
    drops_spool_full: u64,
    drops_spool_expired: u64,
    drops_spool_refused: u64,
    drops_abandoned_stale: u64,
    reconnects: u64,
    connects: u64,
    rtt_seconds: f64,
    capture_errors: u64,
    fragments_persisted: u64,
    fragments_refused: u64,
    backfill_bytes_sent: u64,
    live_bytes_sent: u64,
}

impl StatusSources {
    fn read(&self) -> Reading {
        let (stats, oldest) = {
            let spool = lock(&self.spool);
            let oldest = spool.unreleased().first().map(|s| s.producer_timestamp);
            (spool.stats(), oldest)
        };
        let age_ms = oldest.map_or(0, |t| UnixMillis::now().0.saturating_sub(t.0));
        let up = self.uplink.snapshot();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Reading {
            spool_disk_bytes: stats.disk_bytes,
            spool_unreleased_fragments: stats.unreleased_fragments,
            spool_unreleased_bytes: stats.unreleased_payload_bytes,
            spool_oldest_age_seconds: age_ms as f64 / 1000.0,
            fragments_pending_ack: up.pending_fragments,
            pending_bytes: up.pending_bytes,
            drops_spool_full: stats.fragments_dropped,
            drops_spool_expired: stats.fragments_expired,
            drops_spool_refused: stats.fragments_refused,
            drops_abandoned_stale: up.abandoned,
            reconnects: up.reconnects,
            connects: up.connects,
            rtt_seconds: up.rtt_us as f64 / 1e6,
            capture_errors: load(&self.agent.capture_errors),
            fragments_persisted: load(&self.agent.persisted),
            fragments_refused: load(&self.agent.refused),
            backfill_bytes_sent: up.backfill_bytes_sent,
            live_bytes_sent: up.live_bytes_sent,
        }
    }
}

/// Prometheus text exposition (version 0.0.4) of one reading.
fn prometheus(r: &Reading) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP hydrant_agent_{name} {help}");
        let _ = writeln!(out, "# TYPE hydrant_agent_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "hydrant_agent_{name}{labels} {value}");
        }
    };
    let v = |x: u64| x.to_string();
    metric(
        "spool_disk_bytes",
        "gauge",
        "Bytes the spool takes on disk.",
        &[("", v(r.spool_disk_bytes))],
    );
    metric(
        "spool_unreleased_fragments",
        "gauge",
        "Spooled fragments not yet persisted by the server.",
        &[("", v(r.spool_unreleased_fragments))],
    );
    metric(
        "spool_unreleased_bytes",
        "gauge",
        "Payload bytes of spooled fragments not yet persisted.",
        &[("", v(r.spool_unreleased_bytes))],
    );
    metric(
        "spool_oldest_age_seconds",
        "gauge",
        "Age of the oldest unreleased spooled fragment (producer time).",
        &[("", r.spool_oldest_age_seconds.to_string())],
    );
    metric(
        "fragments_pending_ack",
        "gauge",
        "Fragments held by the uplinks and not yet persisted.",
        &[("", v(r.fragments_pending_ack))],
    );
    metric(
        "pending_bytes",
        "gauge",
        "Payload bytes held by the uplinks.",
        &[("", v(r.pending_bytes))],
    );
    metric(
        "drops_total",
        "counter",
        "Fragments dropped, by reason (abandoned_stale: dropped from the wire only; the spooled copy stays).",
        &[
            ("{reason=\"spool_full\"}", v(r.drops_spool_full)),
            ("{reason=\"spool_expired\"}", v(r.drops_spool_expired)),
            ("{reason=\"spool_refused\"}", v(r.drops_spool_refused)),
            ("{reason=\"abandoned_stale\"}", v(r.drops_abandoned_stale)),
        ],
    );
    metric(
        "reconnects_total",
        "counter",
        "Connections to the server lost or failed.",
        &[("", v(r.reconnects))],
    );
    metric(
        "connects_total",
        "counter",
        "Connections to the server established.",
        &[("", v(r.connects))],
    );
    metric(
        "rtt_seconds",
        "gauge",
        "Latest round-trip time to the server.",
        &[("", r.rtt_seconds.to_string())],
    );
    metric(
        "capture_errors_total",
        "counter",
        "Capture pipeline failures.",
        &[("", v(r.capture_errors))],
    );
    metric(
        "fragments_persisted_total",
        "counter",
        "Fragments the server persisted.",
        &[("", v(r.fragments_persisted))],
    );
    metric(
        "fragments_refused_total",
        "counter",
        "Fragments the server refused for good.",
        &[("", v(r.fragments_refused))],
    );
    metric(
        "sent_bytes_total",
        "counter",
        "Payload bytes handed to QUIC, by class.",
        &[
            ("{class=\"live\"}", v(r.live_bytes_sent)),
            ("{class=\"backfill\"}", v(r.backfill_bytes_sent)),
        ],
    );
    out
}

async fn metrics(State(sources): State<StatusSources>) -> impl IntoResponse {
    let reading = tokio::task::spawn_blocking(move || sources.read()).await;
    match reading {
        Ok(r) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            prometheus(&r),
        )
            .into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn status(State(sources): State<StatusSources>) -> impl IntoResponse {
    match tokio::task::spawn_blocking(move || sources.read()).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serves the endpoint until shutdown. Binding failures are logged, not fatal.
pub(super) async fn serve(
    addr: SocketAddr,
    sources: StatusSources,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(error) => {
            tracing::warn!(%addr, %error, "the status endpoint cannot listen; running without it");
            return;
        }
    };
    tracing::info!(%addr, "status endpoint: /metrics (Prometheus), /status (JSON)");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(sources);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stopped(&mut shutdown).await })
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "the status endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_every_metric_with_type_and_labels() {
        let r = Reading {
            spool_disk_bytes: 10,
            spool_unreleased_fragments: 2,
            spool_unreleased_bytes: 8,
            spool_oldest_age_seconds: 1.5,
            fragments_pending_ack: 3,
            pending_bytes: 9,
            drops_spool_full: 1,
            drops_spool_expired: 0,
            drops_spool_refused: 0,
            drops_abandoned_stale: 4,
            reconnects: 5,
            connects: 6,
            rtt_seconds: 0.002,
            capture_errors: 0,
            fragments_persisted: 7,
            fragments_refused: 0,
            backfill_bytes_sent: 11,
            live_bytes_sent: 12,
        };
        let text = prometheus(&r);
        assert!(text.contains(
            "# TYPE hydrant_agent_reconnects_total counter\nhydrant_agent_reconnects_total 5\n"
        ));
        assert!(text.contains("hydrant_agent_drops_total{reason=\"abandoned_stale\"} 4\n"));
        assert!(text.contains("hydrant_agent_spool_oldest_age_seconds 1.5\n"));
        assert!(text.contains("hydrant_agent_sent_bytes_total{class=\"backfill\"} 11\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(name.starts_with("hydrant_agent_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
