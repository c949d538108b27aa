//! Integration tests: one binary, one module per area. The harness runs the real `hydrant`
//! binary as server and agent processes on loopback.

mod certs;
mod detection;
mod harness;
mod oracle;
mod spool;
mod video_path;
