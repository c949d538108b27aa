//! (skeleton: filled in by the record_log work)
