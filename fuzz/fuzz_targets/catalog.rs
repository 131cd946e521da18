//! cargo fuzz target: see consentd::fuzzing::catalog.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consentd::fuzzing::catalog(data));
