//! Integration tests: one binary, one module per area. The harness runs the real `hydrant`
//! binary as server and agent processes on loopback.

mod alerts;
mod certs;
mod detection;
mod harness;
mod network;
mod oracle;
mod rtsp;
mod spool;
mod streams_crash;
mod video_path;
