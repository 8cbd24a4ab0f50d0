//! The control plane's one integration test binary: a real server on loopback, real
//! SQLite, a real audit log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    unreachable_pub
)]

mod suite;
