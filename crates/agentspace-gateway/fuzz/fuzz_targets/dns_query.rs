//! Arbitrary bytes sent to the cell's resolver: the query parser must return a query or an
//! error, never panic, and whatever it accepts must survive the tunnelling heuristics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(query) = agentspace_gateway::parse_query(data) {
        let _ = agentspace_gateway::tunnelling(&query.name);
    }
});
