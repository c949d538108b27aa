//! (skeleton: filled in by the demo work)
