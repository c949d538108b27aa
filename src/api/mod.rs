//! (skeleton: filled in by the api work)
