//! Alerts against real receivers: a Mosquitto broker started by the test and an HTTP webhook
//! receiver in the test. Mosquitto must be installed (`scripts/setup.sh` installs it).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use hydrant::alerts::{AlertEvent, AlertSettings, Alerts, MqttSettings, WebhookSettings};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

/// How long a message may take to arrive before the test fails.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(10);
const SNAPSHOT_BYTES: &[u8] = b"\xff\xd8snapshot";
const CLIP_BYTES: &[u8] = b"clip-bytes";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

/// A Mosquitto process on a loopback port, anonymous clients allowed. Killed when dropped.
struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn mosquitto_bin() -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file());
    in_path.unwrap_or_else(|| {
        panic!("mosquitto is not installed: run scripts/setup.sh (Debian package `mosquitto`)")
    })
}

impl Broker {
    fn start(port: u16) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < ARRIVAL_TIMEOUT,
                "mosquitto did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test MQTT client subscribed to `filter`, collecting (topic, payload, retain).
struct Subscriber {
    _client: AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>,
}

async fn subscribe(port: u16, id: &str, filter: &str) -> Subscriber {
    let (client, mut eventloop) = AsyncClient::new(MqttOptions::new(id, "127.0.0.1", port), 16);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    subscribed_tx.take().map(|t| t.send(()));
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.retain));
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(ARRIVAL_TIMEOUT, subscribed_rx)
        .await
        .expect("SUBACK in time")
        .expect("subscriber running");
    Subscriber {
        _client: client,
        rx,
    }
}

impl Subscriber {
    /// The next message on `topic`, skipping others.
    async fn next_on(&mut self, topic: &str) -> (Vec<u8>, bool) {
        let wait = async {
            loop {
                let (t, body, retain) = self.rx.recv().await.expect("subscriber running");
                if t == topic {
                    return (body, retain);
                }
            }
        };
        tokio::time::timeout(ARRIVAL_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| panic!("no message on {topic}"))
    }
}

/// Requests seen by the webhook receiver; it answers 500 to the first `failures` of them.
#[derive(Default)]
struct Receiver {
    failures: usize,
    seen: Mutex<Vec<(HeaderMap, Value)>>,
}

async fn hook(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> StatusCode {
    let mut seen = r.seen.lock().expect("lock");
    seen.push((headers, body));
    if seen.len() <= r.failures {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// Starts the receiver (POST /hook) that also serves the event's snapshot and clip.
async fn start_receiver(failures: usize) -> (Arc<Receiver>, String) {
    let receiver = Arc::new(Receiver {
        failures,
        ..Receiver::default()
    });
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .route("/snapshot.jpg", get(|| async { SNAPSHOT_BYTES }))
        .route("/clip.mp4", get(|| async { CLIP_BYTES }))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (receiver, base)
}

fn mqtt_settings(port: u16) -> MqttSettings {
    MqttSettings {
        host: "127.0.0.1".into(),
        port,
        client_id: "hydrant-test".into(),
        topic_prefix: "hydrant".into(),
        username: None,
        password: None,
        keep_alive_s: 30,
        reconnect_backoff_initial_ms: 50,
        reconnect_backoff_max_ms: 200,
        home_assistant_discovery: true,
        discovery_prefix: "homeassistant".into(),
    }
}

fn webhook_settings(url: String, attempts_max: u32) -> WebhookSettings {
    WebhookSettings {
        url,
        headers: vec![("Authorization".into(), "Bearer test-token".into())],
        attempts_max,
        backoff_initial_ms: 20,
        backoff_max_ms: 100,
        timeout_ms: 2000,
    }
}

fn event(id: &str, base: &str) -> AlertEvent {
    AlertEvent {
        id: id.into(),
        stream: "front-door".into(),
        label: "person".into(),
        score: 0.875,
        zone: Some("porch".into()),
        start_ms: 1_700_000_000_000,
        end_ms: None,
        snapshot_url: Some(format!("{base}/snapshot.jpg")),
        clip_url: Some(format!("{base}/clip.mp4")),
    }
}

async fn fetch(url: &Value) -> Vec<u8> {
    let url = url.as_str().expect("URL is a string");
    let response = reqwest::get(url).await.expect("GET");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.bytes().await.expect("body").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_mosquitto_and_a_flaky_webhook_with_snapshot_and_clip() {
    let broker = Broker::start(free_port());
    let mut watcher = subscribe(broker.port, "watcher", "#").await;
    let (receiver, base) = start_receiver(2).await;

    let alerts = Alerts::start(AlertSettings {
        queue_events_max: 16,
        shutdown_timeout_ms: 5000,
        mqtt: Some(mqtt_settings(broker.port)),
        webhooks: vec![webhook_settings(format!("{base}/hook"), 5)],
    })
    .expect("alerts start");
    let (status, _) = watcher.next_on("hydrant/status").await;
    assert_eq!(status, b"online");

    let ev = event("ev-42", &base);
    alerts.publish(&ev);
    let expected = json!({
        "type": "person", "id": "ev-42", "stream": "front-door", "label": "person",
        "score": 0.875, "zone": "porch", "start_ms": 1_700_000_000_000u64, "end_ms": null,
        "snapshot_url": format!("{base}/snapshot.jpg"), "clip_url": format!("{base}/clip.mp4"),
    });

    let (body, _) = watcher.next_on("hydrant/front-door/events").await;
    let got: Value = serde_json::from_slice(&body).expect("event JSON");
    assert_eq!(got, expected);
    assert_eq!(fetch(&got["snapshot_url"]).await, SNAPSHOT_BYTES);
    assert_eq!(fetch(&got["clip_url"]).await, CLIP_BYTES);

    let discovery_topic = "homeassistant/binary_sensor/hydrant-test/front-door_person/config";
    let mut late = subscribe(broker.port, "late", "#").await;
    let (status, retained) = late.next_on("hydrant/status").await;
    assert_eq!((status.as_slice(), retained), (&b"online"[..], true));
    let (config, retained) = late.next_on(discovery_topic).await;
    let config: Value = serde_json::from_slice(&config).expect("discovery JSON");
    assert!(retained);
    assert_eq!(config["state_topic"], "hydrant/front-door/events");

    let started = Instant::now();
    while alerts.stats().webhook_delivered < 1 {
        assert!(started.elapsed() < ARRIVAL_TIMEOUT, "webhook not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = receiver.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3, "two 500s, then accepted");
    let header = |h: &HeaderMap, name: &str| h[name].to_str().expect("ascii").to_owned();
    let delivery = header(&seen[0].0, "x-hydrant-delivery-id");
    for (i, (headers, body)) in seen.iter().enumerate() {
        assert_eq!(header(headers, "x-hydrant-event-id"), "ev-42");
        assert_eq!(header(headers, "x-hydrant-delivery-id"), delivery);
        assert_eq!(header(headers, "x-hydrant-attempt"), (i + 1).to_string());
        assert_eq!(header(headers, "authorization"), "Bearer test-token");
        assert_eq!(body, &expected);
    }
    assert_eq!(fetch(&seen[2].1["clip_url"]).await, CLIP_BYTES);

    alerts.shutdown().await;
    let (status, _) = watcher.next_on("hydrant/status").await;
    assert_eq!(status, b"offline", "a clean shutdown announces offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_that_are_down_never_block_publish_and_bound_the_work() {
    let closed_port = free_port();
    let queue_events_max = 4;
    let attempts_max = 3;
    let alerts = Alerts::start(AlertSettings {
        queue_events_max,
        shutdown_timeout_ms: 3000,
        mqtt: Some(mqtt_settings(closed_port)),
        webhooks: vec![webhook_settings(
            format!("http://127.0.0.1:{closed_port}/hook"),
            attempts_max,
        )],
    })
    .expect("alerts start");

    let events = 200u64;
    let started = Instant::now();
    for i in 0..events {
        alerts.publish(&event(&format!("ev-{i}"), "http://127.0.0.1:9"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "publish waited: {:?}",
        started.elapsed()
    );
    let queued = queue_events_max as u64;
    let after_publish = alerts.stats();
    // MQTT never connects, so its queue keeps only the newest events; the webhook task may hold
    // one event it is retrying besides its queue.
    assert!(
        after_publish.dropped >= 2 * (events - queued) - 1,
        "{after_publish:?}"
    );

    let reader = alerts.stats_reader();
    let shutdown_started = Instant::now();
    alerts.shutdown().await;
    assert!(shutdown_started.elapsed() < Duration::from_secs(5));
    let stats = reader.read();
    let mqtt_dropped = events - queued;
    let handled_by_webhook = events - (stats.dropped - mqtt_dropped);
    // The queue, plus the few events the webhook task took while publish was running.
    assert!(handled_by_webhook <= queued + 3, "{stats:?}");
    assert_eq!(stats.webhook_given_up, handled_by_webhook, "{stats:?}");
    assert_eq!(
        stats.webhook_attempts,
        handled_by_webhook * u64::from(attempts_max),
        "{stats:?}"
    );
    assert_eq!((stats.webhook_delivered, stats.mqtt_sent), (0, 0));
}
