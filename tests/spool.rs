//! The agent's durable spool end to end: a live camera captured while the server is down, the
//! agent SIGKILLed, then restarted against a server that is back: every fragment the first run
//! spooled reaches the store exactly once, under its original identity.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::harness::{self, AgentProcess, AgentRun, ServerProcess};
use hydrant::spool::{FullPolicy, Spool, SpoolConfig};

const AGENT_EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const STREAM: &str = "yard";

/// (epoch, sequence) of every unreleased fragment in the agent's spool, oldest first.
fn spooled_ids(state_dir: &Path) -> Vec<(u64, u64)> {
    let spool = Spool::open(SpoolConfig {
        dir: SpoolConfig::in_state_dir(state_dir),
        bytes_max: 2 * 1024 * 1024 * 1024,
        age_max_ms: 7 * 24 * 3_600_000,
        full_policy: FullPolicy::DropOldest,
        fragment_bytes_max: 16 * 1024 * 1024,
    })
    .expect("the spool opens after SIGKILL");
    spool
        .unreleased()
        .iter()
        .map(|s| (s.id.epoch, s.id.sequence))
        .collect()
}

#[test]
fn fragments_spooled_while_the_server_is_down_survive_sigkill_and_arrive_once() {
    let mut server = ServerProcess::start("[storage]\ncreate_streams_on_first_use = true\n");
    server.kill();
    let state = server.dir.path().join("agent");
    let run = AgentRun {
        server_quic: server.quic,
        ca: server.ca(),
        stream: STREAM.to_owned(),
        source: "test".to_owned(),
        fast: false,
        spool_dir: state.clone(),
    };

    // The server is down: the live camera's fragments can only go to the spool.
    let first = AgentProcess::start(&run);
    std::thread::sleep(Duration::from_secs(8));
    let first_log = first.log();
    first.kill();
    let spooled = spooled_ids(&state);
    assert!(
        spooled.len() >= 2,
        "the first run spooled its fragments: {spooled:?}\n{first_log}"
    );
    let epoch = spooled[0].0;
    assert!(
        spooled.iter().all(|&(e, _)| e == epoch),
        "one session: {spooled:?}"
    );
    let sequences: Vec<u64> = spooled.iter().map(|&(_, s)| s).collect();
    assert_eq!(
        sequences,
        (0..spooled.len() as u64).collect::<Vec<_>>(),
        "contiguous from 0, oldest first"
    );

    server.restart();
    let second = AgentProcess::start(&run);
    std::thread::sleep(Duration::from_secs(6));
    second.terminate();
    let (status, out) = second.wait(AGENT_EXIT_TIMEOUT);
    assert!(
        status.success(),
        "the agent stops cleanly on SIGTERM: {out}"
    );
    assert!(
        out.contains(&format!("spool: {} recovered", spooled.len())),
        "the restarted agent recovered the spool: {out}"
    );
    assert!(out.contains("bytes written per payload byte"), "{out}");
    server.kill();

    let stored = harness::stored_fragments(&server.data_dir(), STREAM).expect("stream stored");
    let mut first_epoch: Vec<u64> = stored
        .iter()
        .filter(|f| f.epoch == epoch)
        .map(|f| f.sequence)
        .collect();
    first_epoch.sort_unstable();
    assert_eq!(
        first_epoch, sequences,
        "every spooled fragment stored exactly once: none lost, none twice"
    );
    let later: BTreeSet<u64> = stored
        .iter()
        .map(|f| f.epoch)
        .filter(|&e| e != epoch)
        .collect();
    assert_eq!(
        later.len(),
        1,
        "the second run captured under a new epoch: {later:?}"
    );
    assert!(later.iter().all(|&e| e > epoch));
}
