//! Token mint and verify throughput (filled in below).
fn main() {}
