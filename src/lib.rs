//! Hydrant: self-hosted, Kinesis-style streaming for cameras and data.
//!
//! The library holds every subsystem; the `hydrant` binary only parses the command line and
//! calls [`server`], [`agent`] and [`demo`]. See `ARCHITECTURE.md` for the map and the
//! invariants each module keeps.

pub mod agent;
pub mod alerts;
pub mod api;
pub mod capture;
pub mod config;
pub mod demo;
pub mod detect;
pub mod fragment;
pub mod media;
pub mod record_log;
pub mod server;
pub mod spool;
pub mod store;
pub mod streams;
pub mod transport;
pub mod wire;
