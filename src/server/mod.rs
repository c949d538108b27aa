//! The server process assembled from its parts: the fragment store, QUIC ingest, the HTTP APIs,
//! the retention loop and the detection consumers (one per `[[detect.cameras]]`).
//!
//! This module only wires subsystems together and owns their lifetimes; it holds no protocol or
//! storage logic. [`Server::start`] returns once every listener is bound, so tests and the demo
//! can embed a real server on ephemeral ports. Shutdown is graceful: listeners stop accepting,
//! in-flight persists finish (ingest has its own deadline), then the tasks end.
//!
//! The HTTP port speaks HTTP/1.1 and HTTP/2 cleartext with prior knowledge (h2c, as the AWS JS
//! SDK v3 may use) on the same socket: `axum::serve` detects the HTTP/2 preface per connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::alerts::Alerts;
use crate::api::{self, ApiState};
use crate::config::ServerSettings;
use crate::detect::consumer::{self, ConsumerOptions};
use crate::detect::events::{DataStream, EventHub};
use crate::fragment::{Fragment, StreamName, UnixMillis};
use crate::store::{Appended, Store, StoreConfig, StoreError};
use crate::streams::{Streams, StreamsConfig};
use crate::transport::{self, FragmentSink, IngestConfig, IngestServer, SinkError};
use crate::wire::ErrorCode;

/// How long shutdown waits for the server's tasks before giving up on them.
const SHUTDOWN_DEADLINE_S: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store in {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("cannot open the data streams in {path}: {source}")]
    Streams {
        path: PathBuf,
        source: crate::streams::StreamsError,
    },
    #[error("cannot set up the TLS identity: {0}")]
    Tls(transport::TransportError),
    #[error("cannot listen for agents on {addr} (QUIC): {source}")]
    BindQuic {
        addr: SocketAddr,
        source: transport::TransportError,
    },
    #[error("cannot start detection: {0}")]
    Detect(String),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    BindHttp {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running server. Dropping it without [`Server::shutdown`] aborts its tasks.
#[derive(Debug)]
pub struct Server {
    pub http_addr: SocketAddr,
    pub quic_addr: SocketAddr,
    /// The CA certificate agents must trust (`<data-dir>/tls/ca.pem`).
    pub ca_pem: PathBuf,
    pub store: Arc<Store>,
    /// Detection events, when cameras are configured for detection.
    pub events: Option<Arc<EventHub>>,
    detection: Detection,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Server {
    /// Opens the store, loads or creates the TLS identity, binds both listeners and starts
    /// serving. Returns once everything listens.
    pub async fn start(settings: ServerSettings) -> Result<Server, ServerError> {
        if settings.open {
            tracing::warn!(
                "open mode: any AWS credentials are accepted and agents need no client certificate; use it only on a trusted network"
            );
        }
        let store_config = StoreConfig {
            default_retention_hours: settings.default_retention_hours,
            create_on_first_use: settings.create_streams_on_first_use,
            segment_bytes_max: settings.segment_bytes_max,
            fragment_bytes_max: settings.fragment_bytes_max,
            region: settings.region.clone(),
            ..StoreConfig::default()
        };
        let store =
            Store::open(&settings.data_dir, store_config).map_err(|source| ServerError::Store {
                path: settings.data_dir.clone(),
                source,
            })?;
        let streams_config = StreamsConfig {
            throttle: settings.streams_throttle,
            region: settings.region.clone(),
            ..StreamsConfig::default()
        };
        let streams = Arc::new(Streams::open(&settings.data_dir, streams_config).map_err(
            |source| ServerError::Streams {
                path: settings.data_dir.clone(),
                source,
            },
        )?);
        let tls_dir = transport::certs::tls_dir(&settings.data_dir);
        let identity = transport::load_or_create_server_identity(&tls_dir, &settings.server_names)
            .map_err(ServerError::Tls)?;
        let clients = if settings.open {
            transport::ClientAuth::Open
        } else {
            let devices = transport::DeviceDirectory::new(&tls_dir);
            tracing::info!(registry = %devices.path().display(), "agents need a device certificate (hydrant certs issue)");
            transport::ClientAuth::Devices(Arc::new(devices))
        };
        let ingest_config = IngestConfig {
            fragment_bytes_max: settings.fragment_bytes_max,
            fragment_duration_ms_max: settings.fragment_duration_ms_max,
            connections_max: settings.connections_max as usize,
            streams_per_connection_max: settings.streams_per_connection_max as usize,
            clients,
            ..IngestConfig::default()
        };
        let sink = Arc::new(StoreSink {
            store: store.clone(),
        });
        let ingest = IngestServer::bind(settings.quic_listen, &identity, ingest_config, sink)
            .map_err(|source| ServerError::BindQuic {
                addr: settings.quic_listen,
                source,
            })?;
        let quic_addr = ingest
            .local_addr()
            .map_err(|source| ServerError::BindQuic {
                addr: settings.quic_listen,
                source,
            })?;

        let listener = tokio::net::TcpListener::bind(settings.http_listen)
            .await
            .map_err(|source| ServerError::BindHttp {
                addr: settings.http_listen,
                source,
            })?;
        let http_addr = listener
            .local_addr()
            .map_err(|source| ServerError::BindHttp {
                addr: settings.http_listen,
                source,
            })?;
        let base_url = settings
            .public_endpoint
            .clone()
            .unwrap_or_else(|| format!("http://{http_addr}"));
        let detection = start_detection(&settings, &store, &streams, base_url)?;
        let router = api::router(ApiState {
            store: store.clone(),
            region: settings.region.clone(),
            data_endpoint: settings.public_endpoint.clone(),
            streams: Some(streams.clone()),
            keys: settings.keys.clone(),
            open: settings.open,
            events: detection.hub.clone(),
        });

        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(run_ingest(ingest, shutdown.subscribe()));
        tasks.spawn(run_http(listener, router, shutdown.subscribe()));
        tasks.spawn(run_retention(
            store.clone(),
            streams,
            Duration::from_secs(settings.retention_interval_s),
            shutdown.subscribe(),
        ));
        tracing::info!(%http_addr, %quic_addr, data_dir = %settings.data_dir.display(), "server listening");
        Ok(Server {
            http_addr,
            quic_addr,
            ca_pem: identity.ca_pem_path.clone(),
            store,
            events: detection.hub.clone(),
            detection,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting, lets in-flight work finish, and waits for the tasks (bounded).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.detection.stop().await;
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(SHUTDOWN_DEADLINE_S), drain)
            .await
            .is_err()
        {
            tracing::warn!(
                deadline_s = SHUTDOWN_DEADLINE_S,
                "server tasks did not stop in time; aborting them"
            );
            self.tasks.abort_all();
        }
        tracing::info!("server stopped");
    }
}

/// The detection consumers (one OS thread per camera) and their event hub.
#[derive(Debug, Default)]
struct Detection {
    hub: Option<Arc<EventHub>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Detection {
    /// Asks every consumer to stop and waits for them off the async threads (each finishes the
    /// fragment it is on).
    async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Detection {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Opens the event hub and starts one consumer per configured camera.
fn start_detection(
    settings: &ServerSettings,
    store: &Arc<Store>,
    streams: &Arc<Streams>,
    base_url: String,
) -> Result<Detection, ServerError> {
    let cameras = &settings.detect.cameras;
    if cameras.is_empty() {
        return Ok(Detection::default());
    }
    let data = DataStream {
        streams: streams.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let alerts = if settings.alerts.mqtt.is_some() || !settings.alerts.webhooks.is_empty() {
        Alerts::start(settings.alerts.clone()).map_err(|e| ServerError::Detect(e.to_string()))?
    } else {
        Alerts::disabled()
    };
    let hub = EventHub::open(&settings.data_dir, Arc::new(alerts), base_url, Some(data))
        .map_err(|e| ServerError::Detect(e.to_string()))?;
    let hub = Arc::new(hub);
    let stop = Arc::new(AtomicBool::new(false));
    let options = ConsumerOptions::from_config(&settings.detect);
    let mut threads = Vec::with_capacity(cameras.len());
    for camera in cameras {
        let handle = consumer::spawn(
            store.clone(),
            hub.clone(),
            camera.clone(),
            options.clone(),
            stop.clone(),
        )
        .map_err(|e| ServerError::Detect(e.to_string()))?;
        threads.push(handle);
    }
    tracing::info!(cameras = cameras.len(), "detection consumers started");
    Ok(Detection {
        hub: Some(hub),
        stop,
        threads,
    })
}

async fn run_ingest<S: FragmentSink>(ingest: IngestServer<S>, shutdown: watch::Receiver<bool>) {
    if let Err(e) = ingest.run(shutdown).await {
        tracing::error!(error = %e, "QUIC ingest stopped with an error");
    }
}

async fn run_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        stopped(&mut shutdown).await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "HTTP server stopped with an error");
    }
}

async fn run_retention(
    store: Arc<Store>,
    streams: Arc<Streams>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut shutdown) => return,
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.enforce_retention(UnixMillis::now())).await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(deleted)) => tracing::info!(
                segments_deleted = deleted,
                "retention deleted expired segments"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "retention failed; it will be retried"),
            Err(e) => tracing::error!(error = %e, "retention task failed"),
        }
        let streams = streams.clone();
        match tokio::task::spawn_blocking(move || streams.enforce_retention(UnixMillis::now()))
            .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(deleted)) => tracing::info!(
                segments_deleted = deleted,
                "retention deleted expired data stream segments"
            ),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "data stream retention failed; it will be retried")
            }
            Err(e) => tracing::error!(error = %e, "data stream retention task failed"),
        }
    }
}

/// The ingest's view of the store: resolve producers and persist fragments.
#[derive(Debug)]
struct StoreSink {
    store: Arc<Store>,
}

impl FragmentSink for StoreSink {
    async fn open_stream(&self, stream: &StreamName, epoch: u64) -> Result<u64, SinkError> {
        self.store
            .open_producer(stream, epoch, UnixMillis::now())
            .map_err(sink_error)
    }

    async fn persist(&self, fragment: Fragment) -> Result<String, SinkError> {
        match self.store.append(fragment, UnixMillis::now()).await {
            Ok(Appended::Stored(number) | Appended::Duplicate(number)) => Ok(number.to_string()),
            // It was stored once and retention has since deleted it: the producer may let it go.
            Err(StoreError::FragmentExpired { .. }) => Ok(String::new()),
            Err(e) => Err(sink_error(e)),
        }
    }
}

fn sink_error(e: StoreError) -> SinkError {
    let code = match &e {
        StoreError::StreamNotFound(_) => ErrorCode::UnknownStream,
        StoreError::FragmentTooLarge { .. } => ErrorCode::FragmentTooLarge,
        StoreError::StreamLimitExceeded { .. } => ErrorCode::LimitExceeded,
        StoreError::SequenceGapsExceeded { .. } => ErrorCode::ProtocolViolation,
        _ => ErrorCode::StorageFailure,
    };
    if code == ErrorCode::StorageFailure {
        tracing::error!(error = %e, "store refused a fragment");
    }
    SinkError {
        code,
        message: e.to_string(),
    }
}

/// Resolves once shutdown is asked for (or its sender is gone). Holds no borrow of the channel
/// across an await, so the futures that select on it stay `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
