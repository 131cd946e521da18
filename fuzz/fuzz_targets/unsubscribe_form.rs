//! cargo fuzz target: see consentd::fuzzing::unsubscribe_form.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consentd::fuzzing::unsubscribe_form(data));
