//! The `agentspace` command (in progress).
fn main() {}
