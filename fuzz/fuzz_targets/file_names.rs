//! Fuzz target `file_names`: runs `ds_storage_file::fuzzing::check_file_names` on every input (the properties are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ds_storage_file::fuzzing::check_file_names(data));
