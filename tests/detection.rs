//! Live detection end to end: a real agent replays recorded clips (`--fast`) into a real server
//! with one detection consumer per stream; events are checked through the events API, the
//! snapshot with the `image` crate and the clip with ffprobe.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{AgentProcess, AgentRun, ServerProcess, clip};

const AGENT_TIMEOUT: Duration = Duration::from_secs(180);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);

/// A weekly range one minute long, twelve hours from now: the camera is never armed during the
/// test.
fn schedule_away_from_now() -> String {
    let now_min = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60) as i64;
    // 1970-01-01 was a Thursday (day 3 of a Monday-first week).
    let minute_of_week = (now_min + 3 * 1440 + 12 * 60).rem_euclid(7 * 1440);
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let (day, m) = (minute_of_week / 1440, minute_of_week % 1440);
    let end = (m + 1) % 1440;
    format!(
        "{} {:02}:{:02}-{:02}:{:02}",
        days[day as usize],
        m / 60,
        m % 60,
        end / 60,
        end % 60
    )
}

fn config() -> String {
    let camera = |stream: &str, extra: &str| {
        format!(
            "[[detect.cameras]]\nstream = \"{stream}\"\nlabels = [\"person\"]\nmin_dwell_ms = 1000\ncooldown_ms = 2000\n{extra}\n"
        )
    };
    format!(
        "[storage]\ncreate_streams_on_first_use = true\n\n[detect]\nsample_fps = 2.0\npoll_ms = 100\nbacklog_fragments_max = 1000\n\n{}{}{}{}",
        camera("people", ""),
        camera("cars", ""),
        // A sliver along the top edge: people stand lower in the frame.
        camera(
            "people-zone",
            "zones = [{ name = \"sky\", points = [[0.0, 0.0], [1.0, 0.0], [1.0, 0.05], [0.0, 0.05]] }]"
        ),
        camera(
            "people-off",
            &format!("schedule = [\"{}\"]", schedule_away_from_now())
        ),
    )
}

fn replay(server: &ServerProcess, stream: &str, video: &str, spool: &Path) -> AgentProcess {
    AgentProcess::start(&AgentRun {
        server_quic: server.quic,
        ca: server.ca(),
        stream: stream.into(),
        source: format!("file:{}", clip(video).display()),
        fast: true,
        spool_dir: spool.join(stream),
    })
}

fn events(server: &ServerProcess, stream: &str) -> Vec<Value> {
    let url = format!("http://{}/events?stream={stream}&limit=100", server.http);
    let body: Value = reqwest::blocking::get(url).unwrap().json().unwrap();
    body["events"].as_array().cloned().unwrap_or_default()
}

/// Waits until the stream's consumer reports it handled every stored fragment.
fn wait_caught_up(server: &ServerProcess, stream: &str) {
    let stored = server.kvs().list_all_fragments(stream).len();
    let needle = format!("stream={stream} handled={stored}");
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while Instant::now() < deadline {
        let log = server.log();
        if log
            .lines()
            .any(|l| l.contains("detection caught up") && l.contains(&needle))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = server.log();
    let detect: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("caught up") || l.contains("ERROR") || l.contains("WARN"))
        .take(40)
        .collect();
    panic!(
        "{stream}: consumer did not catch up with {stored} fragments:\n{}",
        detect.join("\n")
    );
}

#[test]
fn live_detection_raises_one_event_per_visit_and_respects_rules() {
    let server = ServerProcess::start(&config());
    let spool = tempfile::tempdir().unwrap();
    let people = "intel_one-by-one-person-detection.mp4";
    let agents = vec![
        replay(&server, "people", people, spool.path()),
        replay(&server, "cars", "intel_car-detection.mp4", spool.path()),
        replay(&server, "people-zone", people, spool.path()),
        replay(&server, "people-off", people, spool.path()),
    ];
    for agent in agents {
        let (status, _) = agent.wait(AGENT_TIMEOUT);
        assert!(status.success(), "agent failed");
    }
    for s in ["people", "cars", "people-zone", "people-off"] {
        wait_caught_up(&server, s);
    }
    let found = events(&server, "people");
    assert_eq!(found.len(), 6, "{found:#?}");
    for s in ["cars", "people-zone", "people-off"] {
        assert!(
            events(&server, s).is_empty(),
            "{s}: {:#?}",
            events(&server, s)
        );
    }
    // Events are one per visit: they do not overlap and are separated by the empty gaps.
    let mut starts: Vec<u64> = found.iter().map(|e| e["start"].as_u64().unwrap()).collect();
    starts.sort_unstable();
    assert!(
        starts.windows(2).all(|w| w[1] - w[0] >= 3_000),
        "{starts:?}"
    );
    let event = &found[0];
    assert_eq!(event["label"], "person");
    let id = event["id"].as_str().unwrap();
    let one: Value = reqwest::blocking::get(format!("http://{}/events/{id}", server.http))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(one["id"], id);
    let jpeg = reqwest::blocking::get(format!("http://{}/events/{id}/snapshot.jpg", server.http))
        .unwrap()
        .bytes()
        .unwrap();
    let img = image::load_from_memory(&jpeg).expect("snapshot is a JPEG");
    assert!(img.width() > 100 && img.height() > 100);
    let resp =
        reqwest::blocking::get(format!("http://{}/events/{id}/clip.mp4", server.http)).unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mp4 = spool.path().join("clip.mp4");
    std::fs::write(&mp4, resp.bytes().unwrap()).unwrap();
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&mp4)
        .output()
        .expect("ffprobe runs");
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let frames: u64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(frames >= 50, "clip has {frames} frames");
    // Holds were placed for the clip.
    assert!(
        server
            .data_dir()
            .join("streams/people/holds.json")
            .is_file()
    );
    // Manual disarm and arm through the API.
    let client = reqwest::blocking::Client::new();
    for op in ["disarm", "arm"] {
        let r = client
            .post(format!("http://{}/detect/{op}", server.http))
            .body(r#"{"stream": "people"}"#)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{op}");
    }
    let missing = reqwest::blocking::get(format!("http://{}/events/nope", server.http)).unwrap();
    assert_eq!(missing.status().as_u16(), 404);
}
