//! (skeleton: filled in by the store work)
