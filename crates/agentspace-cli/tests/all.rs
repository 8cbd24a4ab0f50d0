//! Integration tests of the `agentspace` binary: real cells running real programs.
//! One test binary for the crate (tests/suite/*), so helpers compile once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    unreachable_pub
)]

mod suite;
