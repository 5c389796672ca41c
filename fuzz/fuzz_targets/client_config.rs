//! cargo-fuzz target `client_config`: see `fedmark_tests::fuzzing::client_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::client_config(data));
