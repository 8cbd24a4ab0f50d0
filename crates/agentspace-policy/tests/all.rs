//! Integration tests of agentspace-policy: real Cedar, real SQLite, real processes.

mod suite;
