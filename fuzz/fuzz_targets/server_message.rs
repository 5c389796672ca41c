//! cargo-fuzz target `server_message`: see `fedmark_tests::fuzzing::server_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::server_message(data));
