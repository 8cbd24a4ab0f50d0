//! Integration tests of agentspace-policy: real Cedar, real SQLite, real processes. One
//! binary, modules under `suite/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers outside #[test] functions fail loudly by design"
)]

mod suite;
