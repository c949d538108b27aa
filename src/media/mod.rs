//! (skeleton: filled in by the media work)
