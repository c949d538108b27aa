//! RTSP cameras: a real RTSP server (gst-rtsp-server, in this process) serves a recorded clip;
//! the agent's capture ingests it without re-encoding over TCP and UDP, and a real agent
//! survives the RTSP server restarting mid-stream.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer_rtsp_server as rtsp_server;
use rtsp_server::prelude::*;

use crate::harness::{AgentProcess, AgentRun, ServerProcess, clip};
use hydrant::capture::{Capture, CaptureConfig, CaptureEvent, CapturedFragment, Pace, SourceSpec};
use hydrant::fragment::UnixMillis;

const CLIP: &str = "intel_one-by-one-person-detection.mkv";
const ORIGIN: UnixMillis = UnixMillis(1_700_000_000_000);
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(60);

/// An RTSP server on 127.0.0.1:`port` serving `clip` at `/cam` as shared media, with its own
/// GLib main loop on a thread.
pub struct RtspServer {
    pub port: u16,
    context: glib::MainContext,
    main_loop: glib::MainLoop,
    server: rtsp_server::RTSPServer,
    source: Option<glib::SourceId>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RtspServer {
    pub fn start(port: u16, clip: &Path) -> Self {
        gst::init().expect("gstreamer");
        let server = rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&port.to_string());
        let factory = rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(&format!(
            "( filesrc location=\"{}\" ! matroskademux ! h264parse ! rtph264pay name=pay0 pt=96 )",
            clip.display()
        ));
        factory.set_shared(true);
        server
            .mount_points()
            .expect("mount points")
            .add_factory("/cam", factory);
        let context = glib::MainContext::new();
        let source = server.attach(Some(&context)).expect("RTSP server listens");
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let (loop_ctx, loop_run) = (context.clone(), main_loop.clone());
        let thread = std::thread::spawn(move || {
            let _ = loop_ctx.with_thread_default(|| loop_run.run());
        });
        RtspServer {
            port,
            context,
            main_loop,
            server,
            source: Some(source),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }

    /// Closes every client connection and the listening socket, as a camera rebooting would.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.server
            .client_filter(Some(&mut |_, _| rtsp_server::RTSPFilterResult::Remove));
        if let Some(id) = self.source.take() {
            if let Some(source) = self.context.find_source_by_id(&id) {
                source.destroy();
            }
        }
        self.main_loop.quit();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs a capture until `fragments_max` fragments, an end or an error, or the timeout.
fn capture(spec: &str, pace: Pace, fragments_max: usize) -> Vec<CapturedFragment> {
    let source: SourceSpec = spec.parse().expect("spec");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let (capture, mut events) =
        Capture::start(CaptureConfig::new(source, pace), ORIGIN).expect("capture starts");
    let deadline = tokio::time::Instant::now() + CAPTURE_TIMEOUT;
    let mut fragments = Vec::new();
    runtime.block_on(async {
        while fragments.len() < fragments_max {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(CaptureEvent::Fragment(f))) => fragments.push(f),
                Ok(Some(CaptureEvent::Error(e))) => panic!("{spec}: capture failed: {e}"),
                other => panic!("{spec}: capture ended early: {other:?}"),
            }
        }
    });
    capture.stop();
    fragments
}

/// The RTSP capture carries the clip's own access units: the same avcC (SPS/PPS bytes) and,
/// sample for sample, the same bytes as the file read directly. An encoder in the path could
/// not reproduce a single coded frame bit for bit.
fn assert_passed_through(transport: &str) {
    let clip = clip(CLIP);
    let server = RtspServer::start(free_port(), &clip);
    let spec = format!("{}#transport={transport}&latency_ms=100", server.url());
    let live = capture(&spec, Pace::RealTime, 2);
    server.stop();
    let file = capture(&format!("file:{}", clip.display()), Pace::Fast, 4);
    let file_samples: Vec<_> = file.iter().flat_map(|f| &f.media.samples).collect();
    for fragment in &live {
        assert_eq!(fragment.media.codec_config, file[0].media.codec_config);
        assert_eq!((fragment.media.width, fragment.media.height), (768, 432));
        assert!(fragment.media.starts_with_keyframe());
    }
    let live_samples: Vec<_> = live.iter().flat_map(|f| &f.media.samples).collect();
    let first = &live_samples[0].data;
    let start = file_samples
        .iter()
        .position(|s| s.data == *first)
        .unwrap_or_else(|| panic!("{transport}: the first RTSP access unit is not in the clip"));
    // The clip runs at 10 fps with a keyframe every 2 s: two fragments are 40 frames.
    assert!(
        live_samples.len() >= 40,
        "{transport}: {}",
        live_samples.len()
    );
    for (index, sample) in live_samples.iter().enumerate() {
        let expected = file_samples
            .get(start + index)
            .unwrap_or_else(|| panic!("{transport}: more samples than the clip"));
        assert_eq!(
            sample.keyframe, expected.keyframe,
            "{transport}: sample {index}"
        );
        assert!(
            sample.data == expected.data,
            "{transport}: sample {index} differs: {} bytes, clip has {}",
            sample.data.len(),
            expected.data.len()
        );
    }
}

#[test]
fn rtsp_over_tcp_is_ingested_without_re_encoding() {
    assert_passed_through("tcp");
}

#[test]
fn rtsp_over_udp_is_ingested_without_re_encoding() {
    assert_passed_through("udp");
}

/// Waits until `count` fragments are persisted on the server (its summary stays quiet, so the
/// server is asked through the Kinesis Video API).
fn wait_for_fragments(server: &ServerProcess, stream: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let stored = server.kvs().list_all_fragments(stream).len();
        if stored >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {stored} fragment(s) of {count} stored within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn agent_survives_the_rtsp_server_restarting() {
    let clip = clip(CLIP);
    let port = free_port();
    let rtsp = RtspServer::start(port, &clip);
    let server = ServerProcess::start("");
    server.kvs().create_stream("door");
    let spool = tempfile::tempdir().expect("spool dir");
    let agent = AgentProcess::start(&AgentRun {
        server_quic: server.quic,
        ca: server.ca(),
        stream: "door".into(),
        source: rtsp.url(),
        fast: false,
        spool_dir: spool.path().to_owned(),
    });
    wait_for_fragments(&server, "door", 2, Duration::from_secs(40));
    rtsp.stop();
    let before = server.kvs().list_all_fragments("door").len();
    std::thread::sleep(Duration::from_secs(1));
    let rtsp = RtspServer::start(port, &clip);
    wait_for_fragments(&server, "door", before + 2, Duration::from_secs(60));
    agent.terminate();
    let (status, _out, log) = agent.wait_with_log(Duration::from_secs(30));
    rtsp.stop();
    assert!(status.success(), "agent exit {status:?}\n{log}");
    assert!(
        log.contains("live source failed; restarting it")
            || log.contains("live source ended; restarting it"),
        "the restart loop took over:\n{log}"
    );
}
