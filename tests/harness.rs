//! Test harness: the real `hydrant` binary as server and agent processes on loopback, each with
//! its own temporary data directory and free ports, plus a small Kinesis Video HTTP client.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a server may take to start listening.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn hydrant_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hydrant"))
}

/// The assets directory: `$HYDRANT_ASSETS`, else `../shared/assets` or `.assets` beside the crate.
/// Missing assets fail the test with a clear message (`make test` fetches them).
pub fn assets() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = std::env::var_os("HYDRANT_ASSETS")
        .map(PathBuf::from)
        .into_iter()
        .chain([root.join("../shared/assets"), root.join(".assets")]);
    for dir in candidates {
        if dir.join("videos").is_dir() {
            return dir;
        }
    }
    panic!("test assets not found: run `make test` (it fetches them) or set HYDRANT_ASSETS");
}

pub fn clip(name: &str) -> PathBuf {
    let path = assets().join("videos").join(name);
    assert!(path.is_file(), "missing asset {}", path.display());
    path
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// A `hydrant server` process. Killed when dropped.
pub struct ServerProcess {
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    extra_config: String,
    /// Open (development) mode: unsigned HTTP requests, agents without certificates.
    open: bool,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts a server in open mode whose config file holds `extra_config` (TOML) on top of the
    /// defaults.
    pub fn start(extra_config: &str) -> Self {
        Self::start_in_mode(extra_config, true)
    }

    /// Starts a server without `--open`: agents need a device certificate (and HTTP requests
    /// a signature, so check its store with the server stopped).
    pub fn start_secure(extra_config: &str) -> Self {
        Self::start_in_mode(extra_config, false)
    }

    fn start_in_mode(extra_config: &str, open: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port())
            .parse()
            .expect("addr");
        let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port())
            .parse()
            .expect("addr");
        let mut server = ServerProcess {
            dir,
            http,
            quic,
            extra_config: extra_config.to_owned(),
            open,
            child: None,
        };
        server.spawn();
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir().join("tls").join("ca.pem")
    }

    fn spawn(&mut self) {
        let config = self.dir.path().join("server.toml");
        std::fs::write(&config, &self.extra_config).expect("write server config");
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("server log");
        let mut cmd = Command::new(hydrant_bin());
        cmd.arg("server");
        if self.open {
            // Open mode: the harness's HTTP client does not sign (SigV4 has its own tests).
            cmd.arg("--open");
        }
        let child = cmd
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args([
                "--http",
                &self.http.to_string(),
                "--quic",
                &self.quic.to_string(),
            ])
            .env("HYDRANT_LOG", "info,hydrant=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn hydrant server");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("server exited at start ({status}): {}", self.log());
                }
            }
            if self.ca().is_file() && std::net::TcpStream::connect(self.http).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not start listening: {}", self.log());
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs `hydrant certs --data-dir <this server's data dir> ARGS` to completion.
    pub fn certs(&self, args: &[&str]) -> std::process::Output {
        Command::new(hydrant_bin())
            .arg("certs")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .output()
            .expect("run hydrant certs")
    }

    pub fn kvs(&self) -> Kvs {
        Kvs {
            base: format!("http://{}", self.http),
            client: reqwest::blocking::Client::new(),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `hydrant agent` process.
pub struct AgentProcess {
    child: Child,
    log: PathBuf,
}

pub struct AgentRun {
    pub server_quic: SocketAddr,
    pub ca: PathBuf,
    pub stream: String,
    pub source: String,
    pub fast: bool,
    pub spool_dir: PathBuf,
}

impl AgentProcess {
    pub fn start(run: &AgentRun) -> Self {
        Self::start_with(run, &[])
    }

    /// Starts an agent with `extra_args` after the usual ones (e.g. `--cert`, `--key`).
    pub fn start_with(run: &AgentRun, extra_args: &[std::ffi::OsString]) -> Self {
        Self::start_configured(run, "", "", extra_args)
    }

    /// Starts an agent whose config file adds `top_level` keys and `uplink` keys (TOML lines)
    /// to the harness's usual ones.
    pub fn start_configured(
        run: &AgentRun,
        top_level: &str,
        uplink: &str,
        extra_args: &[std::ffi::OsString],
    ) -> Self {
        std::fs::create_dir_all(&run.spool_dir).expect("spool dir");
        let log = run.spool_dir.join(format!(
            "agent-{}.log",
            std::process::id() as u128 * 1000 + nanos()
        ));
        let config = run.spool_dir.join("agent.toml");
        // Short backoff so that reconnects in the fault tests happen quickly.
        std::fs::write(
            &config,
            format!("{}{top_level}\n[uplink]\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\nack_timeout_ms = 5000\n{uplink}\n",
                // Agents run side by side: the status endpoint only where a test asks for it.
                if top_level.contains("status_listen") { "" } else { "status_listen = \"\"\n" }),
        )
        .expect("agent config");
        let mut cmd = Command::new(hydrant_bin());
        cmd.args(["agent", "--config"])
            .arg(&config)
            .args(["--server", &run.server_quic.to_string(), "--ca"])
            .arg(&run.ca)
            .args([
                "--stream",
                &run.stream,
                "--source",
                &run.source,
                "--spool-dir",
            ])
            .arg(&run.spool_dir)
            .env("HYDRANT_LOG", "info,hydrant=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("agent log"));
        if run.fast {
            cmd.arg("--fast");
        }
        cmd.args(extra_args);
        AgentProcess {
            child: cmd.spawn().expect("spawn hydrant agent"),
            log,
        }
    }

    /// Waits for the agent to exit (bounded) and returns its status and stdout.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let mut out = String::new();
                if let Some(mut stdout) = self.child.stdout.take() {
                    let _ = stdout.read_to_string(&mut out);
                }
                return (status, out);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent did not finish within {timeout:?}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like [`Self::wait`], also returning the agent's log (its stderr).
    pub fn wait_with_log(self, timeout: Duration) -> (ExitStatus, String, String) {
        let log = self.log.clone();
        let (status, stdout) = self.wait(timeout);
        (
            status,
            stdout,
            std::fs::read_to_string(log).unwrap_or_default(),
        )
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the agent stops capturing, flushes and exits (collect it with `wait`).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "SIGTERM to the agent failed");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1000)
        .unwrap_or(0)
}

/// A minimal Kinesis Video client over HTTP (rest-json), for checks from Rust.
pub struct Kvs {
    base: String,
    client: reqwest::blocking::Client,
}

impl Kvs {
    /// Calls an operation; returns (status, the error type header, body JSON or raw bytes).
    pub fn call(&self, op: &str, body: Value) -> (u16, Option<String>, Vec<u8>) {
        let resp = self
            .client
            .post(format!("{}/{op}", self.base))
            .json(&body)
            .send()
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let error = resp
            .headers()
            .get("x-amzn-ErrorType")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().expect("body").to_vec();
        (status, error, bytes)
    }

    pub fn ok(&self, op: &str, body: Value) -> Value {
        let (status, error, bytes) = self.call(op, body);
        assert_eq!(
            status,
            200,
            "{op} failed: {error:?} {}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).expect("JSON reply")
    }

    pub fn create_stream(&self, name: &str) {
        self.ok(
            "createStream",
            json!({"StreamName": name, "DataRetentionInHours": 24}),
        );
    }

    /// Every fragment of the stream, following NextToken.
    pub fn list_all_fragments(&self, name: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10_000 {
            let mut body = json!({"StreamName": name, "MaxResults": 100});
            if let Some(t) = &token {
                body["NextToken"] = json!(t);
            }
            let page = self.ok("listFragments", body);
            all.extend(page["Fragments"].as_array().cloned().unwrap_or_default());
            match page.get("NextToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return all,
            }
        }
        panic!("ListFragments paging did not end");
    }
}

/// Every fragment on disk for `stream`, in server-time order, read with the store itself (the
/// server must have stopped). An unknown stream is an error.
pub fn stored_fragments(
    data_dir: &Path,
    stream: &str,
) -> Result<Vec<hydrant::store::FragmentSummary>, hydrant::store::StoreError> {
    use hydrant::fragment::{StreamName, UnixMillis};
    use hydrant::store::{LIST_FRAGMENTS_MAX, Store, StoreConfig, TimestampKind};

    let store = Store::open(data_dir, StoreConfig::default())?;
    let name = StreamName::new(stream).expect("a valid stream name");
    let mut all: Vec<hydrant::store::FragmentSummary> = Vec::new();
    loop {
        let after = all.last().map(|f| f.number);
        let page = store.list_fragments(
            &name,
            TimestampKind::Server,
            UnixMillis(0),
            UnixMillis(u64::MAX),
            after,
            LIST_FRAGMENTS_MAX,
        )?;
        let done = page.len() < LIST_FRAGMENTS_MAX;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}
