//! Arbitrary bytes as an agent definition: parsing and validation must return a
//! definition or an error naming the problem, never panic, and never accept a
//! definition whose limits are out of range.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = agentspace_core::Definition::parse(std::path::Path::new("/fuzz/agent.yaml"), text) {
        assert!(d.limits.memory_bytes >= 8 << 20);
        assert!(d.limits.pids >= 2);
        assert!(!d.limits.timeout.is_zero());
    }
});
