//! Load tools that drive a running server over its public APIs, so its figures can be compared
//! with other servers run the same way.
//!
//! [`streams`] drives the Kinesis Data Streams API. May import only the crate's wire-neutral
//! types; it speaks HTTP like any client would. Behaviour: concurrency is bounded by the
//! configured connection count, and latency samples per worker are capped.

pub mod streams;
