//! Fuzz target `sse`: runs `ds_protocol::fuzzing::check_sse` on every input (the properties are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ds_protocol::fuzzing::check_sse(data));
