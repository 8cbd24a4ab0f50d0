//! The gateway's integration tests: a real gateway on loopback, real TLS end to end,
//! local HTTPS stand-ins posing as named hosts, `curl` as the client. One binary,
//! modules under `suite/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers outside #[test] functions fail loudly by design"
)]

mod suite;
