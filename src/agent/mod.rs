//! (skeleton: filled in by the agent work)
