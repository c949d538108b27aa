//! Integration tests: one binary, one module per area. The harness runs the real `hydrant`
//! binary as server and agent processes on loopback.

mod certs;
mod harness;
mod network;
mod oracle;
mod spool;
mod video_path;
