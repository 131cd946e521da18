//! cargo fuzz target: see consentd::fuzzing::import_row.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consentd::fuzzing::import_row(data));
