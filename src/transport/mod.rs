//! (skeleton: filled in by the transport work)
