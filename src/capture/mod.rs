//! (skeleton: filled in by the capture work)
