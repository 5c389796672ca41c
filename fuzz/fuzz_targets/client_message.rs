//! cargo-fuzz target `client_message`: see `fedmark_tests::fuzzing::client_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::client_message(data));
