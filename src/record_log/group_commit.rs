//! Group commit: one writer thread owns the appends of a log, takes every append waiting in
//! its bounded queue (up to `batch_appends_max`), writes them, does ONE fdatasync, then answers
//! each appender. A reply therefore means "durable", and N concurrent appenders cost one sync
//! instead of N.
//!
//! Backpressure: the queue holds at most `queue_appends_max` appends; `submit` waits for room.
//! After a failed sync the writer answers the whole batch with the error and stops, because
//! the state of unsynced pages is unknown after such a failure; later appends get
//! `LogError::WriterStopped` until the log is reopened.

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::{LogError, RecordLog, RecordPos};

/// Bounds of the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// Appends that may wait in the queue before `submit` waits for room.
    pub queue_appends_max: usize,
    /// Most appends covered by one sync.
    pub batch_appends_max: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            queue_appends_max: 1024,
            batch_appends_max: 256,
        }
    }
}

type Reply = oneshot::Sender<Result<RecordPos, LogError>>;

struct AppendRequest {
    payload: Vec<u8>,
    reply: Reply,
}

/// The writer of one `RecordLog`. Dropping it lets the writer finish what is queued and stop.
#[derive(Debug)]
pub struct GroupCommit {
    sender: Option<mpsc::Sender<AppendRequest>>,
    log: Arc<Mutex<RecordLog>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest")
            .field("bytes", &self.payload.len())
            .finish()
    }
}

impl GroupCommit {
    /// Starts the writer thread for `log`.
    pub fn start(log: RecordLog, config: GroupCommitConfig) -> Result<GroupCommit, LogError> {
        if config.queue_appends_max == 0 || config.batch_appends_max == 0 {
            return Err(LogError::BadConfig(
                "group commit queue and batch limits must be above 0",
            ));
        }
        let (sender, receiver) = mpsc::channel(config.queue_appends_max);
        let log = Arc::new(Mutex::new(log));
        let writer_log = Arc::clone(&log);
        let thread = std::thread::Builder::new()
            .name("record-log-writer".into())
            .spawn(move || run_writer(writer_log, receiver, config.batch_appends_max))
            .map_err(|source| LogError::Io {
                path: "record-log-writer".into(),
                source,
            })?;
        Ok(GroupCommit {
            sender: Some(sender),
            log,
            thread: Some(thread),
        })
    }

    /// Queues one append (waiting for room in the queue) and returns the receiver of its
    /// reply. Appends are written in the order their `submit` calls completed.
    pub async fn submit(
        &self,
        payload: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<RecordPos, LogError>>, LogError> {
        let sender = self.sender.as_ref().ok_or(LogError::WriterStopped)?;
        let (reply, receiver) = oneshot::channel();
        sender
            .send(AppendRequest { payload, reply })
            .await
            .map_err(|_| LogError::WriterStopped)?;
        Ok(receiver)
    }

    /// Appends one record and returns once it is durable.
    pub async fn append(&self, payload: Vec<u8>) -> Result<RecordPos, LogError> {
        let receiver = self.submit(payload).await?;
        receiver.await.map_err(|_| LogError::WriterStopped)?
    }

    /// The log, for segment listing, removal and scans. Holding the guard pauses the writer.
    pub fn lock_log(&self) -> Result<MutexGuard<'_, RecordLog>, LogError> {
        self.log.lock().map_err(|_| LogError::WriterStopped)
    }

    /// Stops taking appends, lets the writer finish the queued ones, and waits for it.
    pub fn close(mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_writer(
    log: Arc<Mutex<RecordLog>>,
    mut receiver: mpsc::Receiver<AppendRequest>,
    batch_appends_max: usize,
) {
    let mut batch = Vec::with_capacity(batch_appends_max);
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < batch_appends_max {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if !write_batch(&log, &mut batch) {
            tracing::error!("Log writer stopped after a failed sync.");
            return;
        }
    }
}

/// Writes and syncs one batch, answers every request in it; false when the writer must stop.
fn write_batch(log: &Mutex<RecordLog>, batch: &mut Vec<AppendRequest>) -> bool {
    let Ok(mut log) = log.lock() else {
        batch
            .drain(..)
            .for_each(|r| drop(r.reply.send(Err(LogError::WriterStopped))));
        return false;
    };
    let mut written: Vec<(RecordPos, Reply)> = Vec::with_capacity(batch.len());
    for request in batch.drain(..) {
        match log.append(&request.payload) {
            Ok(pos) => written.push((pos, request.reply)),
            Err(e) => drop(request.reply.send(Err(e))),
        }
    }
    match log.sync() {
        Ok(()) => {
            // An appender that gave up waiting is not an error: its record is durable anyway.
            written
                .into_iter()
                .for_each(|(pos, reply)| drop(reply.send(Ok(pos))));
            true
        }
        Err(e) => {
            written
                .into_iter()
                .for_each(|(_, reply)| drop(reply.send(Err(e.duplicate()))));
            false
        }
    }
}
