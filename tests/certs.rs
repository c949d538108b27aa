//! Device identity end to end, with real processes: a server without `--open`, device
//! certificates from `hydrant certs`, agents with and without them, revocation while the server
//! runs, and `hydrant agent --check`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, AgentProcess, AgentRun, ServerProcess, clip, hydrant_bin};

const AGENT_EXIT_TIMEOUT: Duration = Duration::from_secs(90);
const AUTO_CREATE: &str = "[storage]\ncreate_streams_on_first_use = true\n";
const CLIP: &str = "beweging_walking-by.mkv";

/// Issues a device certificate with `hydrant certs issue`; returns `--cert FILE --key FILE`.
fn issue(server: &ServerProcess, device: &str, streams: &str) -> Vec<OsString> {
    let out = server.dir.path().join(format!("certs-{device}"));
    let out_arg = out.to_string_lossy().into_owned();
    let result = server.certs(&[
        "issue",
        "--device",
        device,
        "--streams",
        streams,
        "--out",
        &out_arg,
    ]);
    assert_success("certs issue", &result);
    for file in [
        format!("{device}.crt"),
        format!("{device}.key"),
        "ca.pem".into(),
    ] {
        assert!(
            out.join(&file).is_file(),
            "certs issue did not write {file}"
        );
    }
    vec![
        "--cert".into(),
        out.join(format!("{device}.crt")).into(),
        "--key".into(),
        out.join(format!("{device}.key")).into(),
    ]
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn clip_run(server: &ServerProcess, stream: &str, state: &str) -> AgentRun {
    AgentRun {
        server_quic: server.quic,
        ca: server.ca(),
        stream: stream.to_owned(),
        source: format!("file:{}", clip(CLIP).display()),
        fast: true,
        spool_dir: server.dir.path().join(state),
    }
}

/// The number in the agent's "N fragment(s) persisted" line.
fn persisted_count(stdout: &str) -> usize {
    stdout
        .split("hydrant agent: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no persisted count in {stdout:?}"))
}

/// How many fragments the stream holds on disk (0 for a stream that does not exist), read with
/// the store itself once the server has stopped.
fn stored_count(data_dir: &Path, stream: &str) -> usize {
    harness::stored_fragments(data_dir, stream).map_or(0, |f| f.len())
}

#[test]
fn a_registered_device_sends_its_clip_and_an_agent_without_a_certificate_is_refused() {
    let mut server = ServerProcess::start_secure(AUTO_CREATE);
    let cert_args = issue(&server, "cam1", "front");

    // A live source: the agent must stop by itself, not capture forever while refused.
    let mut live = clip_run(&server, "front", "anonymous");
    live.source = "test".to_owned();
    let anonymous = AgentProcess::start(&live);
    let (status, _, log) = anonymous.wait_with_log(AGENT_EXIT_TIMEOUT);
    assert!(
        !status.success(),
        "an agent without a certificate must fail"
    );
    assert!(
        log.contains("the server requires a client certificate")
            && log.contains("hydrant certs issue"),
        "the agent must say what to do: {log}"
    );

    let agent = AgentProcess::start_with(&clip_run(&server, "front", "cam1"), &cert_args);
    let (status, stdout) = agent.wait(AGENT_EXIT_TIMEOUT);
    assert!(
        status.success(),
        "device agent failed: {stdout}\n{}",
        server.log()
    );
    let persisted = persisted_count(&stdout);
    assert!(persisted >= 2, "{stdout}");
    assert!(
        server.log().contains("device=cam1"),
        "the server names the device"
    );

    server.kill();
    assert_eq!(stored_count(&server.data_dir(), "front"), persisted);
}

#[test]
fn a_device_is_refused_a_stream_it_may_not_write_while_its_own_stream_flows() {
    let mut server = ServerProcess::start_secure(AUTO_CREATE);
    let cert_args = issue(&server, "cam1", "front");
    let state = server.dir.path().join("two-cameras");
    std::fs::create_dir_all(&state).expect("state dir");
    let config = state.join("agent.toml");
    let source = format!("file:{}", clip(CLIP).display());
    std::fs::write(
        &config,
        format!(
            "[uplink]\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n\
             [[cameras]]\nstream = \"front\"\nsource = \"{source}\"\nfast = true\n\
             [[cameras]]\nstream = \"back\"\nsource = \"{source}\"\nfast = true\n"
        ),
    )
    .expect("agent config");
    let mut args: Vec<OsString> = vec![
        "agent".into(),
        "--config".into(),
        config.into(),
        "--server".into(),
        server.quic.to_string().into(),
        "--ca".into(),
        server.ca().into(),
        "--spool-dir".into(),
        state.clone().into(),
    ];
    args.extend(cert_args);
    let output = run_bounded(&args, AGENT_EXIT_TIMEOUT);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        !output.status.success(),
        "a refused stream makes the run fail"
    );
    assert!(stdout.contains("1 stream(s) refused"), "{stdout}");
    assert!(
        stderr.contains("NotAuthorized") && stderr.contains("may not write stream back"),
        "the refusal names the code and the stream: {stderr}"
    );
    let persisted = persisted_count(&stdout);
    assert!(persisted >= 2, "the allowed stream flows: {stdout}");

    server.kill();
    assert_eq!(stored_count(&server.data_dir(), "front"), persisted);
    assert_eq!(stored_count(&server.data_dir(), "back"), 0);
}

#[test]
fn revoking_a_device_refuses_its_next_connection_without_a_restart() {
    let mut server = ServerProcess::start_secure(AUTO_CREATE);
    let cam1 = issue(&server, "cam1", "front");
    let cam2 = issue(&server, "cam2", "back");
    let started = server_pid_marker(&server);

    let first = AgentProcess::start_with(&clip_run(&server, "front", "cam1-a"), &cam1);
    let (status, stdout) = first.wait(AGENT_EXIT_TIMEOUT);
    assert!(status.success(), "before revocation: {stdout}");

    assert_success(
        "certs revoke",
        &server.certs(&["revoke", "--device", "cam1"]),
    );

    let second = AgentProcess::start_with(&clip_run(&server, "front", "cam1-b"), &cam1);
    let (status, _, log) = second.wait_with_log(AGENT_EXIT_TIMEOUT);
    assert!(!status.success(), "a revoked device must be refused");
    assert!(log.contains("device cam1 is revoked"), "{log}");

    let other = AgentProcess::start_with(&clip_run(&server, "back", "cam2"), &cam2);
    let (status, stdout) = other.wait(AGENT_EXIT_TIMEOUT);
    assert!(status.success(), "another device keeps working: {stdout}");
    assert_eq!(
        server_pid_marker(&server),
        started,
        "the server was not restarted"
    );
    server.kill();
}

/// How many times the server logged that it listens: one per start.
fn server_pid_marker(server: &ServerProcess) -> usize {
    server.log().matches("server listening").count()
}

#[test]
fn agent_check_passes_for_the_test_source_and_a_file_and_names_a_missing_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let data_arg = data.to_string_lossy().into_owned();
    let certs = |args: &[&str]| {
        let mut all = vec!["certs", "--data-dir", &data_arg];
        all.extend_from_slice(args);
        let os: Vec<OsString> = all.iter().map(OsString::from).collect();
        run_bounded(&os, Duration::from_secs(30))
    };
    assert_success("certs init", &certs(&["init"]));
    let out = dir.path().join("out");
    let out_arg = out.to_string_lossy().into_owned();
    assert_success(
        "certs issue",
        &certs(&[
            "issue",
            "--device",
            "cam1",
            "--streams",
            "live,clip",
            "--out",
            &out_arg,
        ]),
    );
    let clip_source = format!("file:{}", clip(CLIP).display());
    let missing = dir.path().join("no-such-clip.mp4");
    let base = format!(
        "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        out.join("ca.pem").display(),
        out.join("cam1.crt").display(),
        out.join("cam1.key").display()
    );
    let good = write_config(
        dir.path(),
        "good.toml",
        &format!(
            "{base}[[cameras]]\nstream = \"live\"\nsource = \"test\"\n\
             [[cameras]]\nstream = \"clip\"\nsource = \"{clip_source}\"\n"
        ),
    );
    let output = check(&good);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "check failed: {stdout}");
    for prefix in [
        "ca ",
        "device certificate ",
        "camera live (test)",
        "camera clip (file:",
    ] {
        let line = stdout.lines().find(|l| l.starts_with(prefix));
        assert!(
            line.is_some_and(|l| l.contains(": OK")),
            "{prefix}: {stdout}"
        );
    }

    let bad = write_config(
        dir.path(),
        "bad.toml",
        &format!(
            "{base}[[cameras]]\nstream = \"live\"\nsource = \"test\"\n\
             [[cameras]]\nstream = \"gone\"\nsource = \"file:{}\"\n",
            missing.display()
        ),
    );
    let output = check(&bad);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "a missing file fails the check");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("camera gone"))
        .unwrap_or_else(|| panic!("no line for the missing file: {stdout}"));
    assert!(
        line.contains("FAILED") && line.contains("does not exist"),
        "{line}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("camera live (test): OK")),
        "{stdout}"
    );
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

fn check(config: &Path) -> Output {
    let args: Vec<OsString> = vec![
        "agent".into(),
        "--config".into(),
        config.into(),
        "--check".into(),
    ];
    run_bounded(&args, Duration::from_secs(60))
}

/// Runs `hydrant ARGS` and collects its output, killing it past `timeout`.
fn run_bounded(args: &[OsString], timeout: Duration) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(hydrant_bin())
        .args(args)
        .env("HYDRANT_LOG", "info,hydrant=debug")
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn hydrant");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hydrant {args:?} did not finish within {timeout:?}: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    }
}
