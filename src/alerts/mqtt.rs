//! MQTT sink: a driver task polls the rumqttc event loop (reconnecting with backoff) and a
//! feeder task moves queued events to the broker while connected.
//!
//! Two tasks because the event loop must be polled for anything to be sent, and its poll is not
//! meant to be cancelled half-way by a `select!`. The feeder only takes events from the queue
//! while connected, so while the broker is away events wait (and drop oldest) in our bounded
//! queue, with at most `MQTT_REQUESTS_MAX` more inside rumqttc.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::backoff::Backoff;
use super::queue::DropOldestQueue;
use super::{Counters, MqttSettings, Queued, payload};

/// Requests buffered inside rumqttc (its channel to the event loop).
const MQTT_REQUESTS_MAX: usize = 16;
/// Streams announced to Home Assistant per run; more are still published, not announced.
const DISCOVERY_STREAMS_MAX: usize = 1024;
/// How often the feeder checks that the broker acknowledged everything before disconnecting.
const ACK_POLL_MS: u64 = 10;

/// Connection state shared by the driver with the feeder.
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    up: bool,
    /// Increases on every successful connect, so the feeder re-announces `online`.
    generation: u64,
}

/// QoS 1 messages handed to rumqttc and acknowledged by the broker.
#[derive(Debug, Default)]
struct InFlight {
    sent: AtomicU64,
    acked: AtomicU64,
}

pub(crate) fn spawn(
    settings: MqttSettings,
    queue: Arc<DropOldestQueue<Arc<Queued>>>,
    counters: Arc<Counters>,
) -> Vec<JoinHandle<()>> {
    let (client, eventloop) = AsyncClient::new(options(&settings), MQTT_REQUESTS_MAX);
    let (link_tx, link_rx) = watch::channel(Link::default());
    let in_flight = Arc::new(InFlight::default());
    let driver = tokio::spawn(drive(
        eventloop,
        settings.clone(),
        link_tx,
        in_flight.clone(),
        queue.clone(),
    ));
    let feeder = Feeder {
        client,
        settings,
        queue,
        counters,
        in_flight,
        announced: HashSet::new(),
    };
    vec![driver, tokio::spawn(feeder.run(link_rx))]
}

fn options(s: &MqttSettings) -> MqttOptions {
    let mut opts = MqttOptions::new(&s.client_id, &s.host, s.port);
    opts.set_keep_alive(Duration::from_secs(s.keep_alive_s));
    opts.set_last_will(LastWill::new(
        payload::status_topic(&s.topic_prefix),
        payload::STATUS_OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &s.username {
        opts.set_credentials(user, s.password.clone().unwrap_or_default());
    }
    opts
}

/// Polls the event loop; on errors waits the backoff delay (rumqttc reconnects on the next
/// poll). Ends after our own disconnect, or on an error once the queue is closed.
async fn drive(
    mut eventloop: EventLoop,
    settings: MqttSettings,
    link: watch::Sender<Link>,
    in_flight: Arc<InFlight>,
    queue: Arc<DropOldestQueue<Arc<Queued>>>,
) {
    let mut backoff = Backoff::new(
        settings.reconnect_backoff_initial_ms,
        settings.reconnect_backoff_max_ms,
    );
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                link.send_modify(|l| {
                    l.up = true;
                    l.generation += 1;
                });
                tracing::info!(broker = %settings.host, port = settings.port, "MQTT connected");
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                in_flight.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                link.send_modify(|l| l.up = false);
                if queue.is_closed() {
                    return;
                }
                let delay_ms = backoff.next_ms();
                tracing::warn!(broker = %settings.host, port = settings.port, error = %e,
                    delay_ms, "MQTT connection failed; reconnecting");
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
        }
    }
}

struct Feeder {
    client: AsyncClient,
    settings: MqttSettings,
    queue: Arc<DropOldestQueue<Arc<Queued>>>,
    counters: Arc<Counters>,
    in_flight: Arc<InFlight>,
    /// Streams whose discovery message went out.
    announced: HashSet<String>,
}

impl Feeder {
    async fn run(mut self, mut link: watch::Receiver<Link>) {
        let mut online_generation = 0;
        loop {
            let now = *link.borrow_and_update();
            if !now.up {
                if link.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if now.generation != online_generation {
                online_generation = now.generation;
                let status = payload::status_topic(&self.settings.topic_prefix);
                self.send(status, payload::STATUS_ONLINE.into(), true).await;
            }
            tokio::select! {
                item = self.queue.pop() => match item {
                    Some(item) => self.send_event(&item).await,
                    None => break,
                },
                changed = link.changed() => if changed.is_err() { return },
            }
        }
        self.finish(link).await;
    }

    async fn send_event(&mut self, item: &Queued) {
        let stream = &item.event.stream;
        if self.settings.home_assistant_discovery
            && self.announced.len() < DISCOVERY_STREAMS_MAX
            && self.announced.insert(stream.clone())
        {
            let s = &self.settings;
            let (topic, body) =
                payload::discovery(&s.discovery_prefix, &s.topic_prefix, &s.client_id, stream);
            self.send(topic, body, true).await;
        }
        let topic = payload::events_topic(&self.settings.topic_prefix, stream);
        if self
            .send(topic, payload::event_json(&item.event), false)
            .await
        {
            Counters::add(&self.counters.mqtt_sent);
        }
    }

    /// Hands one QoS 1 message to rumqttc; false if the event loop is gone.
    async fn send(&self, topic: String, body: Vec<u8>, retain: bool) -> bool {
        match self
            .client
            .publish(topic, QoS::AtLeastOnce, retain, body)
            .await
        {
            Ok(()) => {
                self.in_flight.sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "MQTT publish failed; the connection task has ended");
                false
            }
        }
    }

    /// Clean exit: `offline` (the broker sends no last will on a clean disconnect), wait for the
    /// broker to acknowledge what was sent while still connected, disconnect. The caller's
    /// shutdown deadline bounds the wait.
    async fn finish(self, link: watch::Receiver<Link>) {
        let status = payload::status_topic(&self.settings.topic_prefix);
        self.send(status, payload::STATUS_OFFLINE.into(), true)
            .await;
        let f = &self.in_flight;
        while link.borrow().up && f.acked.load(Ordering::Relaxed) < f.sent.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(ACK_POLL_MS)).await;
        }
        if let Err(e) = self.client.disconnect().await {
            tracing::debug!(error = %e, "MQTT disconnect after the connection ended");
        }
    }
}
