//! The video path end to end: a recorded clip replayed by a real agent over real QUIC into a
//! real server, checked through the Kinesis Video API, GStreamer and the store on disk, including
//! SIGKILL of either side mid-ingest and bad input.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{self, AgentProcess, AgentRun, ServerProcess, clip};
use crate::oracle;
use hydrant::store::FragmentSummary;

const AGENT_TIMEOUT: Duration = Duration::from_secs(180);

fn agent_run(
    server: &ServerProcess,
    stream: &str,
    clip: &Path,
    fast: bool,
    spool: &Path,
) -> AgentRun {
    AgentRun {
        server_quic: server.quic,
        ca: server.ca(),
        stream: stream.to_owned(),
        source: format!("file:{}", clip.display()),
        fast,
        spool_dir: spool.to_owned(),
    }
}

/// The stored fragments are exactly the clip's GOPs: one epoch, sequences 0..n once each.
fn assert_exactly_once(stored: &[FragmentSummary], gops: usize) {
    let epochs: BTreeSet<u64> = stored.iter().map(|f| f.epoch).collect();
    assert_eq!(epochs.len(), 1, "one producer session: {epochs:?}");
    let sequences: Vec<u64> = {
        let mut s: Vec<u64> = stored.iter().map(|f| f.sequence).collect();
        s.sort_unstable();
        s
    };
    let expected: Vec<u64> = (0..gops as u64).collect();
    assert_eq!(
        sequences, expected,
        "every GOP stored exactly once, none missing, none twice"
    );
}

fn secs(v: &Value) -> f64 {
    v.as_f64().expect("a timestamp in epoch seconds")
}

#[test]
fn fast_replay_stores_every_gop_once_and_get_clip_decodes() {
    let clip = clip("intel_one-by-one-person-detection.mp4");
    let gops = oracle::gop_frame_counts(&clip);
    let server = ServerProcess::start("");
    let kvs = server.kvs();
    kvs.create_stream("lobby");
    let spool = server.dir.path().join("agent");
    let (status, out) =
        AgentProcess::start(&agent_run(&server, "lobby", &clip, true, &spool)).wait(AGENT_TIMEOUT);
    assert!(status.success(), "agent failed: {out}");

    let listed = kvs.list_all_fragments("lobby");
    assert_eq!(listed.len(), gops.len(), "one fragment per GOP");
    let mut by_time = listed.clone();
    by_time.sort_by(|a, b| secs(&a["ProducerTimestamp"]).total_cmp(&secs(&b["ProducerTimestamp"])));
    for pair in by_time.windows(2) {
        let gap_ms =
            (secs(&pair[1]["ProducerTimestamp"]) - secs(&pair[0]["ProducerTimestamp"])) * 1000.0;
        let length_ms = pair[0]["FragmentLengthInMilliseconds"]
            .as_f64()
            .expect("length");
        assert!(
            (gap_ms - length_ms).abs() <= 2.0,
            "producer timestamps follow the media: gap {gap_ms} ms, length {length_ms} ms"
        );
    }

    // GetClip of 10 s starting at the fourth fragment: its frames are those of the GOPs whose
    // producer timestamps fall in the range.
    let start = secs(&by_time[3]["ProducerTimestamp"]);
    let end = start + 9.999;
    let expected_frames: usize = by_time
        .iter()
        .enumerate()
        .filter(|(_, f)| (start..=end).contains(&secs(&f["ProducerTimestamp"])))
        .map(|(i, _)| gops[i])
        .sum();
    let selector = json!({"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end}});
    let (status, error, body) = kvs.call(
        "getClip",
        json!({"StreamName": "lobby", "ClipFragmentSelector": selector}),
    );
    assert_eq!(
        status,
        200,
        "GetClip: {error:?} {}",
        String::from_utf8_lossy(&body)
    );
    let mp4 = server.dir.path().join("clip.mp4");
    std::fs::write(&mp4, &body).expect("write clip");
    assert_eq!(
        oracle::decoded_frames(&mp4),
        expected_frames,
        "the clip decodes to every frame of its GOPs"
    );

    let mut server = server;
    server.kill();
    assert_exactly_once(
        &harness::stored_fragments(&server.data_dir(), "lobby").expect("stream stored"),
        gops.len(),
    );
}

#[test]
fn server_killed_mid_ingest_loses_nothing_and_stores_nothing_twice() {
    // A short clip at real-time pace, so that the kill lands in the middle of the ingest.
    let clip = clip("beweging_walking-by.mkv");
    let gops = oracle::gop_frame_counts(&clip).len();
    let mut server = ServerProcess::start("[storage]\ncreate_streams_on_first_use = true\n");
    let spool = server.dir.path().join("agent");
    let agent = AgentProcess::start(&agent_run(&server, "door", &clip, false, &spool));
    std::thread::sleep(Duration::from_secs(6));
    server.kill();
    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    let (status, out) = agent.wait(AGENT_TIMEOUT);
    assert!(
        status.success(),
        "agent failed after the server restart: {out}"
    );
    server.kill();
    assert_exactly_once(
        &harness::stored_fragments(&server.data_dir(), "door").expect("stream stored"),
        gops,
    );
}

#[test]
fn agent_killed_mid_stream_resumes_from_the_server() {
    let clip = clip("beweging_walking-by.mkv");
    let gops = oracle::gop_frame_counts(&clip).len();
    let server = ServerProcess::start("[storage]\ncreate_streams_on_first_use = true\n");
    let spool = server.dir.path().join("agent");
    let run = agent_run(&server, "hall", &clip, false, &spool);
    let first = AgentProcess::start(&run);
    std::thread::sleep(Duration::from_secs(7));
    first.kill();
    let persisted_before = server.kvs().list_all_fragments("hall").len();
    assert!(
        persisted_before > 0 && persisted_before < gops,
        "killed mid-stream: {persisted_before} of {gops}"
    );

    let (status, out) = AgentProcess::start(&run).wait(AGENT_TIMEOUT);
    assert!(status.success(), "restarted agent failed: {out}");
    assert!(
        out.contains(&format!("{persisted_before} already stored")),
        "the restarted agent resumes after the {persisted_before} fragments the server had: {out}"
    );
    let mut server = server;
    server.kill();
    assert_exactly_once(
        &harness::stored_fragments(&server.data_dir(), "hall").expect("stream stored"),
        gops,
    );
}

#[test]
fn bad_input_gets_typed_errors_and_the_server_keeps_serving() {
    let clip = clip("beweging_walking-by.mkv");
    // Fragments of this clip are far larger than 4 KiB.
    let server = ServerProcess::start("[ingest]\nfragment_bytes_max = 4096\n");
    let kvs = server.kvs();
    let spool = server.dir.path().join("agents");

    // An unknown stream: the server refuses it with a typed error; the agent says so and fails.
    let (status, out) = AgentProcess::start(&agent_run(
        &server,
        "nobody-made-me",
        &clip,
        true,
        &spool.join("a"),
    ))
    .wait(AGENT_TIMEOUT);
    assert!(
        !status.success(),
        "sending to an unknown stream must fail: {out}"
    );
    assert!(out.contains("1 stream(s) refused"), "{out}");

    // An oversized fragment: refused with FragmentTooLarge, never stored.
    kvs.create_stream("small");
    let agent = AgentProcess::start(&agent_run(&server, "small", &clip, true, &spool.join("b")));
    let (status, out) = agent.wait(AGENT_TIMEOUT);
    assert!(
        !status.success(),
        "oversized fragments must be refused: {out}"
    );
    assert!(
        kvs.list_all_fragments("small").is_empty(),
        "nothing oversized is stored"
    );

    // A stream name that tries to leave the data directory.
    let (status, error, _) = kvs.call("createStream", json!({"StreamName": "../escape"}));
    assert_eq!(
        (status, error.as_deref()),
        (400, Some("InvalidArgumentException"))
    );
    let (status, error, _) = kvs.call("describeStream", json!({"StreamName": ".."}));
    assert_eq!(status, 400, "{error:?}");
    assert!(!server.data_dir().join("escape").exists());

    // The server still answers.
    kvs.ok("listStreams", json!({}));
}
