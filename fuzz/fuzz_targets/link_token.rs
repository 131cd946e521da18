//! cargo fuzz target: see consentd::fuzzing::link_token.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consentd::fuzzing::link_token(data));
