//! Any bytes as a DAG file: parse and validate must not panic (flow_operators::fuzz::parse_any).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        flow_operators::fuzz::parse_any(text);
    }
});
