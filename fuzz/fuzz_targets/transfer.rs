//! Fuzz target `transfer`: runs `ds_transfer::fuzzing::check_transfer` on every input (the properties are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ds_transfer::fuzzing::check_transfer(data));
